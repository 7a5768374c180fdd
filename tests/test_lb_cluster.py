"""The load balancer on a three-server cluster: every server is an entry point (each
binds its listeners on its own loopback address, 127.0.0.1-3), health is checked by
each and reported by the leader, and killing the leader with SIGKILL neither loses the
configuration nor stops traffic through the other two.

Targets here are `ip` targets: plain HTTP servers started by the test on loopback
(no containers needed for what this file checks).
"""

from __future__ import annotations

import http.server
import threading
import time
import urllib.error
import urllib.request

import pytest

import berth_harness as h


class Backend:
    """A tiny HTTP server answering `name` on / and 200 or 503 on /health."""

    def __init__(self, name: str):
        self.name = name
        self.healthy = True
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 - http.server's naming
                if self.path == "/health":
                    code, body = (200, b"ok") if outer.healthy else (503, b"sick")
                else:
                    code, body = 200, outer.name.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):  # quiet
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


@pytest.fixture
def cluster():
    c = h.BerthCluster(3)
    for i, n in enumerate(c.nodes):
        n.extra_args = list(n.extra_args) + ["--lb-bind", f"127.0.0.{i + 1}"]
    c.start()
    yield c
    c.cleanup()


def health(node, tg: str) -> dict[int, str]:
    th = h.aws("elbv2", "describe-target-health", "--target-group-arn", tg, node=node).json
    return {t["Target"]["Port"]: t["TargetHealth"]["State"] for t in th["TargetHealthDescriptions"]}


@pytest.mark.timeout(300)
def test_every_server_serves_and_a_killed_leader_loses_nothing(cluster):
    b1, b2, b3 = Backend("b1"), Backend("b2"), Backend("b3")
    try:
        leader = cluster.leader()
        lb = h.aws("elbv2", "create-load-balancer", "--name", h.unique("edge")[:32],
                   node=leader).json["LoadBalancers"][0]
        tg = h.aws("elbv2", "create-target-group", "--name", h.unique("ips")[:32], "--protocol", "HTTP",
                   "--port", "80", "--target-type", "ip", "--health-check-path", "/health",
                   "--health-check-interval-seconds", "5", "--healthy-threshold-count", "2",
                   "--unhealthy-threshold-count", "2", node=leader).json["TargetGroups"][0]["TargetGroupArn"]
        port = h.free_port()
        h.aws("elbv2", "create-listener", "--load-balancer-arn", lb["LoadBalancerArn"], "--protocol", "HTTP",
              "--port", str(port), "--default-actions", f"Type=forward,TargetGroupArn={tg}", node=leader)
        h.aws("elbv2", "register-targets", "--target-group-arn", tg, "--targets",
              f"Id=127.0.0.1,Port={b1.port}", f"Id=127.0.0.1,Port={b2.port}", node=leader)
        h.wait_until(lambda: health(leader, tg) == {b1.port: "healthy", b2.port: "healthy"}, 30,
                     "both targets healthy", interval=0.5, on_timeout=lambda: str(health(leader, tg)))

        urls = [f"http://127.0.0.{i}:{port}/" for i in (1, 2, 3)]
        for url in urls:
            seen = {get(url)[1] for _ in range(10)}
            assert seen == {"b1", "b2"}, (url, seen)

        # SIGKILL the leader while a client keeps sending through the other servers.
        survivors = [n for n in cluster.nodes if n is not leader]
        surviving_urls = [f"http://127.0.0.{n.node_id}:{port}/" for n in survivors]
        failures: list[str] = []
        ok = [0]
        stop = threading.Event()

        def traffic():
            i = 0
            while not stop.is_set():
                url = surviving_urls[i % 2]
                i += 1
                try:
                    s, b = get(url, timeout=5)
                    if s == 200:
                        ok[0] += 1
                    else:
                        failures.append(f"{url}: HTTP {s} {b[:100]}")
                except Exception as e:  # noqa: BLE001 - every failure is a finding
                    failures.append(f"{url}: {e!r}")
                time.sleep(0.01)

        t = threading.Thread(target=traffic, daemon=True)
        t.start()
        try:
            time.sleep(0.5)  # traffic before the kill (not a wait for a condition)
            leader.kill9()
            new_leader = cluster.leader(among=survivors)
            # The configuration survived, and the new leader takes changes.
            h.aws("elbv2", "register-targets", "--target-group-arn", tg, "--targets",
                  f"Id=127.0.0.1,Port={b3.port}", node=new_leader)
            h.wait_until(lambda: health(new_leader, tg).get(b3.port) == "healthy", 30,
                         "the new target to be reported healthy by the new leader", interval=0.5)
            # A target that starts failing its checks is reported by the new leader.
            b1.healthy = False
            h.wait_until(lambda: health(new_leader, tg).get(b1.port) == "unhealthy", 30,
                         "b1 reported unhealthy by the new leader", interval=0.5)
            for url in surviving_urls:
                h.wait_until(lambda: {get(url)[1] for _ in range(12)} == {"b2", "b3"}, 20,
                             f"{url} to route to b2 and b3 only")
        finally:
            stop.set()
            t.join(10)
        assert not failures, f"{len(failures)} requests failed across the leader's death: {failures[:5]}"
        assert ok[0] > 50
    finally:
        for b in (b1, b2, b3):
            b.stop()
