"""The built-in load balancer end to end: two agents as two hosts (network namespaces
berth-h1 and berth-h2), one server whose load balancer binds on 127.0.0.1, real
containerd, images from a real registry, everything configured with the AWS CLI
(`aws elbv2 ...`, `aws ecs ...`) exactly as an ALB user would.

What a user notices:
  * the classic session: one listener, a path rule, two services; describe-target-health
    lists the tasks' host:port as healthy; `/` and `/random/` reach their services,
    spread over the tasks;
  * a rolling update behind the listener fails no request;
  * a task killed mid-traffic: its requests go to the other task, it leaves the group;
  * a task whose health endpoint starts failing: traffic moves away, it is replaced;
  * a stopped task drains only while requests are in flight to it (through the server
    or an edge node), not for the whole deregistration delay.

Short timers keep it fast: health checks every 5 s (ALB's minimum) with thresholds
of 2, a 3 s deregistration delay, and the services tests' server timers.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest

import berth_harness as h

AZ = {"berth-h1": "az-a", "berth-h2": "az-b"}
CNI = {"berth-h1": ("berthe2e-l1", "10.98.31.0/24"), "berth-h2": ("berthe2e-l2", "10.98.32.0/24")}
SERVER_ARGS = ["--agent-heartbeat-timeout", "3s", "--agent-lost-after", "3s", "--task-healthy-after", "3s",
               "--lb-bind", "127.0.0.1"]


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
            try:
                arns = h.aws("ecs", "list-services", "--cluster", env.cluster, node=env.node).json["serviceArns"]
            except Exception:  # noqa: BLE001 - cleanup only
                arns = []
            for a in arns:
                h.aws("ecs", "delete-service", "--cluster", env.cluster, "--service", a.rsplit("/", 1)[-1],
                      "--force", node=env.node, expect_rc=None)
            try:
                h.wait_until(lambda: not env.list_tasks(), 60, "the deleted services' tasks to stop", interval=0.5)
            except AssertionError as e:
                print(f"[berth tests] cleanup: {e}")
            env.cleanup()
        reg.cleanup()


def elb(env, *args: str, expect_rc: int | None = 0) -> h.CliResult:
    return h.aws("elbv2", *args, node=env.node, expect_rc=expect_rc)


def page_script(paths: dict[str, str], port: int) -> list[str]:
    """A container command: write `paths` (url path -> body, with the task id appended)
    under /tmp/www and serve it with busybox httpd on `port`."""
    lines = ["mkdir -p /tmp/www"]
    for path, body in paths.items():
        d = "/tmp/www" + path.rstrip("/")
        lines.append(f"mkdir -p {d}")
        lines.append(f'echo "{body} task=${{BERTH_TASK_ID}}" > {d}/index.html')
    lines.append("echo ok > /tmp/www/health")
    lines.append("trap 'exit 143' TERM INT")
    lines.append(f"httpd -f -p {port} -h /tmp/www & wait")
    return ["sh", "-c", "; ".join(lines)]


def register(env, family: str, container: str, port: int, paths: dict[str, str]) -> str:
    return env.register({"family": family, "containerDefinitions": [
        h.container_def(container, env.registry.image("1"), command=page_script(paths, port),
                        portMappings=[{"containerPort": port, "hostPort": 0, "protocol": "tcp"}]),
    ]})


def target_group(env, name: str, path: str) -> str:
    tg = elb(env, "create-target-group", "--name", name, "--protocol", "HTTP", "--port", "80",
             "--vpc-id", "vpc-local", "--health-check-path", path, "--health-check-interval-seconds", "5",
             "--healthy-threshold-count", "2", "--unhealthy-threshold-count", "2").json["TargetGroups"][0]
    assert tg["HealthCheckPath"] == path and tg["HealthCheckPort"] == "traffic-port", tg
    arn = tg["TargetGroupArn"]
    elb(env, "modify-target-group-attributes", "--target-group-arn", arn,
        "--attributes", "Key=deregistration_delay.timeout_seconds,Value=3")
    return arn


def create_service(env, name: str, td: str, desired: int, tg: str, container: str, port: int, **extra) -> dict:
    spec = {"cluster": env.cluster, "serviceName": name, "taskDefinition": td, "desiredCount": desired,
            "loadBalancers": [{"targetGroupArn": tg, "containerName": container, "containerPort": port}],
            "placementStrategy": [{"type": "spread", "field": "attribute:ecs.availability-zone"}], **extra}
    return h.aws("ecs", "create-service", "--cli-input-json", json.dumps(spec), node=env.node).json["service"]


def describe_service(env, name: str) -> dict:
    (svc,) = h.aws("ecs", "describe-services", "--cluster", env.cluster, "--services", name,
                   node=env.node).json["services"]
    return svc


def service_tasks(env, name: str, desired: str = "RUNNING") -> list[dict]:
    arns = h.aws("ecs", "list-tasks", "--cluster", env.cluster, "--service-name", name,
                 "--desired-status", desired, node=env.node).json["taskArns"]
    if not arns:
        return []
    return h.aws("ecs", "describe-tasks", "--cluster", env.cluster, "--tasks", *arns, node=env.node).json["tasks"]


def target_health(env, tg: str) -> list[dict]:
    return elb(env, "describe-target-health", "--target-group-arn", tg).json["TargetHealthDescriptions"]


def healthy_targets(env, tg: str, n: int, timeout: float = 120) -> list[dict]:
    def check():
        th = target_health(env, tg)
        ok = [t for t in th if t["TargetHealth"]["State"] == "healthy"]
        return th if len(ok) == n and len(th) == n else None
    return h.wait_until(check, timeout, f"{n} healthy targets in {tg}", interval=1,
                        on_timeout=lambda: json.dumps(target_health(env, tg)))


def expected_targets(env, name: str, container: str, port: int) -> set[tuple[str, int]]:
    """(container instance id, host port) of the service's RUNNING tasks: ECS's wiring."""
    out = set()
    for t in service_tasks(env, name):
        if t["lastStatus"] != "RUNNING":
            continue
        c = h.task_container(t, container)
        (b,) = [b for b in c["networkBindings"] if b["containerPort"] == port]
        out.add((t["containerInstanceArn"].rsplit("/", 1)[-1], b["hostPort"]))
    return out


def get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


class Traffic:
    """Requests through the listener in a loop (a new connection each, as curl), every
    failure recorded with its time and cause."""

    def __init__(self, url: str, interval: float = 0.02):
        self.url, self.interval = url, interval
        self.ok = 0
        self.failures: list[tuple[float, str]] = []
        self.bodies: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, body = get(self.url, timeout=10)
                if status == 200:
                    self.ok += 1
                    self.bodies.append((time.monotonic(), body.strip()))
                else:
                    self.failures.append((time.monotonic(), f"HTTP {status}: {body[:200]}"))
            except Exception as e:  # noqa: BLE001 - every failure is a finding
                self.failures.append((time.monotonic(), repr(e)))
            time.sleep(self.interval)

    def __enter__(self) -> "Traffic":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join(15)

    def tasks_since(self, t0: float) -> set[str]:
        return {b.rsplit("task=", 1)[-1] for (t, b) in self.bodies if t >= t0}


@pytest.fixture(scope="module")
def alb(env):
    """The issue's session, step by step with the AWS CLI: a load balancer, two target
    groups, a listener forwarding to `auth` and a rule sending /random/* to `random`."""
    lb = elb(env, "create-load-balancer", "--name", h.unique("stage01")[:32],
             "--subnets", "subnet-a", "subnet-b").json["LoadBalancers"][0]
    assert lb["State"]["Code"] == "active" and lb["Type"] == "application", lb
    auth = target_group(env, h.unique("auth")[:32], "/")
    rnd = target_group(env, h.unique("random")[:32], "/random/")
    port = h.free_port()
    listener = elb(env, "create-listener", "--load-balancer-arn", lb["LoadBalancerArn"], "--protocol", "HTTP",
                   "--port", str(port), "--default-actions",
                   f"Type=forward,TargetGroupArn={auth}").json["Listeners"][0]
    elb(env, "create-rule", "--listener-arn", listener["ListenerArn"], "--priority", "10",
        "--conditions", "Field=path-pattern,Values=/random/*",
        "--actions", f"Type=forward,TargetGroupArn={rnd}")
    url = f"http://127.0.0.1:{port}"
    # The listener opens within a second of the change, on the server's load balancer;
    # with no targets yet, ALB answers 503.
    h.wait_until(lambda: get(url + "/", timeout=2)[0] == 503, 10, "the listener to answer 503 (no targets)")
    return {"lb": lb, "auth": auth, "random": rnd, "listener": listener, "url": url, "port": port}


@pytest.mark.timeout(300)
def test_two_services_behind_one_listener(env, alb):
    td_auth = register(env, h.unique("auth"), "auth", 10080, {"/": "auth"})
    td_rnd = register(env, h.unique("random"), "random", 80, {"/": "random-root", "/random/": "random"})
    create_service(env, "auth", td_auth, 2, alb["auth"], "auth", 10080, healthCheckGracePeriodSeconds=30)
    create_service(env, "random", td_rnd, 2, alb["random"], "random", 80)

    th = healthy_targets(env, alb["auth"], 2)
    got = {(t["Target"]["Id"], t["Target"]["Port"]) for t in th}
    assert got == expected_targets(env, "auth", "auth", 10080), th
    assert {t["HealthCheckPort"] for t in th} == {str(p) for (_, p) in got}, th
    healthy_targets(env, alb["random"], 2)

    # Deployments wait for healthy targets: once both services are COMPLETED their targets
    # are healthy.
    for name in ("auth", "random"):
        h.wait_until(lambda: describe_service(env, name)["deployments"][0]["rolloutState"] == "COMPLETED",
                     60, f"{name}'s deployment to complete")

    events = [e["message"] for e in describe_service(env, "auth")["events"]]
    assert f"(service auth) registered 1 targets in (target-group {alb['auth']})" in events, events

    answers = [get(alb["url"] + "/") for _ in range(20)]
    assert all(s == 200 and b.startswith("auth task=") for s, b in answers), answers
    auth_ids = {t["taskArn"].rsplit("/", 1)[-1] for t in service_tasks(env, "auth")}
    assert {b.strip().rsplit("task=", 1)[-1] for _, b in answers} == auth_ids, "round robin must reach both tasks"

    answers = [get(alb["url"] + "/random/") for _ in range(20)]
    assert all(s == 200 and b.startswith("random task=") for s, b in answers), answers
    rnd_ids = {t["taskArn"].rsplit("/", 1)[-1] for t in service_tasks(env, "random")}
    assert {b.strip().rsplit("task=", 1)[-1] for _, b in answers} == rnd_ids

    # The rule is a path pattern: /randomx is not under /random/, so it goes to auth.
    s, b = get(alb["url"] + "/random")
    assert s in (200, 404) and "random task=" not in b, (s, b)


@pytest.mark.timeout(300)
def test_rolling_update_behind_the_listener_fails_no_request(env, alb):
    before = {t["taskArn"] for t in service_tasks(env, "auth")}
    assert len(before) == 2
    fam = service_tasks(env, "auth")[0]["taskDefinitionArn"].rsplit("/", 1)[-1].split(":")[0]
    td2 = register(env, fam, "auth", 10080, {"/": "auth-v2"})
    with Traffic(alb["url"] + "/") as traffic:
        time.sleep(1)  # some traffic on the old version first (not a wait for a condition)
        h.aws("ecs", "update-service", "--cluster", env.cluster, "--service", "auth", "--task-definition", td2,
              "--deployment-configuration", "maximumPercent=200,minimumHealthyPercent=100", node=env.node)

        def rolled():
            svc = describe_service(env, "auth")
            deps = svc["deployments"]
            live = service_tasks(env, "auth")
            return (len(deps) == 1 and deps[0]["rolloutState"] == "COMPLETED" and len(live) == 2
                    and not ({t["taskArn"] for t in live} & before))
        h.wait_until(rolled, 180, "the rolling update to complete", interval=1)
        # the old tasks drain (3 s) and stop
        h.wait_until(lambda: all(env.describe(a)["lastStatus"] == "STOPPED" for a in before), 60,
                     "the old tasks to stop after draining", interval=0.5)
        t_done = time.monotonic()
        h.wait_until(lambda: traffic.ok > 0 and traffic.bodies[-1][0] > t_done + 1, 10, "more traffic")
    assert traffic.failures == [], f"{len(traffic.failures)} failed requests during the update: {traffic.failures[:10]}"
    assert traffic.ok > 100, traffic.ok
    new_ids = {t["taskArn"].rsplit("/", 1)[-1] for t in service_tasks(env, "auth")}
    assert traffic.tasks_since(t_done) == new_ids
    assert all(b.startswith("auth-v2") for (t, b) in traffic.bodies if t > t_done)
    old = env.describe(next(iter(before)))
    assert old["stopCode"] == "ServiceSchedulerInitiated", old
    events = [e["message"] for e in describe_service(env, "auth")["events"]]
    assert "(service auth) has begun draining connections on 1 tasks." in events, events
    assert f"(service auth) deregistered 1 targets in (target-group {alb['auth']})" in events, events
    # only the new tasks are targets now
    th = healthy_targets(env, alb["auth"], 2, timeout=30)
    assert {(t["Target"]["Id"], t["Target"]["Port"]) for t in th} == expected_targets(env, "auth", "auth", 10080)


@pytest.mark.timeout(300)
def test_a_task_killed_mid_traffic_fails_over_and_leaves_the_group(env, alb):
    healthy_targets(env, alb["auth"], 2)
    tasks = service_tasks(env, "auth")
    victim = tasks[0]
    vid = victim["taskArn"].rsplit("/", 1)[-1]
    (vb,) = h.task_container(victim, "auth")["networkBindings"]
    vkey = (victim["containerInstanceArn"].rsplit("/", 1)[-1], vb["hostPort"])
    ns = next(a for a in env.agents
              if a.container_instance(env.node)["containerInstanceArn"] == victim["containerInstanceArn"])
    with Traffic(alb["url"] + "/") as traffic:
        h.wait_until(lambda: vid in traffic.tasks_since(0), 10, "traffic to reach the victim")
        t_kill = time.monotonic()
        h.ctr("tasks", "kill", "--signal", "SIGKILL", h.task_container(victim, "auth")["runtimeId"],
              namespace=ns.namespace)

        def gone():
            th = target_health(env, alb["auth"])
            return all((t["Target"]["Id"], t["Target"]["Port"]) != vkey or t["TargetHealth"]["State"] == "draining"
                       for t in th)
        h.wait_until(gone, 30, "the dead task's target to leave (drain) the group", interval=0.5)
        h.wait_until(lambda: len(healthy_targets(env, alb["auth"], 2, timeout=120)) == 2, 130,
                     "a replacement task to become a healthy target")
        t_end = time.monotonic()
    after_kill = [f for f in traffic.failures if f[0] >= t_kill]
    # Connections refused by the dead target are retried on the other one; at most a
    # request that was inside the killed process can fail.
    assert len(after_kill) <= 1, after_kill
    assert vid not in traffic.tasks_since(t_kill + 1), "the dead task kept receiving requests"
    assert traffic.tasks_since(t_end - 0.001) <= {t["taskArn"].rsplit("/", 1)[-1] for t in service_tasks(env, "auth")}


@pytest.mark.timeout(300)
def test_a_failing_health_endpoint_moves_traffic_away_and_the_task_is_replaced(env, alb):
    tg = target_group(env, h.unique("sick")[:32], "/health")
    rule_port = "/sick/*"
    elb(env, "create-rule", "--listener-arn", alb["listener"]["ListenerArn"], "--priority", "20",
        "--conditions", f"Field=path-pattern,Values={rule_port}", "--actions", f"Type=forward,TargetGroupArn={tg}")
    td = register(env, h.unique("sick"), "sick", 80, {"/": "sick-root", "/sick/": "sick"})
    create_service(env, "sick", td, 2, tg, "sick", 80, healthCheckGracePeriodSeconds=0)
    healthy_targets(env, tg, 2)
    tasks = service_tasks(env, "sick")
    victim = tasks[0]
    vid = victim["taskArn"].rsplit("/", 1)[-1]
    (vb,) = h.task_container(victim, "sick")["networkBindings"]
    vkey = (victim["containerInstanceArn"].rsplit("/", 1)[-1], vb["hostPort"])
    agent = next(a for a in env.agents
                 if a.container_instance(env.node)["containerInstanceArn"] == victim["containerInstanceArn"])
    with Traffic(alb["url"] + "/sick/", interval=0.05) as traffic:
        h.wait_until(lambda: vid in traffic.tasks_since(0), 10, "traffic to reach the victim")
        # Its health endpoint disappears (404): ALB's ResponseCodeMismatch.
        h.ctr("tasks", "exec", "--exec-id", "rm-health", h.task_container(victim, "sick")["runtimeId"],
              "rm", "-f", "/tmp/www/health", namespace=agent.namespace)
        t_sick = time.monotonic()

        def unhealthy():
            for t in target_health(env, tg):
                if (t["Target"]["Id"], t["Target"]["Port"]) == vkey and t["TargetHealth"]["State"] == "unhealthy":
                    return t
            return None
        seen = {}

        def replaced_or_unhealthy():
            u = unhealthy()
            if u:
                seen["u"] = u
            return env.describe(victim["taskArn"])["desiredStatus"] == "STOPPED"
        h.wait_until(replaced_or_unhealthy, 60, "the sick task to be stopped by the service", interval=0.3)
        t_moved = time.monotonic()
        h.wait_until(lambda: len(healthy_targets(env, tg, 2, timeout=120)) == 2, 130, "a healthy replacement")
    if "u" in seen:
        assert seen["u"]["TargetHealth"]["Reason"] == "Target.ResponseCodeMismatch", seen["u"]
        assert "404" in seen["u"]["TargetHealth"].get("Description", ""), seen["u"]
    stopped = env.describe(victim["taskArn"])
    assert stopped["stoppedReason"] == f"Task failed ELB health checks in (target-group {tg})", stopped
    # within 2 checks 5 s apart (plus one interval of slack) the victim got no more traffic
    late = [t for (t, b) in traffic.bodies if b.endswith(vid) and t > t_sick + 16]
    assert not late, f"{len(late)} requests reached the unhealthy task more than 16 s after it failed"
    assert t_moved - t_sick < 40
    events = [e["message"] for e in describe_service(env, "sick")["events"]]
    assert any("is unhealthy in (target-group " + tg in m for m in events), events
    assert not [f for f in traffic.failures if f[0] > t_sick], traffic.failures[:5]


SLOW_SECS = 6
SLOW_DELAY = 120  # the deregistration delay of the `slow` group: a drain that waits for it fails the test


def slow_script(port: int) -> list[str]:
    """A container command: busybox httpd on `port` with /cgi-bin/slow, which answers its
    first line at once ("started task=<id>") and the rest ("done") SLOW_SECS later."""
    cgi = "/tmp/www/cgi-bin/slow"
    lines = ["mkdir -p /tmp/www/cgi-bin", 'echo "$BERTH_TASK_ID" > /tmp/task-id', "echo ok > /tmp/www/index.html"]
    for line in ["#!/bin/sh", 'echo "Content-Type: text/plain"', "echo", 'echo "started task=$(cat /tmp/task-id)"',
                 f"sleep {SLOW_SECS}", "echo done"]:
        lines.append(f"echo '{line}' >> {cgi}")
    lines += [f"chmod +x {cgi}", "trap 'exit 143' TERM INT", f"httpd -f -p {port} -h /tmp/www & wait"]
    return ["sh", "-c", "; ".join(lines)]


@pytest.fixture(scope="module")
def slow(env, alb):
    """Service `slow` (2 tasks) behind /cgi-bin/* with a 120 s deregistration delay."""
    tg = target_group(env, h.unique("slow")[:32], "/")
    elb(env, "modify-target-group-attributes", "--target-group-arn", tg,
        "--attributes", f"Key=deregistration_delay.timeout_seconds,Value={SLOW_DELAY}")
    elb(env, "create-rule", "--listener-arn", alb["listener"]["ListenerArn"], "--priority", "30",
        "--conditions", "Field=path-pattern,Values=/cgi-bin/*", "--actions", f"Type=forward,TargetGroupArn={tg}")
    td = env.register({"family": h.unique("slow"), "containerDefinitions": [
        h.container_def("slow", env.registry.image("1"), command=slow_script(80),
                        portMappings=[{"containerPort": 80, "hostPort": 0, "protocol": "tcp"}]),
    ]})
    create_service(env, "slow", td, 2, tg, "slow", 80)
    return {"tg": tg}


class SlowRequest:
    """GET /cgi-bin/slow in a thread: which task took it (from the first line, sent at once),
    then the whole answer and when it ended (wall clock, as the task's timestamps)."""

    def __init__(self, url: str):
        self.url = url
        self.task: str | None = None
        self.status: int | None = None
        self.body = ""
        self.ended: float | None = None
        self.error: str | None = None
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        try:
            with urllib.request.urlopen(self.url, timeout=SLOW_SECS + 20) as r:
                self.status = r.status
                first = r.readline().decode()
                self.task = first.strip().rsplit("task=", 1)[-1]
                self.body = first + r.read().decode()
        except Exception as e:  # noqa: BLE001 - a failure is a finding
            self.error = repr(e)
        self.ended = time.time()

    def join(self) -> None:
        self._t.join(SLOW_SECS + 30)


def drain_waits_for_in_flight_requests_only(env, slow, base_url: str) -> float:
    """Stops a `slow` task while requests through `base_url` are inside it. Asserts that
    they finish, that the task keeps running until they have, and that it stops long
    before the deregistration delay. Returns how long after its last request it stopped."""
    healthy_targets(env, slow["tg"], 2)
    reqs = [SlowRequest(base_url + "/cgi-bin/slow") for _ in range(4)]
    h.wait_until(lambda: all(r.task or r.error for r in reqs), 15, "the slow requests to reach the tasks",
                 interval=0.05)
    assert not [r.error for r in reqs if r.error], [r.error for r in reqs]
    victim = reqs[0].task
    task = next(t for t in service_tasks(env, "slow") if t["taskArn"].endswith(victim))
    arn = task["taskArn"]
    (vb,) = h.task_container(task, "slow")["networkBindings"]
    vkey = (task["containerInstanceArn"].rsplit("/", 1)[-1], vb["hostPort"])
    t_stop = time.time()
    h.aws("ecs", "stop-task", "--cluster", env.cluster, "--task", arn, node=env.node)
    # while its requests run it drains: DEACTIVATING, its target `draining`
    t = env.describe(arn)
    assert t["desiredStatus"] == "STOPPED" and t["lastStatus"] == "DEACTIVATING", t
    for r in reqs:
        r.join()
    mine = [r for r in reqs if r.task == victim]
    assert all(r.status == 200 and r.body.endswith("done\n") for r in reqs), \
        [(r.task, r.status, r.body, r.error) for r in reqs]
    last_end = max(r.ended for r in mine)
    stopped = h.wait_until(lambda: (d := env.describe(arn))["lastStatus"] == "STOPPED" and d, 60,
                           "the drained task to stop well before the 120 s deregistration delay", interval=0.2)
    # it ran until its last request ended (its container stopped after), and not much longer
    assert stopped["executionStoppedAt"] >= last_end - 0.5, (stopped["executionStoppedAt"], last_end)
    assert stopped["stoppedAt"] - t_stop < SLOW_DELAY / 2, stopped
    # the target shows `draining` until the delay is over, as on ALB
    (tgt,) = [x for x in target_health(env, slow["tg"]) if (x["Target"]["Id"], x["Target"]["Port"]) == vkey]
    assert tgt["TargetHealth"]["State"] == "draining", tgt
    assert tgt["TargetHealth"]["Reason"] == "Target.DeregistrationInProgress", tgt
    return stopped["executionStoppedAt"] - last_end


@pytest.mark.timeout(300)
def test_a_drain_ends_when_its_requests_finish_not_at_the_deregistration_delay(env, alb, slow):
    """ALB completes a deregistration early once nothing is in flight: a stopped task
    serves its in-flight requests to the end, then stops, long before the 120 s delay."""
    took = drain_waits_for_in_flight_requests_only(env, slow, alb["url"])
    print(f"[berth tests] the drained task stopped {took:.2f} s after its last request ended")
    # the service replaced it
    healthy_targets(env, slow["tg"], 2)


@pytest.mark.timeout(240)
def test_an_edge_node_follows_the_cluster(env, alb, slow, hosts, tmp_path):
    """`berth lb --server …` on another machine (network namespace berth-h1, 10.99.0.11):
    it serves the same listeners and targets, and a new rule reaches it within a second
    or so of the change (long-polled from the server)."""
    import subprocess

    ip = hosts.ip_of("berth-h1")
    log = open(tmp_path / "edge.log", "wb")
    proc = subprocess.Popen(["nsenter", "--net=/run/netns/berth-h1", "--", str(h.BERTH_BIN), "lb",
                             "--server", env.node.raft_addr, "--join-token", h.JOIN_TOKEN,
                             "--ca-cert-hash", env.node.ca_hash(), "--data-dir", str(tmp_path / "edge"),
                             "--bind", ip], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        edge = f"http://{ip}:{alb['port']}"
        healthy_targets(env, alb["auth"], 2)

        def serves_auth():
            s, b = get(edge + "/", timeout=2)
            return s == 200 and "task=" in b
        h.wait_until(serves_auth, 30, "the edge node to serve the listener", interval=0.3,
                     on_timeout=lambda: (tmp_path / "edge.log").read_text(errors="replace")[-3000:])
        # A change made through the API reaches the edge node promptly.
        t0 = time.monotonic()
        elb(env, "create-rule", "--listener-arn", alb["listener"]["ListenerArn"], "--priority", "5",
            "--conditions", "Field=path-pattern,Values=/edge-check",
            "--actions", "Type=fixed-response,FixedResponseConfig={StatusCode=418,ContentType=text/plain,"
                         "MessageBody=from-the-rule}")
        h.wait_until(lambda: get(edge + "/edge-check", timeout=2) == (418, "from-the-rule"), 10,
                     "the edge node to apply the new rule", interval=0.05)
        took = time.monotonic() - t0
        assert took < 3, f"the edge node took {took:.2f} s to apply a new rule"
        # The server's own listener answers the same.
        assert get(alb["url"] + "/edge-check") == (418, "from-the-rule")
        # A drain waits for the requests in flight through the edge node too (the
        # server's own load balancer has none and says so at once).
        took = drain_waits_for_in_flight_requests_only(env, slow, edge)
        print(f"[berth tests] through the edge node: stopped {took:.2f} s after its last request ended")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    assert proc.returncode is not None
