"""Join tokens: `berth token create|list|revoke`, and what a machine presenting one gets.

One server (`--agent-heartbeat-timeout 3s`, so sessions check their token every second)
and real `berth agent` processes on the local containerd. Every refusal is asserted as
the agent prints it (the agent exits: a refused token is not retried) and as the server
logs it with the peer's address; a refused machine never shows up as a container
instance. `berth lb` edge nodes join with lb tokens.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import berth_harness as h


@pytest.fixture(scope="module")
def server(containerd):
    node, cluster = h.start_agent_server(extra_args=["--agent-heartbeat-timeout", "3s"])
    agents: list[h.AgentProcess] = []
    try:
        yield node, cluster, agents
    finally:
        for a in agents:
            a.cleanup()
        node.cleanup()


def token(node: h.BerthNode, *args: str) -> str:
    return h.berth("token", "create", "--quiet", *args, node=node).stdout.strip()


def tokens(node: h.BerthNode) -> dict[str, list[str]]:
    out = h.berth("token", "list", node=node).stdout.splitlines()
    assert out[0].split()[:5] == ["ID", "KIND", "EXPIRES", "USES", "REVOKED"], out
    return {line.split()[0]: line.split() for line in out[1:]}


def agent(server, tok: str, name: str) -> h.AgentProcess:
    node, cluster, agents = server
    a = h.AgentProcess(node, cluster, name=name, join_token=tok)
    agents.append(a)
    return a.start()


def tokens_json(node: h.BerthNode) -> dict[str, dict]:
    return {t["id"]: t for t in h.call(node, "ListJoinTokens", {}).json["joinTokens"]}


def refused(a: h.AgentProcess, node: h.BerthNode, reason: str, registered_before: bool = False) -> None:
    """The agent exits non-zero saying `reason`, the server logs the refusal with the
    peer's address, and (unless it was registered before) no container instance exists."""
    h.wait_until(lambda: not a.alive(), 30, f"{a} to exit after its refusal",
                 on_timeout=lambda: h.tail(a.log_text()))
    assert a.proc.returncode != 0
    log = a.log_text()
    assert "the cluster refused this agent: AccessDenied" in log and reason in log, h.tail(log)
    if not registered_before:
        assert a.container_instance(node) is None
    plain = re.sub(r"\x1b\[[0-9;]*m", "", node.log_text())
    lines = [l for l in plain.splitlines() if "agent refused" in l and reason in l]
    assert lines and 'peer="127.0.0.1:' in lines[-1], lines


def lb_joins(node: h.BerthNode, tok: str) -> bool:
    """Whether `berth lb` with this token is given its certificate (True) or refused and
    exits (False); the server logs a refusal with the peer's address."""
    work = Path(tempfile.mkdtemp(prefix="berth-lb-join-"))
    log = work / "lb.log"
    with open(log, "wb") as fh:
        p = subprocess.Popen([str(h.BERTH_BIN), "lb", "--server", node.raft_addr, "--join-token", tok,
                              "--ca-cert-hash", node.ca_hash(), "--data-dir", str(work / "d"),
                              "--bind", "127.0.0.1"], stdout=fh, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=h.server_env())
    try:
        def outcome():
            text = log.read_text(errors="replace")
            if "joined the cluster" in text:
                return "joined"
            if p.poll() is not None:
                assert "the cluster refused this lb node" in text, text
                return "refused"
            return None
        res = h.wait_until(outcome, 30, "berth lb to join or be refused",
                           on_timeout=lambda: log.read_text(errors="replace"))
        if res == "refused":
            plain = h.strip_ansi(node.log_text())
            assert any("lb node refused" in l and 'peer="127.0.0.1:' in l for l in plain.splitlines()), \
                "the server must log the refusal with the peer"
        return res == "joined"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)


def test_tokens_admit_within_their_kind_expiry_uses_and_revocation(server):
    node, cluster, _ = server
    one = token(node, "--kind", "agent", "--ttl", "1h", "--max-uses", "1", "--description", "rack 1")
    one_id = one.split(".")[0]
    assert tokens(node)[one_id][1:4] == ["agent", "in", "60m"] and tokens(node)[one_id][4] == "0/1"

    a = agent(server, one, "tok-a")
    a.wait_connected(node, timeout=60)
    assert tokens(node)[one_id][4] == "1/1"

    # Its one use is spent: a second machine is refused; so is a wrong secret.
    refused(agent(server, one, "tok-b"), node, f"join token {one_id} was already used 1 times, its limit")
    refused(agent(server, f"{one_id}.{'x' * 32}", "tok-c"), node, f"the secret of join token {one_id} is wrong")
    refused(agent(server, "not-a-token", "tok-d"), node, "is not a berth join token")

    # The machine that joined reconnects with it (its use is not spent again).
    registered = node.log_text().count("agent registered")
    a.restart()
    h.wait_until(lambda: node.log_text().count("agent registered") > registered, 60,
                 f"{a} to register again after its restart", on_timeout=lambda: h.tail(a.log_text()))
    a.wait_connected(node, timeout=60)
    assert tokens(node)[one_id][4] == "1/1"
    # A registered machine's id with another token is a new machine's: refused here.
    other = token(node, "--kind", "agent", "--ttl", "1s")
    h.wait_until(lambda: float(tokens_json(node)[other.split(".")[0]]["expiresAt"]) < time.time(), 5,
                 "the 1 s token to expire")
    b = h.AgentProcess(node, cluster, name="tok-a", join_token=other)
    b.id = a.id  # the same test attribute, to find its container instance
    b.data_dir = a.data_dir
    a.stop()
    # Without its certificate (the machine must join again), under its old id.
    import shutil
    shutil.rmtree(a.data_dir / "tls")
    server[2].append(b)
    refused(b.start(), node, f"join token {other.split('.')[0]} has expired", registered_before=True)
    a.start()
    a.wait_connected(node, timeout=60)

    # Kind and expiry.
    lb = token(node, "--kind", "lb")
    refused(agent(server, lb, "tok-e"), node, f"join token {lb.split('.')[0]} is for lb nodes, not agent nodes")
    short = token(node, "--kind", "agent", "--ttl", "1s")
    expires = time.time() + 1
    h.wait_until(lambda: time.time() > expires + 0.2, 5, "the 1 s token to expire")
    refused(agent(server, short, "tok-f"), node, f"join token {short.split('.')[0]} has expired")

    # Revoking ends the session it admitted within a heartbeat interval, and for good.
    h.berth("token", "revoke", one_id, node=node)
    h.wait_until(lambda: not a.alive(), 15, f"{a} to be cut off after its token was revoked",
                 on_timeout=lambda: h.tail(a.log_text()))
    assert f"join token {one_id} was revoked" in a.log_text()
    a.wait_disconnected(node, timeout=15)
    assert tokens(node)[one_id][6] == "ago", tokens(node)[one_id]  # REVOKED: "<n>s ago"

    # Bad input: a clear error, nothing created.
    before = set(tokens(node))
    for args, msg in [(["--kind", "admin"], "token kind must be agent, lb or server, not 'admin'"),
                      (["--kind", "agent", "--ttl", "1w"], "not '1w'")]:
        p = h.berth("token", "create", *args, node=node, expect_rc=1)
        assert msg in p.stderr, p.stderr
    p = h.berth("token", "revoke", "zzzz9999", node=node, expect_rc=1)
    assert "ResourceNotFoundException" in p.stderr and "zzzz9999" in p.stderr, p.stderr
    assert set(tokens(node)) == before

    # `berth lb` joins with lb tokens (and the servers' own), nothing else.
    assert lb_joins(node, lb)
    assert lb_joins(node, h.JOIN_TOKEN)
    assert not lb_joins(node, short)
    assert not lb_joins(node, token(node, "--kind", "agent"))  # a live token of the wrong kind
    h.berth("token", "revoke", lb.split(".")[0], node=node)
    assert not lb_joins(node, lb)

    # No token secret is anywhere in the server's data: only hashes are kept.
    blob = b"".join(p.read_bytes() for p in Path(node.data_dir).rglob("*") if p.is_file()
                    and p.name != "join-token")
    assert one_id.encode() in blob, "the scan must see the stored tokens"
    for secret in (one.split(".")[1], lb.split(".")[1]):
        assert secret.encode() not in blob, f"a token secret ({secret[:4]}…) is stored in the clear"


def test_a_deregistered_instance_cannot_rejoin_under_its_old_identity(server):
    node, cluster, _ = server
    tok = token(node, "--kind", "agent", "--max-uses", "2")
    x = agent(server, tok, "tok-dereg")
    arn = x.wait_connected(node, timeout=60)["containerInstanceArn"]
    h.aws("ecs", "deregister-container-instance", "--cluster", cluster,
          "--container-instance", arn, "--force", node=node)
    h.wait_until(lambda: not x.alive(), 15, f"{x} to end once its instance is deregistered",
                 on_timeout=lambda: h.tail(x.log_text()))
    assert "InstanceDeregistered" in x.log_text()
    # The same machine (its data dir, so its instance id) is refused from then on.
    refused(x.start(), node, "was deregistered from cluster", registered_before=True)
    d = h.aws("ecs", "describe-container-instances", "--cluster", cluster,
              "--container-instances", arn, node=node).json["containerInstances"]
    assert [ci["status"] for ci in d] == ["INACTIVE"]
    # As a new instance (a new data dir) it joins again, taking the token's second use.
    y = agent(server, tok, "tok-dereg2")
    assert y.wait_connected(node, timeout=60)["containerInstanceArn"] != arn
    assert tokens(node)[tok.split(".")[0]][3] == "2/2"


def test_the_servers_own_token_works_until_revoked(server):
    node, _, _ = server
    legacy = agent(server, h.JOIN_TOKEN, "tok-legacy")
    legacy.wait_connected(node, timeout=60)
    assert tokens(node)["legacy"][1] == "agent"
    blob = b"".join(p.read_bytes() for p in Path(node.data_dir).rglob("*") if p.is_file()
                    and p.name != "join-token")
    assert h.JOIN_TOKEN.encode() not in blob, "the servers' token is stored in the clear"
    h.berth("token", "revoke", "legacy", node=node)
    h.wait_until(lambda: not legacy.alive(), 15, f"{legacy} to be cut off after `revoke legacy`",
                 on_timeout=lambda: h.tail(legacy.log_text()))
    assert "join token legacy was revoked" in legacy.log_text()
    refused(agent(server, h.JOIN_TOKEN, "tok-legacy2"), node, "join token legacy was revoked")
