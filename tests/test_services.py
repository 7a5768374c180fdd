"""Services on real machines: two agents as two hosts (network namespaces berth-h1 in
az-a and berth-h2 in az-b), one server, real containerd, images from a real registry,
everything driven through the AWS CLI (and boto3 for fast sampling).

What a user notices: `aws ecs wait services-stable` returns; tasks are spread over the
availability zones; a killed container is replaced; a rolling update never drops below
the minimum healthy count; draining a machine moves its tasks; a machine that goes
away has its tasks rescheduled on the other one.

The server runs with short timers (--agent-heartbeat-timeout 3s, --agent-lost-after
3s, --task-healthy-after 3s) so the tests take seconds, not ECS's minutes.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

import berth_harness as h

AZ = {"berth-h1": "az-a", "berth-h2": "az-b"}
CNI = {"berth-h1": ("berthe2e-s1", "10.98.21.0/24"), "berth-h2": ("berthe2e-s2", "10.98.22.0/24")}
SERVER_ARGS = ["--agent-heartbeat-timeout", "3s", "--agent-lost-after", "3s", "--task-healthy-after", "3s"]


@pytest.fixture(scope="module")
def env(hosts):
    reg = h.Registry(host=hosts.GATEWAY).start()
    env = None
    try:
        reg.push_test_image()
        node, cluster = h.start_agent_server(host=hosts.GATEWAY, extra_args=SERVER_ARGS)
        env = h.AgentEnv(node, cluster, [], reg)
        for ns in hosts.names:
            bridge, subnet = CNI[ns]
            env.agents.append(h.AgentProcess(node, cluster, name=ns, netns=ns, host_ip=hosts.ip_of(ns),
                                             availability_zone=AZ[ns], cni_bridge=bridge, cni_subnet=subnet,
                                             insecure_registries=[reg.addr]).start())
        for a in env.agents:
            a.wait_connected(node, timeout=60)
        yield env
    finally:
        if env is not None:
            for name in _services(env):
                h.aws("ecs", "delete-service", "--cluster", env.cluster, "--service", name, "--force",
                      node=env.node, expect_rc=None)
            try:
                h.wait_until(lambda: not _live_service_tasks(env), 60, "the deleted services' tasks to stop",
                             interval=0.5)
            except AssertionError as e:
                print(f"[berth tests] cleanup: {e}")
            env.cleanup()
        reg.cleanup()


def _services(env) -> list[str]:
    try:
        arns = h.aws("ecs", "list-services", "--cluster", env.cluster, node=env.node).json["serviceArns"]
        return [a.rsplit("/", 1)[-1] for a in arns]
    except Exception:  # noqa: BLE001 - cleanup only
        return []


def _live_service_tasks(env) -> list[str]:
    return [a for a in env.list_tasks() if _describe_task(env, a).get("group", "").startswith("service:")]


def _describe_task(env, arn: str) -> dict:
    return env.describe(arn)


@pytest.fixture(scope="module")
def ecs(env):
    return h.boto3_client(env.node)


def web_def(env, family: str, version: str = "1", health: bool = True) -> str:
    """A task definition serving the test page on a dynamic host port, with a container
    health check (HEALTHY a few seconds after start) unless `health` is False."""
    extra = {}
    if health:
        extra["healthCheck"] = {"command": ["CMD-SHELL", "wget -q -O /dev/null http://127.0.0.1:80/ || exit 1"],
                                "interval": 5, "timeout": 2, "retries": 2, "startPeriod": 0}
    return env.register({"family": family, "containerDefinitions": [
        h.container_def("web", env.registry.image("1"),
                        environment=[{"name": "PORT", "value": "80"}, {"name": "VERSION", "value": version}],
                        portMappings=[{"containerPort": 80, "hostPort": 0, "protocol": "tcp"}], **extra),
    ]})


def create_service(env, name: str, td: str, desired: int, **extra) -> dict:
    spec = {"cluster": env.cluster, "serviceName": name, "taskDefinition": td, "desiredCount": desired,
            "placementStrategy": [{"type": "spread", "field": "attribute:ecs.availability-zone"},
                                  {"type": "spread", "field": "instanceId"}], **extra}
    return h.aws("ecs", "create-service", "--cli-input-json", json.dumps(spec), node=env.node).json["service"]


def describe_service(env, name: str) -> dict:
    res = h.aws("ecs", "describe-services", "--cluster", env.cluster, "--services", name, node=env.node).json
    assert not res.get("failures"), res
    (svc,) = res["services"]
    return svc


def service_tasks(env, name: str, desired: str = "RUNNING") -> list[dict]:
    arns = h.aws("ecs", "list-tasks", "--cluster", env.cluster, "--service-name", name,
                 "--desired-status", desired, node=env.node).json["taskArns"]
    if not arns:
        return []
    return h.aws("ecs", "describe-tasks", "--cluster", env.cluster, "--tasks", *arns,
                 node=env.node).json["tasks"]


def wait_stable(env, name: str, timeout: float = 150) -> dict:
    """`aws ecs wait services-stable` as a user runs it (it polls every 15 s)."""
    res = h.aws("ecs", "wait", "services-stable", "--cluster", env.cluster, "--services", name,
                node=env.node, expect_rc=None, timeout=timeout)
    if res.rc != 0:
        raise AssertionError(f"`aws ecs wait services-stable` failed (rc {res.rc}): {res.stderr}\n"
                             f"service: {json.dumps(describe_service(env, name), default=str)[:4000]}\n"
                             + "".join(f"\n--- {a.log_label} ---\n{h.tail(a.log_text(), 40)}" for a in env.agents))
    return describe_service(env, name)


def wait_service(env, name: str, cond, timeout: float, what: str) -> dict:
    seen = {}

    def check():
        seen["svc"] = describe_service(env, name)
        return seen["svc"] if cond(seen["svc"]) else None
    return h.wait_until(check, timeout, what, interval=0.5,
                        on_timeout=lambda: json.dumps(seen.get("svc"), default=str)[:5000])


def instance_ns(env, ci_arn: str) -> str:
    for a in env.agents:
        ci = a.container_instance(env.node)
        if ci and ci["containerInstanceArn"] == ci_arn:
            return a.netns
    raise AssertionError(f"no agent owns {ci_arn}")


def serves(hosts, env, task: dict) -> bool:
    ip = hosts.ip_of(instance_ns(env, task["containerInstanceArn"]))
    port = h.host_port(task, "web")
    return h.http_answers(f"http://{ip}:{port}/")


def delete_service(env, name: str) -> None:
    h.aws("ecs", "delete-service", "--cluster", env.cluster, "--service", name, "--force", node=env.node)
    wait_service(env, name, lambda s: s["status"] == "INACTIVE", 60, f"service {name} to become INACTIVE")


# ---------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_a_service_spreads_over_zones_reaches_steady_state_and_serves(env, hosts):
    name = h.unique("auth")
    td = web_def(env, "auth")
    svc = create_service(env, name, td, 2)
    assert svc["status"] == "ACTIVE" and svc["desiredCount"] == 2, svc
    (dep,) = svc["deployments"]
    assert dep["status"] == "PRIMARY" and dep["rolloutState"] == "IN_PROGRESS", dep

    svc = wait_stable(env, name)
    assert svc["runningCount"] == 2 and len(svc["deployments"]) == 1, svc
    # stable as soon as both run; COMPLETED once both are also HEALTHY
    svc = wait_service(env, name, lambda s: s["deployments"][0]["rolloutState"] == "COMPLETED", 60,
                       "the deployment to complete (tasks HEALTHY)")
    dep = svc["deployments"][0]
    assert dep["rolloutStateReason"] == f"ECS deployment {dep['id']} completed.", dep
    messages = [e["message"] for e in svc["events"]]
    assert messages[0] == f"(service {name}) has reached a steady state.", messages
    assert f"(service {name}) (deployment {dep['id']}) deployment completed." in messages, messages
    assert any(m.startswith(f"(service {name}) has started 2 tasks: (task ") for m in messages), messages

    tasks = service_tasks(env, name)
    assert len(tasks) == 2
    zones = {instance_ns(env, t["containerInstanceArn"]) for t in tasks}
    assert zones == {"berth-h1", "berth-h2"}, f"spread by AZ put both tasks on {zones}"
    for t in tasks:
        assert t["group"] == f"service:{name}" and t["startedBy"] == dep["id"], t
        assert t["healthStatus"] == "HEALTHY", t
        assert serves(hosts, env, t), f"task {t['taskArn']} does not answer"
    delete_service(env, name)


@pytest.mark.timeout(240)
def test_a_killed_container_is_replaced(env):
    name = h.unique("three")
    td = web_def(env, "three", health=False)
    create_service(env, name, td, 3)
    wait_service(env, name, lambda s: s["runningCount"] == 3, 120, "3 running tasks")
    tasks = service_tasks(env, name)
    victim = tasks[0]
    ns = instance_ns(env, victim["containerInstanceArn"])
    agent = next(a for a in env.agents if a.netns == ns)
    runtime_id = h.task_container(victim, "web")["runtimeId"]
    h.ctr("tasks", "kill", "--signal", "SIGKILL", runtime_id, namespace=agent.namespace)

    stopped = env.wait(victim["taskArn"], "STOPPED", timeout=60)
    assert stopped["stopCode"] == "EssentialContainerExited", stopped

    def replaced():
        now = service_tasks(env, name)
        running = [t for t in now if t["lastStatus"] == "RUNNING"]
        return now if len(running) == 3 and victim["taskArn"] not in {t["taskArn"] for t in now} else None
    h.wait_until(replaced, 90, "the service to replace the killed task and be back at 3 RUNNING", interval=0.5)
    svc = describe_service(env, name)
    assert svc["runningCount"] == 3 and svc["desiredCount"] == 3, svc
    starts = [e["message"] for e in svc["events"] if "has started 1 tasks" in e["message"]]
    assert starts, [e["message"] for e in svc["events"]]
    delete_service(env, name)


@pytest.mark.timeout(300)
def test_a_rolling_update_never_drops_below_minimum_healthy(env, ecs, hosts):
    name = h.unique("roll")
    td1 = web_def(env, "roll", "1")
    create_service(env, name, td1, 2)
    wait_stable(env, name)
    # services-stable only needs runningCount == desiredCount; the rollout completes once
    # the tasks are also HEALTHY, and only healthy tasks count toward the minimum
    wait_service(env, name, lambda s: s["deployments"][0]["rolloutState"] == "COMPLETED", 60,
                 "the first deployment to complete (tasks HEALTHY)")
    # revision 2 of the same family (a new image version in real life)
    fam1 = td1.split(":")[0]
    td2 = h.register_task_definition(env.node, {"family": fam1, "containerDefinitions": [
        h.container_def("web", env.registry.image("1"),
                        environment=[{"name": "PORT", "value": "80"}, {"name": "VERSION", "value": "2"}],
                        portMappings=[{"containerPort": 80, "hostPort": 0, "protocol": "tcp"}],
                        healthCheck={"command": ["CMD-SHELL", "wget -q -O /dev/null http://127.0.0.1:80/ || exit 1"],
                                     "interval": 5, "timeout": 2, "retries": 2}),
    ]})
    assert td2["revision"] == 2
    td2 = f"{fam1}:2"

    # (runningCount, healthy RUNNING tasks, revisions of the RUNNING tasks)
    samples: list[tuple[int, int, frozenset[str]]] = []
    done = threading.Event()

    def take_sample():
        try:
            s = ecs.describe_services(cluster=env.cluster, services=[name])["services"][0]
            arns = ecs.list_tasks(cluster=env.cluster, serviceName=name)["taskArns"]
            ts = ecs.describe_tasks(cluster=env.cluster, tasks=arns)["tasks"] if arns else []
            running = [t for t in ts if t["lastStatus"] == "RUNNING"]
            healthy = sum(1 for t in running if t.get("healthStatus") == "HEALTHY")
            revisions = frozenset(t["taskDefinitionArn"].rsplit(":", 1)[1] for t in running)
            samples.append((s["runningCount"], healthy, revisions))
        except Exception as e:  # noqa: BLE001 - a failed sample is reported, not fatal
            samples.append((-1, -1, frozenset()))
            print(f"sample failed: {e}")

    def sample():
        while not done.is_set():
            take_sample()
            time.sleep(0.2)

    take_sample()  # before the update: the sampler's window starts with the old tasks
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        h.aws("ecs", "update-service", "--cluster", env.cluster, "--service", name, "--task-definition", td2,
              "--deployment-configuration", "maximumPercent=200,minimumHealthyPercent=50", node=env.node)
        svc = describe_service(env, name)
        # the new deployment is PRIMARY at once (the old one may already be gone: with
        # health checks passing fast, a rollout of 2 tasks takes about a second)
        assert svc["deployments"][0]["status"] == "PRIMARY", svc["deployments"]
        assert svc["deployments"][0]["taskDefinition"].endswith(f"/{td2}"), svc["deployments"]
        wait_stable(env, name, timeout=200)
        # stable (one deployment, runningCount == desiredCount) comes as the old tasks are
        # gone; the rollout is COMPLETED once the new tasks are also HEALTHY
        svc = wait_service(env, name, lambda s: s["deployments"][0]["rolloutState"] == "COMPLETED", 60,
                           "the rollout to complete (new tasks HEALTHY)")
    finally:
        done.set()
        t.join(timeout=10)
    assert len(svc["deployments"]) == 1 and svc["deployments"][0]["rolloutState"] == "COMPLETED", svc
    assert svc["taskDefinition"].endswith(f"/{td2}"), svc
    tasks = service_tasks(env, name)
    assert len(tasks) == 2 and all(t["taskDefinitionArn"].endswith(f"/{td2}") for t in tasks), tasks
    history = h.aws("ecs", "list-service-deployments", "--cluster", env.cluster, "--service", name,
                    node=env.node).json["serviceDeployments"]
    assert len(history) == 2 and {d["status"] for d in history} == {"SUCCESSFUL"}, history
    # desired 2, minimumHealthyPercent 50 -> at least ceil(1.0) = 1 healthy task all along
    assert samples and all(s[0] != -1 for s in samples), samples
    assert min(s[1] for s in samples) >= 1, f"healthy tasks dropped below 1 during the rollout: {samples}"
    assert min(s[0] for s in samples) >= 1, f"runningCount dropped below 1 during the rollout: {samples}"
    assert max(s[0] for s in samples) <= 4, f"more than maximumPercent (200% of 2) running: {samples}"
    # the window covered the rollout: it began with revision 1 running and saw revision 2 come up
    # (a rollout of 2 tasks can take under a second, so runningCount above 2 may never be sampled)
    assert samples[0][2] == {"1"}, f"the first sample is not of the old tasks: {samples}"
    assert any("2" in s[2] for s in samples), f"the sampler never saw a new task running: {samples}"
    delete_service(env, name)


@pytest.mark.timeout(300)
def test_draining_an_instance_moves_its_service_tasks_and_leaves_standalone_tasks(env, hosts):
    name = h.unique("drain")
    td = web_def(env, "drain")
    create_service(env, name, td, 2)
    wait_stable(env, name)
    h1 = next(a for a in env.agents if a.netns == "berth-h1")
    ci = h1.container_instance(env.node)
    # a standalone task pinned to h1
    res = h.aws("ecs", "start-task", "--cluster", env.cluster, "--task-definition", td,
                "--container-instances", ci["containerInstanceArn"], node=env.node).json
    standalone = res["tasks"][0]
    env.wait(standalone["taskArn"], "RUNNING", timeout=60)

    h.aws("ecs", "update-container-instances-state", "--cluster", env.cluster, "--container-instances",
          ci["containerInstanceArn"], "--status", "DRAINING", node=env.node)
    try:
        def moved():
            ts = [t for t in service_tasks(env, name) if t["lastStatus"] == "RUNNING"]
            on = {instance_ns(env, t["containerInstanceArn"]) for t in ts}
            return ts if len(ts) == 2 and on == {"berth-h2"} else None
        h.wait_until(moved, 150, "both service tasks to run on berth-h2 once berth-h1 drains", interval=1)
        svc = wait_stable(env, name)
        assert svc["runningCount"] == 2, svc
        assert env.describe(standalone["taskArn"])["lastStatus"] == "RUNNING", "the standalone task was stopped"
        # a draining instance gets no new task
        res = h.aws("ecs", "run-task", "--cluster", env.cluster, "--task-definition", td, "--count", "1",
                    "--placement-constraints", f"type=memberOf,expression=ec2InstanceId == {ci['ec2InstanceId']}",
                    node=env.node).json
        assert not res["tasks"] and res["failures"], res
    finally:
        h.aws("ecs", "update-container-instances-state", "--cluster", env.cluster, "--container-instances",
              ci["containerInstanceArn"], "--status", "ACTIVE", node=env.node)
        env.stop(standalone["taskArn"])
    delete_service(env, name)


@pytest.mark.timeout(300)
def test_a_lost_machine_has_its_tasks_rescheduled_on_the_other(env, hosts):
    name = h.unique("lost")
    td = web_def(env, "lost", health=False)
    create_service(env, name, td, 2)
    wait_service(env, name, lambda s: s["runningCount"] == 2, 120, "2 running tasks")
    tasks = service_tasks(env, name)
    assert {instance_ns(env, t["containerInstanceArn"]) for t in tasks} == {"berth-h1", "berth-h2"}
    h2 = next(a for a in env.agents if a.netns == "berth-h2")
    ci2 = h2.container_instance(env.node)
    lost = [t for t in tasks if t["containerInstanceArn"] == ci2["containerInstanceArn"]]
    h2.kill9()
    try:
        stopped = env.wait(lost[0]["taskArn"], "STOPPED", timeout=60,
                           what="the lost machine's task to be marked STOPPED")
        assert "lost contact" in stopped["stoppedReason"], stopped

        def rescheduled():
            ts = [t for t in service_tasks(env, name) if t["lastStatus"] == "RUNNING"]
            return ts if len(ts) == 2 and all(t["containerInstanceArn"] != ci2["containerInstanceArn"]
                                              for t in ts) else None
        h.wait_until(rescheduled, 120, "the service to run 2 tasks on berth-h1 only", interval=1)
        for t in service_tasks(env, name):
            assert serves(hosts, env, t)
    finally:
        h2.start()
    # the machine comes back: its agent stops the task it was told is gone
    h2.wait_connected(env.node, timeout=60)
    lost_port = h.host_port(lost[0], "web")
    h.wait_until(lambda: not h.http_answers(f"http://{hosts.ip_of('berth-h2')}:{lost_port}/"), 60,
                 "the returning agent to stop the task that was rescheduled")
    delete_service(env, name)


@pytest.mark.timeout(180)
def test_a_daemon_service_runs_one_task_on_every_machine(env):
    name = h.unique("daemon")
    td = web_def(env, "daemon", health=False)
    svc = h.aws("ecs", "create-service", "--cluster", env.cluster, "--service-name", name, "--task-definition", td,
                "--scheduling-strategy", "DAEMON", node=env.node).json["service"]
    assert svc["schedulingStrategy"] == "DAEMON", svc
    svc = wait_service(env, name, lambda s: s["runningCount"] == 2 and s["desiredCount"] == 2, 90,
                       "one running task on each of the two machines")
    on = sorted(instance_ns(env, t["containerInstanceArn"]) for t in service_tasks(env, name))
    assert on == ["berth-h1", "berth-h2"], on
    delete_service(env, name)


@pytest.mark.timeout(120)
def test_a_task_that_fits_nowhere_is_reported_in_the_service_events(env):
    name = h.unique("huge")
    td = env.register({"family": "huge", "containerDefinitions": [
        h.container_def("web", env.registry.image("1"), memory=10_000_000)]})
    create_service(env, name, td, 1)
    prefix = f"(service {name}) was unable to place a task because no container instance met all of its requirements."
    svc = wait_service(env, name, lambda s: any(e["message"].startswith(prefix) for e in s["events"]), 30,
                       "the placement failure event")
    msg = next(e["message"] for e in svc["events"] if e["message"].startswith(prefix))
    assert "has insufficient memory available." in msg and "(container-instance " in msg, msg
    assert svc["runningCount"] == 0 and svc["pendingCount"] == 0, svc
    # the failure is reported once, not every pass
    assert sum(e["message"] == msg for e in describe_service(env, name)["events"]) == 1
    delete_service(env, name)
