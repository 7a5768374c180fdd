"""The cluster's doors: the cluster port is mutual TLS with certificates from the cluster
CA, each certificate's holder may call only its own services, and the API is HTTPS.

One server issuing short-lived member certificates (`--cert-lifetime 12s`, so agents
renew every 8 s or so), real agents on the local containerd, and the real clients people
and attackers would use: curl (gRPC over HTTP/2 with a client certificate), openssl, the
AWS CLI. Every refusal is asserted where the caller sees it and in the server's log, with
the caller's address, and nothing changes.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import struct
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest

import berth_harness as h
import images

LIFETIME = 12  # seconds: the server's --cert-lifetime here
LAST_CURL = ""


@pytest.fixture(scope="module")
def env(containerd, registry):
    node, cluster = h.start_agent_server(extra_args=["--agent-heartbeat-timeout", "3s",
                                                     "--cert-lifetime", f"{LIFETIME}s"])
    agents: list[h.AgentProcess] = []
    env = h.AgentEnv(node, cluster, agents, registry)
    try:
        yield env
    finally:
        env.cleanup()


def new_agent(env: h.AgentEnv, name: str, **kw) -> h.AgentProcess:
    kw.setdefault("cni_bridge", "berthtls0")
    kw.setdefault("cni_subnet", "10.98.40.0/24")
    a = h.AgentProcess(env.node, env.cluster, name=name, insecure_registries=[env.registry.addr], **kw)
    env.agents.append(a)
    return a


def server_log_lines(node: h.BerthNode, *needles: str) -> list[str]:
    return [l for l in h.strip_ansi(node.log_text()).splitlines() if all(n in l for n in needles)]


def grpc(node: h.BerthNode, path: str, message: bytes, cert_dir: Path | None, name: str) -> tuple[str, str, bytes]:
    """One gRPC call with curl over TLS (HTTP/2, the cluster's CA, a client cert `name`
    from `cert_dir`). Returns (grpc-status, grpc-message, response body)."""
    host, port = node.raft_addr.rsplit(":", 1)
    body = b"\x00" + struct.pack(">I", len(message)) + message
    argv = ["curl", "-sS", "-v", "--http2", "--max-time", "10",
            "--cacert", str(node.ca_bundle),
            "--resolve", f"server.berth.cluster:{port}:{host}",
            "-H", "content-type: application/grpc", "-H", "te: trailers",
            "--data-binary", "@-", f"https://server.berth.cluster:{port}{path}"]
    if cert_dir is not None:
        argv[1:1] = ["--cert", str(cert_dir / f"{name}.pem"), "--key", str(cert_dir / f"{name}.key")]
    for _ in range(5):
        p = subprocess.run(argv, input=body, capture_output=True, timeout=20)
        err = p.stderr.decode(errors="replace")
        # A refusal can arrive (and reset the stream) while curl still sends the body;
        # curl then reports a framing error without the answer: ask again.
        if not (p.returncode == 92 and "< grpc-status:" not in err):
            break
    status = next((l.split(":", 1)[1].strip() for l in err.splitlines() if l.startswith("< grpc-status:")), "")
    msg = next((l.split(":", 1)[1].strip() for l in err.splitlines() if l.startswith("< grpc-message:")), "")
    msg = urllib.parse.unquote(msg)
    if p.returncode != 0 and not status:
        status = f"curl exit {p.returncode}: {err.splitlines()[-1] if err else ''}"
    global LAST_CURL
    LAST_CURL = err
    return status, msg, p.stdout


def payload(data: bytes) -> bytes:
    """The protobuf of `Payload { bytes data = 1; }` (and of agent.proto's Frame)."""
    n, varint = len(data), b""
    while True:
        b = n & 0x7F
        n >>= 7
        varint += bytes([b | (0x80 if n else 0)])
        if not n:
            break
    return b"\x0a" + varint + data


def test_strangers_are_refused_before_anything_is_read(env):
    node = env.node
    host, port = node.raft_addr.rsplit(":", 1)
    before = h.ok(h.call(node, "ListClusters", {}))
    # A plain TCP client speaking gRPC's HTTP/2 preface: no TLS, dropped.
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        try:
            got = s.recv(100)
        except OSError:
            got = b""
    assert b"HTTP" not in got
    # A TLS client without a certificate, even one that trusts the cluster's CA: the
    # server refuses it at the handshake (TLS 1.3 says so with the certificate_required alert).
    ctx = ssl.create_default_context(cafile=str(node.ca_bundle))
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)) as refused:
            with ctx.wrap_socket(raw, server_hostname="server.berth.cluster") as s:
                s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                assert s.recv(100) == b"", "the server answered a TLS client without a certificate"
                raise ConnectionResetError("closed without an answer")
    assert "CERTIFICATE_REQUIRED" in str(refused.value) or isinstance(refused.value, ConnectionResetError), refused.value
    # And curl calling Raft without a certificate gets no answer either.
    status, _, _ = grpc(node, "/berth.raft.v1.Raft/Vote", payload(b"{}"), None, "")
    assert status.startswith("curl exit"), status
    h.wait_until(lambda: server_log_lines(node, "cluster port: connection refused", 'peer=127.0.0.1:'), 5,
                 "the server to log the refused connections with their peers")
    assert server_log_lines(node, "peer sent no certificates")
    assert h.ok(h.call(node, "ListClusters", {})) == before


@pytest.mark.timeout(300)
def test_members_get_certs_renew_them_and_may_call_only_their_own_services(env):
    node = env.node
    a = new_agent(env, "tls-a")
    a.start()
    a_ci = a.wait_connected(node, timeout=60)
    tls = a.data_dir / "tls"
    assert (tls / "agent.pem").exists() and (tls / "ca.pem").read_text() == node.ca_bundle.read_text()
    assert oct((tls / "agent.key").stat().st_mode & 0o777) == "0o600"
    # A task keeps running through the renewals, and answers all along.
    td = env.register({"family": "tls-web", "containerDefinitions": [
        h.container_def("web", env.registry.image("1"), environment=[{"name": "PORT", "value": "80"}],
                        portMappings=[{"containerPort": 80, "hostPort": 0, "protocol": "tcp"}])]})
    task = env.run(td, count=1)[0]  # on A, the only instance yet
    running = env.wait(task["taskArn"], "RUNNING", timeout=60)
    port = h.host_port(running, "web")
    runtime_id = h.task_container(running, "web").get("runtimeId")
    assert runtime_id
    b = new_agent(env, "tls-b")
    b.start()
    b_ci = b.wait_connected(node, timeout=60)
    b_instance = b_ci["containerInstanceArn"].rsplit("/", 1)[1]


    # The agent's certificate is what lets it in: Raft and the servers' calls are not for it,
    status, msg, _ = grpc(node, "/berth.raft.v1.Raft/AppendEntries", payload(b"{}"), tls, "agent")
    assert status == "7" and "may not call this service" in msg, (status, msg)
    status, msg, _ = grpc(node, "/berth.raft.v1.Cluster/Forward", payload(b"{}"), tls, "agent")
    assert status == "7", (status, msg)
    status, msg, _ = grpc(node, "/berth.raft.v1.LbFeed/Config", payload(b"null"), tls, "agent")
    assert status == "7", (status, msg)
    assert server_log_lines(node, "call refused for this certificate's role", f"agent {env.cluster}/")
    # and it cannot speak for another instance: a Hello as instance B on A's certificate.
    hello = {"type": "hello", "protocolVersion": 1, "joinToken": "", "cluster": env.cluster,
             "instanceId": b_instance, "hostname": "evil", "hostIp": "127.0.0.1",
             "resources": {"cpu": 1024, "memory": 1024, "ports": [], "portsUdp": []}, "attributes": [],
             "agentVersion": "x", "runtimeVersion": "x"}
    status, msg, body = grpc(node, "/berth.agent.v1.AgentSession/Session",
                             payload(json.dumps(hello).encode()), tls, "agent")
    assert b"AccessDenied" in body and b"cannot open a session for instance" in body, (status, msg, body[:500])
    assert server_log_lines(node, "agent refused", "cannot open a session", "peer=")
    b_now = h.aws("ecs", "describe-container-instances", "--cluster", env.cluster,
                  "--container-instances", b_ci["containerInstanceArn"], node=node).json["containerInstances"][0]
    assert b_now["agentConnected"] and b_now["ec2InstanceId"] == b_ci["ec2InstanceId"]

    # Certificates are renewed over the session before they expire, twice here; the task
    # never restarts and keeps answering.
    failures, served = 0, 0
    deadline = time.monotonic() + 60
    while a.log_text().count("renewed this machine's certificate") < 2:
        assert time.monotonic() < deadline, "the agent did not renew its certificate twice in 60 s"
        try:
            status, body = h.http_get(f"http://127.0.0.1:{port}/", timeout=2)
            served += status == 200 and images.page_names(body, h.task_id(task["taskArn"]), "web")
            failures += status != 200
        except OSError:
            failures += 1
        time.sleep(0.2)
    assert failures == 0 and served > 10, (failures, served)
    assert server_log_lines(node, "renewed a certificate", f"agent {env.cluster}/")
    now = env.wait(task["taskArn"], "RUNNING")
    assert h.task_container(now, "web").get("runtimeId") == runtime_id
    assert a.container_instance(node)["agentConnected"]
    assert "joined the cluster" in a.log_text() and a.log_text().count("joined the cluster") == 1

    # An expired certificate is refused at the handshake; the agent, back after its cert
    # expired, joins again with its token (same instance, its task adopted).
    a.stop()
    shutil.copytree(tls, a.workdir / "old-tls")
    h.wait_until(lambda: _expired(a.workdir / "old-tls"), LIFETIME + 10,
                 "the stopped agent's certificate to expire", interval=0.5)
    status, _, _ = grpc(node, "/berth.agent.v1.AgentSession/Session", payload(b"{}"), a.workdir / "old-tls", "agent")
    assert status.startswith("curl exit"), (status, LAST_CURL[-3000:])
    h.wait_until(lambda: server_log_lines(node, "connection refused", "expired"), 5,
                 "the server to log the expired certificate")
    a.start()
    h.wait_until(lambda: a.log_text().count("joined the cluster") == 2, 30, "the agent to join again",
                 on_timeout=lambda: h.tail(a.log_text()))
    assert a.wait_connected(node, timeout=60)["containerInstanceArn"] == a_ci["containerInstanceArn"]
    assert h.task_container(env.wait(task["taskArn"], "RUNNING"), "web").get("runtimeId") == runtime_id

    # Deregistering an instance cuts its agent off within seconds, for good.
    h.aws("ecs", "deregister-container-instance", "--cluster", env.cluster,
          "--container-instance", b_ci["containerInstanceArn"], "--force", node=node)
    h.wait_until(lambda: not b.alive(), 20, f"{b} to be cut off", on_timeout=lambda: h.tail(b.log_text()))
    status, msg, body = grpc(node, "/berth.raft.v1.Certs/Renew", payload(b'{"csr":"x"}'), b.data_dir / "tls", "agent")
    assert b"AccessDenied" in body and b"was deregistered" in body, (status, msg, body[:300])


def _expired(tls: Path) -> bool:
    """Whether the certificate expired over 2 s ago (certificates count whole seconds)."""
    import datetime
    p = subprocess.run(["openssl", "x509", "-enddate", "-noout", "-in", str(tls / "agent.pem")],
                       capture_output=True, text=True, check=True)
    end = datetime.datetime.strptime(p.stdout.strip().split("=", 1)[1], "%b %d %H:%M:%S %Y %Z")
    return time.time() > end.replace(tzinfo=datetime.timezone.utc).timestamp() + 2


def test_a_machine_shows_its_token_only_to_its_own_cluster(env, tmp_path):
    node = env.node
    # A wrong --ca-cert-hash: the agent refuses before it sends its token.
    wrong = "sha256:" + "0" * 64
    x = new_agent(env, "tls-pin", extra_args=["--ca-cert-hash", wrong])
    x.start()
    h.wait_until(lambda: not x.alive(), 30, f"{x} to refuse the server", on_timeout=lambda: h.tail(x.log_text()))
    assert "is not the cluster you pinned" in x.log_text() and "the token was not sent" in x.log_text()
    assert x.container_instance(node) is None
    # Another cluster's server (another CA, another token): without a pin the agent asks
    # the server to prove it knows the token, which it cannot.
    rogue = h.BerthNode(1, join_token="another-clusters-token-xyz").start()
    try:
        rogue.wait_leader()
        y = new_agent(env, "tls-rogue", pin_ca=False)
        y.server_addr = rogue.raft_addr
        y.start()
        h.wait_until(lambda: not y.alive(), 30, f"{y} to refuse the rogue server", on_timeout=lambda: h.tail(y.log_text()))
        assert "could not prove it knows join token legacy" in y.log_text(), h.tail(y.log_text())
        assert h.JOIN_TOKEN not in rogue.log_text()
        for what in ("agent joined", "agent refused", "agent registered"):
            assert not server_log_lines(rogue, what), f"the rogue server saw the agent: {what}"
        # The AWS CLI verifies the API: the other cluster's CA does not vouch for this server.
        name = h.unique("tls-cli")
        res = h.aws("ecs", "create-cluster", "--cluster-name", name, node=node, expect_rc=None,
                    env={**h.base_env(h.cli_home()), "AWS_ACCESS_KEY_ID": h.ACCESS_KEY,
                         "AWS_SECRET_ACCESS_KEY": h.SECRET_KEY, "AWS_DEFAULT_REGION": h.REGION,
                         "AWS_CA_BUNDLE": str(rogue.ca_bundle)})
        assert res.rc != 0 and "SSL validation failed" in res.err, res.err
        assert name not in json.dumps(h.aws("ecs", "list-clusters", node=node).json)
    finally:
        rogue.cleanup()
    # Without a pin, against its own cluster, the token alone is enough.
    z = new_agent(env, "tls-nopin", pin_ca=False)
    z.start()
    z.wait_connected(node, timeout=60)
    # Plain HTTP to the API is not served.
    with pytest.raises((OSError, http_error())):
        import http.client
        c = http.client.HTTPConnection("127.0.0.1", node.api_port, timeout=5)
        c.request("GET", "/healthz")
        r = c.getresponse()
        assert r.status != 200
        raise OSError("answered plain HTTP with an error, as it should")


def http_error():
    import http.client
    return http.client.HTTPException


@pytest.mark.timeout(240)
def test_a_data_dir_from_before_tls_upgrades_in_place(env):
    """What the release before the cluster CA left behind: a server data dir and agent
    data dirs without `tls/`. The server makes the CA on its start, the agents (same
    flags, the servers' old join token, no --ca-cert-hash) join again with it as the same
    instances, and nothing running restarts. (Last in this module: the server gets a new CA.)"""
    node = env.node
    for other in env.agents:  # so the task lands on this machine
        if other.alive():
            other.stop()
            other.wait_disconnected(node, timeout=30)
    # Its own bridge and ports: the agents stopped above left their containers running.
    a = new_agent(env, "tls-upgrade", pin_ca=False, cni_bridge="berthtls1", cni_subnet="10.98.41.0/24",
                  extra_args=["--dynamic-ports", "50100-50199"])
    a.start()
    ci = a.wait_connected(node, timeout=60)
    td = env.register({"family": "tls-up", "containerDefinitions": [
        h.container_def("web", env.registry.image("1"), environment=[{"name": "PORT", "value": "80"}],
                        portMappings=[{"containerPort": 80, "hostPort": 0, "protocol": "tcp"}])]})
    task = env.run(td, count=1)[0]
    running = env.wait(task["taskArn"], "RUNNING", timeout=60)
    runtime_id = h.task_container(running, "web").get("runtimeId")
    old_hash = node.ca_hash()
    # Stop everything and take the TLS files away: the data dirs as the old release wrote them.
    a.stop()
    node.stop()
    shutil.rmtree(node.data_dir / "tls")
    shutil.rmtree(a.data_dir / "tls")
    node.start()
    node.wait_leader()
    assert node.ca_hash() != old_hash
    a.start()
    h.wait_until(lambda: "joined the cluster" in a.log_text().rsplit("===== start", 1)[-1], 30,
                 "the upgraded agent to get its certificate", on_timeout=lambda: h.tail(a.log_text()))
    assert a.wait_connected(node, timeout=60)["containerInstanceArn"] == ci["containerInstanceArn"]
    after = env.wait(task["taskArn"], "RUNNING")
    assert h.task_container(after, "web").get("runtimeId") == runtime_id, "the task's container was restarted"
    port = h.host_port(after, "web")
    status, body = h.http_get(f"http://127.0.0.1:{port}/")
    assert status == 200 and images.page_names(body, h.task_id(task["taskArn"]), "web")
