"""The agent owns the machine but is not needed for its containers to run: a crashed
agent comes back with the same data dir and adopts what is running, reports what
changed while it was away, and carries out what was asked meanwhile. containerd
restarting under a running agent changes nothing a user sees.

The server runs with `--agent-heartbeat-timeout 3s` so a dead agent shows
`agentConnected: false` quickly.
"""

from __future__ import annotations

import pytest

import berth_harness as h
import images

HEARTBEAT_TIMEOUT = 3  # seconds, the server's --agent-heartbeat-timeout here


@pytest.fixture(scope="module")
def env(containerd, registry):
    node, cluster = h.start_agent_server(extra_args=["--agent-heartbeat-timeout", f"{HEARTBEAT_TIMEOUT}s"])
    agent = h.AgentProcess(node, cluster, name="restart", availability_zone="az-test-r",
                           cni_bridge="berthe2e1", cni_subnet="10.98.1.0/24",
                           insecure_registries=[registry.addr])
    env = h.AgentEnv(node, cluster, [agent], registry)
    try:
        agent.start()
        agent.wait_connected(node, timeout=60)
        yield env
    finally:
        env.cleanup()


def web_taskdef(env: h.AgentEnv) -> str:
    return env.register({"family": "restart", "containerDefinitions": [
        h.container_def("web", env.registry.image("1"), environment=[{"name": "PORT", "value": "80"}],
                        portMappings=[{"containerPort": 80, "hostPort": 0, "protocol": "tcp"}]),
    ]})


def serves(port: int, arn: str) -> bool:
    try:
        status, body = h.http_get(f"http://127.0.0.1:{port}/")
    except OSError:
        return False
    return status == 200 and images.page_names(body, h.task_id(arn), "web")


def assert_serves(port: int, arn: str, when: str) -> None:
    h.wait_until(lambda: serves(port, arn), 10, f"task {h.task_id(arn)} to answer on port {port} {when}")


@pytest.mark.timeout(240)
def test_agent_killed_and_restarted_adopts_its_containers_and_catches_up(env):
    td = web_taskdef(env)
    arns = [t["taskArn"] for t in env.run(td, count=3)]
    keep, vanish, stop_meanwhile = arns
    before = {a: env.wait(a, "RUNNING", timeout=60) for a in arns}
    ports = {a: h.host_port(before[a], "web") for a in arns}
    runtime_ids = {a: h.task_container(before[a], "web")["runtimeId"] for a in arns}
    for a in arns:
        assert runtime_ids[a], f"task {a} has no runtimeId: {before[a]}"
        assert_serves(ports[a], a, "before the agent is killed")

    env.agent.kill9()

    # the containers do not need the agent
    for a in arns:
        assert serves(ports[a], a), f"task {h.task_id(a)} stopped answering when the agent was killed"
    env.agent.wait_disconnected(env.node, timeout=HEARTBEAT_TIMEOUT + 15)

    # while the agent is down: one container dies (fault injection), one task is stopped by a user
    h.ctr("tasks", "kill", "--signal", "SIGKILL", runtime_ids[vanish], namespace=env.agent.namespace)
    h.wait_until(lambda: not h.http_answers(f"http://127.0.0.1:{ports[vanish]}/"), 10,
                 "the killed container to stop answering")
    stopping = env.stop(stop_meanwhile, reason="stopped while the agent was down")
    assert stopping["desiredStatus"] == "STOPPED"
    assert serves(ports[stop_meanwhile], stop_meanwhile), \
        "nobody can stop a container while its agent is down, yet it stopped answering"
    assert serves(ports[keep], keep)

    env.agent.restart()
    env.agent.wait_connected(env.node, timeout=60)

    # the container that died while the agent was away is reported, with why
    gone = env.wait(vanish, "STOPPED", timeout=60)
    reason = gone.get("stoppedReason") or ""
    assert "agent" in reason.lower() and any(w in reason.lower() for w in ("exited", "vanished")), \
        f"stoppedReason {reason!r} does not say the container exited while the agent was down"
    assert h.task_container(gone, "web")["lastStatus"] == "STOPPED"
    assert h.task_container(gone, "web")["exitCode"] == 137, gone

    # the stop asked for meanwhile takes effect
    stopped = env.wait(stop_meanwhile, "STOPPED", timeout=60)
    assert stopped["stopCode"] == "UserInitiated", stopped
    assert stopped["stoppedReason"] == "stopped while the agent was down", stopped
    h.wait_until(lambda: h.host_port_is_free(ports[stop_meanwhile]), 15,
                 "the port of the task stopped while the agent was down to be free again")

    # the survivor was adopted, not restarted: same container, same port, still RUNNING
    assert serves(ports[keep], keep), "the surviving task stopped answering after the agent restarted"
    after = env.describe(keep)
    assert after["lastStatus"] == "RUNNING", after
    assert h.task_container(after, "web")["runtimeId"] == runtime_ids[keep], (before[keep], after)
    assert h.host_port(after, "web") == ports[keep]
    assert after.get("startedAt") == before[keep].get("startedAt"), (before[keep], after)
    # and nothing new was started in its place
    family = td.split(":")[0]
    assert set(env.list_tasks("--family", family)) | set(
        env.list_tasks("--family", family, "--desired-status", "STOPPED")) == set(arns)

    env.stop(keep)
    env.wait(keep, "STOPPED", timeout=60)


@pytest.mark.timeout(180)
def test_containerd_restarting_under_the_agent_changes_nothing_a_user_sees(env):
    td = web_taskdef(env)
    arn = env.run_one(td)["taskArn"]
    before = env.wait(arn, "RUNNING", timeout=60)
    port = h.host_port(before, "web")
    assert_serves(port, arn, "before containerd restarts")

    h.restart_containerd()

    assert_serves(port, arn, "after containerd restarted")
    env.agent.wait_connected(env.node, timeout=30)
    assert env.agent.alive(), f"the agent exited when containerd restarted:\n{h.tail(env.agent.log_text())}"
    after = env.describe(arn)
    assert after["lastStatus"] == "RUNNING", after
    assert h.task_container(after, "web")["runtimeId"] == h.task_container(before, "web")["runtimeId"]

    # the agent talks to the new containerd: it can stop that task and start another
    env.stop(arn, reason="after containerd restart")
    env.wait(arn, "STOPPED", timeout=60)
    h.wait_until(lambda: h.host_port_is_free(port), 15, f"port {port} to be free again")
    fresh = env.run_one(td)["taskArn"]
    task = env.wait(fresh, "RUNNING", timeout=60)
    assert_serves(h.host_port(task, "web"), fresh, "for a task started after containerd restarted")
    env.stop(fresh)
    env.wait(fresh, "STOPPED", timeout=60)
