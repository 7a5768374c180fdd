"""A leader change in the middle of a rolling deployment: three servers, one agent
(talking to a follower), a service of 3 rolling from revision 1 to 2. The leader is
killed with SIGKILL right after the update; the new leader's controller carries the
deployment on from what the store holds, and no task is started or stopped twice:
the new deployment has exactly 3 tasks, the old one's 3 tasks were each stopped once.
"""

from __future__ import annotations

import json

import pytest

import berth_harness as h

SERVER_ARGS = ["--agent-heartbeat-timeout", "3s", "--task-healthy-after", "4s"]


def _tasks(node, cluster: str, started_by: str) -> list[dict]:
    arns = []
    for desired in ("RUNNING", "STOPPED"):
        arns += h.aws("ecs", "list-tasks", "--cluster", cluster, "--started-by", started_by,
                      "--desired-status", desired, node=node).json["taskArns"]
    if not arns:
        return []
    return h.aws("ecs", "describe-tasks", "--cluster", cluster, "--tasks", *arns, node=node).json["tasks"]


@pytest.mark.timeout(300)
def test_a_leader_change_mid_rollout_continues_without_doing_anything_twice(containerd, registry):
    servers = h.BerthCluster(3)
    for n in servers.nodes:
        n.join_token = h.JOIN_TOKEN
        n.extra_args = list(n.extra_args or []) + SERVER_ARGS
    servers.start()
    agent = None
    try:
        leader = servers.leader()
        follower = next(n for n in servers.nodes if n is not leader)
        cluster = h.unique("svc-failover")
        h.aws("ecs", "create-cluster", "--cluster-name", cluster, node=follower)
        agent = h.AgentProcess(follower, cluster, name="svc-failover", cni_bridge="berthe2e3",
                               cni_subnet="10.98.3.0/24", insecure_registries=[registry.addr])
        env = h.AgentEnv(follower, cluster, [agent], registry)
        agent.start()
        agent.wait_connected(follower, timeout=60)

        def web(version: str) -> dict:
            return h.container_def("web", registry.image("1"),
                                   environment=[{"name": "PORT", "value": "80"}, {"name": "V", "value": version}],
                                   portMappings=[{"containerPort": 80, "hostPort": 0, "protocol": "tcp"}])
        td1 = env.register({"family": "roll", "containerDefinitions": [web("1")]})
        family = td1.split(":")[0]
        h.register_task_definition(follower, {"family": family, "containerDefinitions": [web("2")]})

        name = h.unique("web")
        h.aws("ecs", "create-service", "--cli-input-json", json.dumps({
            "cluster": cluster, "serviceName": name, "taskDefinition": td1, "desiredCount": 3}), node=follower)

        def describe(node) -> dict:
            return h.aws("ecs", "describe-services", "--cluster", cluster, "--services", name,
                         node=node).json["services"][0]
        h.wait_until(lambda: (lambda s: s if s["deployments"][0]["rolloutState"] == "COMPLETED" else None)(
            describe(follower)), 90, "the first deployment to complete", interval=0.5)
        first_dep = describe(follower)["deployments"][0]["id"]

        svc = h.aws("ecs", "update-service", "--cluster", cluster, "--service", name,
                    "--task-definition", f"{family}:2", node=follower).json["service"]
        new_dep = svc["deployments"][0]["id"]
        assert new_dep != first_dep
        # mid-rollout: the old tasks count as healthy only 4 s after RUNNING, so they are all
        # still there while the new ones start
        mid = describe(follower)
        assert [d["id"] for d in mid["deployments"]] == [new_dep, first_dep], mid["deployments"]
        leader.kill9()

        survivors = [n for n in servers.nodes if n is not leader]
        servers.leader(among=survivors)

        def done():
            s = describe(follower)
            return s if (len(s["deployments"]) == 1 and s["deployments"][0]["id"] == new_dep
                         and s["deployments"][0]["rolloutState"] == "COMPLETED" and s["runningCount"] == 3) else None
        svc = h.wait_until(done, 120, "the new leader to finish the rollout", interval=0.5,
                           on_timeout=lambda: json.dumps(describe(follower), default=str)[:4000])

        new_tasks = _tasks(follower, cluster, new_dep)
        assert len(new_tasks) == 3, f"the new deployment started {len(new_tasks)} tasks, not 3: " + \
            json.dumps([(t["taskArn"], t["lastStatus"]) for t in new_tasks])
        assert all(t["lastStatus"] == "RUNNING" for t in new_tasks), new_tasks
        old_tasks = _tasks(follower, cluster, first_dep)
        assert len(old_tasks) == 3 and all(t["lastStatus"] == "STOPPED" for t in old_tasks), old_tasks
        assert all(t["stopCode"] == "ServiceSchedulerInitiated" for t in old_tasks), old_tasks
        stops = [e["message"] for e in svc["events"] if "has stopped" in e["message"]]
        stopped_ids = [tid for m in stops for tid in m.split("(task ")[1:]]
        assert len(stopped_ids) == 3, f"stop events name {len(stopped_ids)} tasks: {stops}"

        h.aws("ecs", "delete-service", "--cluster", cluster, "--service", name, "--force", node=follower)
        h.wait_until(lambda: describe(follower)["status"] == "INACTIVE", 60, "the service to become INACTIVE",
                     interval=0.5)
    finally:
        if agent is not None:
            agent.cleanup()
        servers.cleanup()
