"""An agent survives the server it talks to going away: it learned every server's address
when it registered, reconnects to another one, stays connected, keeps its running task,
and a task started afterwards (through another server) reaches it."""

from __future__ import annotations

import berth_harness as h
import images


def test_agent_reconnects_to_another_server_when_its_server_dies(containerd, registry):
    cluster = h.BerthCluster(3)
    for n in cluster.nodes:
        n.join_token = h.JOIN_TOKEN
        n.extra_args = list(n.extra_args or []) + ["--agent-heartbeat-timeout", "3s"]
    cluster.start()
    name = h.unique("failover")
    agent = None
    try:
        first = cluster.node(1)
        h.aws("ecs", "create-cluster", "--cluster-name", name, node=first)
        # The agent is told about node 1 only.
        agent = h.AgentProcess(first, name, name="failover", cni_bridge="berthe2e3",
                               cni_subnet="10.98.3.0/24", insecure_registries=[registry.addr])
        env = h.AgentEnv(first, name, [agent], registry)
        agent.start()
        agent.wait_connected(first, timeout=60)
        td = env.register({"family": "failover", "containerDefinitions": [
            h.container_def("web", registry.image("1"), environment=[{"name": "PORT", "value": "80"}],
                            portMappings=[{"containerPort": 80, "hostPort": 0, "protocol": "tcp"}]),
        ]})
        before = env.wait(env.run_one(td)["taskArn"], "RUNNING", timeout=60)
        port = h.host_port(before, "web")

        first.kill9()
        survivor = cluster.node(2)
        env.node = survivor
        # It registers again, through a server it learned of when it first connected.
        h.wait_until(lambda: agent.log_text().count("registered with the cluster") >= 2, 60,
                     "the agent to register again through another server",
                     on_timeout=lambda: h.tail(agent.log_text()))
        ci = agent.wait_connected(survivor, timeout=30)
        assert ci["runningTasksCount"] == 1, ci
        # The running task was not touched.
        status, body = h.http_get(f"http://127.0.0.1:{port}/")
        assert status == 200 and images.page_names(body, h.task_id(before["taskArn"]), "web"), body
        same = env.describe(before["taskArn"])
        assert same["lastStatus"] == "RUNNING"
        assert h.task_container(same, "web")["runtimeId"] == h.task_container(before, "web")["runtimeId"]
        # New work reaches it through the surviving servers.
        after = env.wait(env.run_one(td)["taskArn"], "RUNNING", timeout=60)
        assert after["containerInstanceArn"] == before["containerInstanceArn"]
        env.stop(after["taskArn"], "done")
        env.stop(before["taskArn"], "done")
        env.wait(before["taskArn"], "STOPPED", timeout=60)
    finally:
        if agent is not None:
            agent.cleanup()
        cluster.cleanup()
