"""Tasks on a real agent: one server and one `berth agent` in the root network
namespace, real containerd, CNI bridge + portmap, images pulled from a real
registry, everything observed through the AWS CLI (and `berth logs`).

The module shares one server + agent; every test registers its own task
definition family and stops what it started, so the tests do not depend on
each other's order.
"""

from __future__ import annotations

import os
import queue
import re
import socket
import threading
import uuid

import pytest

import berth_harness as h
import images

AZ = "az-test-a"
ESSENTIAL_EXITED = "Essential container in task exited"


@pytest.fixture(scope="module")
def env(containerd, registry):
    node, cluster = h.start_agent_server()
    agent = h.AgentProcess(node, cluster, name="tasks", availability_zone=AZ, attributes={"rack": "a"},
                           cni_bridge="berthe2e0", cni_subnet="10.98.0.0/24",
                           insecure_registries=[registry.addr])
    env = h.AgentEnv(node, cluster, [agent], registry)
    try:
        agent.start()
        agent.wait_connected(node, timeout=60)
        yield env
    finally:
        env.cleanup()


@pytest.fixture
def image(env):
    return env.registry.image("1")


def web(image: str, name: str = "web", **kw) -> dict:
    """A container serving the test page on container port 80, dynamic host port."""
    return h.container_def(name, image, portMappings=[{"containerPort": 80, "hostPort": 0, "protocol": "tcp"}],
                           environment=[{"name": "PORT", "value": "80"}], **kw)


def page_of(port: int, host: str = "127.0.0.1") -> str:
    status, body = h.wait_until(lambda: h.http_get(f"http://{host}:{port}/"), 15,
                                f"http://{host}:{port}/ to answer")
    assert status == 200, (status, body)
    return body


def reasons(task: dict) -> str:
    """Everything a user reads to learn why a task stopped."""
    parts = [task.get("stoppedReason") or ""]
    parts += [c.get("reason") or "" for c in task.get("containers", [])]
    return " | ".join(parts)


def mem_total_mib() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


# ---------------------------------------------------------------------------
# The container instance
# ---------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_the_agent_registers_a_container_instance_with_resources_and_attributes(env):
    arns = h.aws("ecs", "list-container-instances", "--cluster", env.cluster, node=env.node).json
    assert len(arns["containerInstanceArns"]) == 1, arns

    ci = env.agent.container_instance(env.node)
    assert ci is not None, "the agent's container instance is not described"
    assert ci["containerInstanceArn"] == arns["containerInstanceArns"][0]
    assert ci["status"] == "ACTIVE"
    assert ci["agentConnected"] is True

    registered = {r["name"]: r for r in ci["registeredResources"]}
    assert registered["CPU"]["integerValue"] == 1024 * len(os.sched_getaffinity(0)), registered["CPU"]
    mem = registered["MEMORY"]["integerValue"]
    total = mem_total_mib()
    assert 0.8 * total <= mem <= total, f"MEMORY {mem} MiB, MemTotal {total} MiB"

    attrs = {a["name"]: a.get("value") for a in ci["attributes"]}
    assert attrs.get("ecs.os-type") == "linux", attrs
    assert attrs.get("ecs.cpu-architecture") == "x86_64", attrs
    assert attrs.get("ecs.availability-zone") == AZ, attrs
    assert attrs.get("rack") == "a", attrs


# ---------------------------------------------------------------------------
# Running, serving, stopping
# ---------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_a_bridge_task_runs_serves_on_dynamic_host_ports_and_stops(env, image):
    td = env.register({"family": "bridge", "networkMode": "bridge", "containerDefinitions": [
        web(image),
        h.container_def("side", image, command=images.serve_command(8081),
                        portMappings=[{"containerPort": 8081, "hostPort": 0, "protocol": "tcp"}]),
    ]})

    first = env.run_one(td)
    arn = first["taskArn"]
    task = env.wait(arn, "RUNNING", timeout=60)
    ports = {c: h.host_port(task, c) for c in ("web", "side")}
    for c, p in ports.items():
        assert p in h.DYNAMIC_PORTS, f"{c}: hostPort {p} not in 49153-65535"
    assert ports["web"] != ports["side"], ports
    for c, p in ports.items():
        body = page_of(p)
        assert images.page_names(body, h.task_id(arn), c), f"http://127.0.0.1:{p}/ answered {body!r}"
        assert f"cluster={env.cluster} " in body, body

    second = env.run_one(td)
    task2 = env.wait(second["taskArn"], "RUNNING", timeout=60)
    ports2 = {c: h.host_port(task2, c) for c in ("web", "side")}
    assert not set(ports2.values()) & set(ports.values()), (ports, ports2)
    assert images.page_names(page_of(ports2["web"]), h.task_id(second["taskArn"]), "web")

    stopping = env.stop(arn, reason="done")
    assert stopping["desiredStatus"] == "STOPPED"
    stopped = env.wait(arn, "STOPPED", timeout=60)
    assert stopped["stoppedReason"] == "done"
    assert stopped["stopCode"] == "UserInitiated"
    for c in stopped["containers"]:
        assert c["lastStatus"] == "STOPPED", c
        assert c.get("exitCode") is not None, f"container {c['name']} has no exitCode: {c}"
    for p in ports.values():
        h.wait_until(lambda: h.host_port_is_free(p), 15,
                     f"host port {p} to be free again (nothing forwarding it) after the task stopped")

    # the other task was not disturbed
    assert images.page_names(page_of(ports2["web"]), h.task_id(second["taskArn"]), "web")
    env.stop(second["taskArn"])
    env.wait(second["taskArn"], "STOPPED", timeout=60)


@pytest.mark.timeout(120)
def test_an_essential_container_exiting_stops_the_task(env, image):
    td = env.register({"family": "exit3", "containerDefinitions": [
        h.container_def("main", image, command=["sh", "-c", "sleep 1; exit 3"]),
    ]})
    arn = env.run_one(td)["taskArn"]
    task = env.wait(arn, "STOPPED", timeout=60)
    assert task["stopCode"] == "EssentialContainerExited", task
    assert task["stoppedReason"] == ESSENTIAL_EXITED, task
    assert h.task_container(task, "main")["exitCode"] == 3, task


@pytest.mark.timeout(120)
def test_a_non_essential_container_exiting_does_not_stop_the_task(env, image):
    td = env.register({"family": "nonessential", "containerDefinitions": [
        web(image),
        h.container_def("helper", image, essential=False, command=["sh", "-c", "sleep 1; exit 5"]),
    ]})
    arn = env.run_one(td)["taskArn"]
    task = env.wait(arn, lambda t: h.task_container(t, "helper")["lastStatus"] == "STOPPED", timeout=60,
                    what="the non-essential container to stop")
    assert h.task_container(task, "helper")["exitCode"] == 5, task
    assert task["lastStatus"] == "RUNNING", task
    assert task["desiredStatus"] == "RUNNING", task
    assert h.task_container(task, "web")["lastStatus"] == "RUNNING", task
    assert images.page_names(page_of(h.host_port(task, "web")), h.task_id(arn), "web")
    env.stop(arn)
    env.wait(arn, "STOPPED", timeout=60)


@pytest.mark.timeout(120)
def test_depends_on_orders_container_starts(env, image):
    """init (non-essential) must exit 0 before web starts (SUCCESS); side starts only
    once web has started (START). Checked on every DescribeTasks answer on the way."""
    td = env.register({"family": "dependson", "containerDefinitions": [
        h.container_def("init", image, essential=False, command=["sh", "-c", "sleep 3; exit 0"]),
        web(image, dependsOn=[{"containerName": "init", "condition": "SUCCESS"}]),
        h.container_def("side", image, command=images.serve_command(8081),
                        dependsOn=[{"containerName": "web", "condition": "START"}]),
    ]})
    arn = env.run_one(td)["taskArn"]
    violations: list[str] = []
    seen_init_running_alone = []

    def ordered(t: dict) -> bool:
        st = {c["name"]: c for c in t["containers"]}
        if st["web"]["lastStatus"] == "RUNNING" and not (
                st["init"]["lastStatus"] == "STOPPED" and st["init"].get("exitCode") == 0):
            violations.append(f"web RUNNING before init succeeded: {st}")
        if st["side"]["lastStatus"] == "RUNNING" and st["web"]["lastStatus"] not in ("RUNNING", "STOPPED"):
            violations.append(f"side RUNNING before web started: {st}")
        if st["init"]["lastStatus"] == "RUNNING" and "RUNNING" not in (st["web"]["lastStatus"],
                                                                       st["side"]["lastStatus"]):
            seen_init_running_alone.append(True)
        return violations or (t["lastStatus"] == "RUNNING" and st["side"]["lastStatus"] == "RUNNING")

    task = env.wait(arn, ordered, timeout=60, what="init to succeed, then web and side to run")
    assert not violations, violations[0]
    assert h.task_container(task, "init")["exitCode"] == 0
    assert images.page_names(page_of(h.host_port(task, "web")), h.task_id(arn), "web")
    assert seen_init_running_alone, "never saw init RUNNING on its own (it runs for 3 s before web may start)"
    env.stop(arn)
    env.wait(arn, "STOPPED", timeout=60)


@pytest.mark.timeout(150)
def test_a_health_check_goes_healthy_then_unhealthy(env, image):
    cmd = "touch /tmp/healthy; (sleep 8; rm -f /tmp/healthy) & " + images.serve_script(80)
    td = env.register({"family": "health", "containerDefinitions": [
        h.container_def("web", image, command=["sh", "-c", cmd],
                        healthCheck={"command": ["CMD-SHELL", "test -f /tmp/healthy"],
                                     "interval": 5, "timeout": 2, "retries": 2}),
    ]})
    arn = env.run_one(td)["taskArn"]
    env.wait(arn, lambda t: t.get("healthStatus") == "HEALTHY"
             and h.task_container(t, "web").get("healthStatus") == "HEALTHY",
             timeout=40, what="the task and its container to be HEALTHY")
    task = env.wait(arn, lambda t: t.get("healthStatus") == "UNHEALTHY"
                    and h.task_container(t, "web").get("healthStatus") == "UNHEALTHY",
                    timeout=60, what="the task and its container to be UNHEALTHY once /tmp/healthy is gone")
    # a standalone task is not stopped for being unhealthy (only services replace them)
    assert task["lastStatus"] == "RUNNING", task
    env.stop(arn)
    env.wait(arn, "STOPPED", timeout=60)


@pytest.mark.timeout(120)
def test_a_container_over_its_memory_limit_is_killed_with_out_of_memory_error(env, image):
    hog = 'x=$(head -c 67108864 /dev/zero | tr "\\0" x); echo ${#x}; sleep 60'
    td = env.register({"family": "oom", "containerDefinitions": [
        h.container_def("hog", image, memory=8, command=["sh", "-c", hog]),
    ]})
    arn = env.run_one(td)["taskArn"]
    task = env.wait(arn, "STOPPED", timeout=60)
    c = h.task_container(task, "hog")
    assert c["exitCode"] == 137, c
    assert (c.get("reason") or "").startswith("OutOfMemoryError: Container killed due to memory usage"), c
    assert task["stopCode"] == "EssentialContainerExited", task


# ---------------------------------------------------------------------------
# Bad input: the task fails and says why; the agent carries on
# ---------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_an_image_that_does_not_exist_fails_to_start_with_cannot_pull(env):
    td = env.register({"family": "noimage", "containerDefinitions": [
        h.container_def("main", env.registry.image("no-such-tag")),
    ]})
    arn = env.run_one(td)["taskArn"]
    task = env.wait(arn, "STOPPED", timeout=60)
    assert task["stopCode"] == "TaskFailedToStart", task
    assert "CannotPullContainerError" in reasons(task), task


@pytest.mark.timeout(120)
def test_a_command_not_in_the_image_fails_with_cannot_start(env, image):
    td = env.register({"family": "nocmd", "containerDefinitions": [
        h.container_def("main", image, command=["/bin/definitely-not-here", "--flag"]),
    ]})
    arn = env.run_one(td)["taskArn"]
    task = env.wait(arn, "STOPPED", timeout=60)
    why = reasons(task)
    assert "CannotStartContainerError" in why, task
    assert "definitely-not-here" in why, task
    assert task["stopCode"] in ("TaskFailedToStart", "EssentialContainerExited"), task


@pytest.mark.timeout(120)
def test_a_static_host_port_taken_on_the_host_is_refused(env, image):
    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    held.bind(("0.0.0.0", 0))
    held.listen(8)
    port = held.getsockname()[1]
    try:
        td = env.register({"family": "portclash", "containerDefinitions": [
            h.container_def("web", image, environment=[{"name": "PORT", "value": "80"}],
                            portMappings=[{"containerPort": 80, "hostPort": port, "protocol": "tcp"}]),
        ]})
        res = env.run_raw(td).json
        if res.get("failures"):
            assert not res.get("tasks"), res
            assert any(str(port) in (f.get("reason", "") + f.get("detail", "")) or "PORTS" in f.get("reason", "")
                       for f in res["failures"]), res
        else:
            (t,) = res["tasks"]
            task = env.wait(t["taskArn"], "STOPPED", timeout=60)
            assert str(port) in reasons(task), f"the reason does not name port {port}: {reasons(task)!r}"
        # the port still reaches the process that held it
        with socket.create_connection(("127.0.0.1", port), timeout=3):
            held.settimeout(3)
            conn, _ = held.accept()
            conn.close()
    finally:
        held.close()


@pytest.mark.timeout(60)
def test_more_memory_than_any_instance_has_fails_run_task_with_resource_memory(env, image):
    td = env.register({"family": "toobig", "containerDefinitions": [
        h.container_def("main", image, memory=999999),
    ]})
    res = env.run_raw(td).json
    assert res.get("tasks") == [], res
    assert [f["reason"] for f in res["failures"]] == ["RESOURCE:MEMORY"], res
    assert env.list_tasks("--family", td.split(":")[0]) == []
    assert env.list_tasks("--family", td.split(":")[0], "--desired-status", "STOPPED") == []


@pytest.mark.timeout(120)
def test_after_failed_tasks_the_agent_is_still_connected_and_runs_tasks(env, image):
    ci = env.agent.container_instance(env.node)
    assert ci["agentConnected"] is True and ci["status"] == "ACTIVE", ci
    assert env.agent.alive(), env.agent.log_text()[-3000:]
    td = env.register({"family": "after", "containerDefinitions": [web(image)]})
    arn = env.run_one(td)["taskArn"]
    task = env.wait(arn, "RUNNING", timeout=60)
    assert images.page_names(page_of(h.host_port(task, "web")), h.task_id(arn), "web")
    env.stop(arn)
    env.wait(arn, "STOPPED", timeout=60)


# ---------------------------------------------------------------------------
# Listing
# ---------------------------------------------------------------------------


@pytest.mark.timeout(150)
def test_list_tasks_by_family_started_by_container_instance_and_desired_status(env, image):
    td_a = env.register({"family": "list-a", "containerDefinitions": [web(image)]})
    td_b = env.register({"family": "list-b", "containerDefinitions": [web(image)]})
    starter = h.unique("lister")
    a = env.run_one(td_a, started_by=starter)["taskArn"]
    b = env.run_one(td_b)["taskArn"]
    env.wait(a, "RUNNING")
    task_b = env.wait(b, "RUNNING")
    family_a, family_b = td_a.split(":")[0], td_b.split(":")[0]

    assert env.list_tasks("--family", family_a) == [a]
    assert env.list_tasks("--family", family_b) == [b]
    assert env.list_tasks("--started-by", starter) == [a]
    on_instance = env.list_tasks("--container-instance", task_b["containerInstanceArn"])
    assert {a, b} <= set(on_instance), on_instance

    env.stop(a, reason="listing")
    env.wait(a, "STOPPED")
    assert env.list_tasks("--family", family_a) == [], "a STOPPED task is listed as RUNNING"
    assert env.list_tasks("--family", family_a, "--desired-status", "STOPPED") == [a]
    assert b not in env.list_tasks("--desired-status", "STOPPED")
    env.stop(b)
    env.wait(b, "STOPPED")


# ---------------------------------------------------------------------------
# Network modes
# ---------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_an_awsvpc_task_gets_its_own_address(env, image):
    td = env.register({"family": "vpc", "networkMode": "awsvpc", "containerDefinitions": [
        h.container_def("web", image, environment=[{"name": "PORT", "value": "80"}],
                        portMappings=[{"containerPort": 80, "hostPort": 80, "protocol": "tcp"}]),
    ]})
    arn = env.run_one(td, network_configuration={"awsvpcConfiguration": {"subnets": ["subnet-berth"]}})["taskArn"]
    task = env.wait(arn, "RUNNING", timeout=60)

    ifaces = h.task_container(task, "web").get("networkInterfaces") or []
    assert ifaces and ifaces[0].get("privateIpv4Address"), task
    ip = ifaces[0]["privateIpv4Address"]
    details = [{d["name"]: d.get("value") for d in att.get("details", [])}
               for att in task.get("attachments", []) if att.get("type") == "ElasticNetworkInterface"]
    assert details and details[0].get("privateIPv4Address") == ip, task.get("attachments")

    body = page_of(80, host=ip)
    assert images.page_names(body, h.task_id(arn), "web"), body
    env.stop(arn)
    env.wait(arn, "STOPPED", timeout=60)


def _free_port_from(start: int) -> int:
    for p in range(start, start + 200):
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", p))
                return p
            except OSError:
                continue
    raise AssertionError(f"no free port in {start}-{start + 200}")


@pytest.mark.timeout(120)
def test_a_host_mode_task_listens_on_the_host(env, image):
    port = _free_port_from(18080)
    td = env.register({"family": "hostnet", "networkMode": "host", "containerDefinitions": [
        h.container_def("web", image, environment=[{"name": "PORT", "value": str(port)}],
                        portMappings=[{"containerPort": port, "hostPort": port, "protocol": "tcp"}]),
    ]})
    arn = env.run_one(td)["taskArn"]
    env.wait(arn, "RUNNING", timeout=60)
    assert images.page_names(page_of(port), h.task_id(arn), "web")
    env.stop(arn)
    env.wait(arn, "STOPPED", timeout=60)
    h.wait_until(lambda: h.host_port_is_free(port), 15, f"port {port} to be free again")


# ---------------------------------------------------------------------------
# Logs
# ---------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_berth_logs_prints_and_follows_a_containers_output(env, image):
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    script = (f"trap 'exit 0' TERM; echo {marker}; i=0; "
              f"while true; do echo tick-$i; i=$((i+1)); sleep 1 & wait; done")
    td = env.register({"family": "logs", "containerDefinitions": [
        h.container_def("talker", image, command=["sh", "-c", script]),
    ]})
    arn = env.run_one(td)["taskArn"]
    env.wait(arn, "RUNNING", timeout=60)
    tid = h.task_id(arn)

    # `berth logs` runs on the machine of the task and reads that agent's data dir
    # (--data-dir, or BERTH_AGENT_DATA_DIR as here); the endpoint env is there too.
    logs_env = {"BERTH_AGENT_DATA_DIR": str(env.agent.data_dir)}

    def printed():
        out = h.berth("logs", tid, node=env.node, env=logs_env).stdout
        return out if marker in out and "tick-1" in out else None

    out = h.wait_until(printed, 30, f"`berth logs` to print {marker} and tick-1", interval=0.5)
    # (lines may carry a prefix such as a timestamp or the container's name)
    last = max(int(n) for n in re.findall(r"\btick-(\d+)\b", out))

    proc = h.berth_popen("logs", "-f", tid, node=env.node, env=logs_env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        later = f"tick-{last + 2}"

        def streamed():
            while True:
                try:
                    line = lines.get_nowait()
                except queue.Empty:
                    assert proc.poll() is None, f"`berth logs -f` exited {proc.returncode}: {proc.stderr.read()}"
                    return False
                if re.search(rf"\b{later}\b", line):
                    return True

        h.wait_until(streamed, 30, f"`berth logs -f` to stream {later}, printed after it started", interval=0.2)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except Exception:  # noqa: BLE001
            proc.kill()
    env.stop(arn)
    env.wait(arn, "STOPPED", timeout=60)


@pytest.mark.timeout(120)
def test_berth_logs_through_the_cluster_from_any_machine(env, image):
    """Without a local data dir `berth logs` asks the API (signed with the same credentials
    and endpoint the AWS CLI uses); the server relays the read to the task's agent. With
    several containers each line names its container; `-f` ends once the task stopped."""
    marker = f"relay-{uuid.uuid4().hex[:8]}"
    script = (f"trap 'exit 0' TERM; echo {marker}; i=0; "
              f"while true; do echo beat-$i; i=$((i+1)); sleep 1 & wait; done")
    td = env.register({"family": "relaylogs", "containerDefinitions": [
        h.container_def("talker", image, command=["sh", "-c", script]),
        h.container_def("quiet", image, essential=False,
                        command=["sh", "-c", f"trap 'exit 0' TERM; echo quiet-{marker}; sleep 300 & wait"]),
    ]})
    arn = env.run_one(td)["taskArn"]
    env.wait(arn, "RUNNING", timeout=60)
    tid = h.task_id(arn)

    def printed():
        out = h.berth("logs", "--cluster", env.cluster, tid, node=env.node).stdout
        return out if f"[talker] {marker}" in out and f"[quiet] quiet-{marker}" in out else None

    h.wait_until(printed, 30, "`berth logs` through the API to print both containers' lines", interval=0.5)
    one = h.berth("logs", "--cluster", env.cluster, "--container", "talker", "--tail", "1", tid,
                  node=env.node).stdout
    assert re.fullmatch(r"beat-\d+\n", one), one

    proc = h.berth_popen("logs", "-f", "--cluster", env.cluster, "--container", "talker", tid,
                         node=env.node)
    try:
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
        seen: list[str] = []

        def beats(n):
            def enough():
                while not lines.empty():
                    seen.append(lines.get_nowait())
                return sum(1 for s in seen if s.startswith("beat-")) >= n
            return enough

        h.wait_until(beats(3), 30, "`berth logs -f` to stream new lines", interval=0.2)
        env.stop(arn, "done")
        env.wait(arn, "STOPPED", timeout=60)
        # The follower drains what is left and ends by itself.
        assert proc.wait(timeout=15) == 0, proc.stderr.read()
        # Each line exactly once, in order.
        while not lines.empty():
            seen.append(lines.get_nowait())
        nums = [int(s.split("-")[1]) for s in seen if s.startswith("beat-")]
        assert nums == list(range(nums[0], nums[0] + len(nums))), nums
    finally:
        if proc.poll() is None:
            proc.kill()

    bad = h.berth("logs", "--cluster", env.cluster, "0" * 32, node=env.node, expect_rc=None)
    assert bad.returncode != 0 and "not found" in bad.stderr, bad.stderr
