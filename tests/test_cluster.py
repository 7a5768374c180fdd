"""Three `berth server` processes in one Raft group: forwarding, replication,
leader failover under load, and catch-up after a crash."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter

from berth_harness import (RawClient, aws, cluster_arn, simple_taskdef, td_arn, unique, wait_until)

CATCH_UP = 15.0  # seconds a follower may lag behind an acknowledged write


def test_writes_on_every_node_visible_everywhere(cluster3, tmp_path):
    nodes = cluster3.nodes
    leader = cluster3.leader()
    names, families = {}, {}
    for n in nodes:
        names[n.node_id] = unique(f"from-node{n.node_id}")
        families[n.node_id] = unique(f"fam-node{n.node_id}")
        c = aws("ecs", "create-cluster", "--cluster-name", names[n.node_id], node=n).json["cluster"]
        assert c["clusterArn"] == cluster_arn(names[n.node_id]), f"via {n} (leader is {leader.node_id})"
        f = tmp_path / f"td{n.node_id}.json"
        f.write_text(json.dumps(simple_taskdef(families[n.node_id])))
        td = aws("ecs", "register-task-definition", "--cli-input-json", f"file://{f}",
                 node=n).json["taskDefinition"]
        assert td["taskDefinitionArn"] == td_arn(families[n.node_id], 1)

    # A second registration through another node continues the same family's numbering.
    f = tmp_path / "again.json"
    f.write_text(json.dumps(simple_taskdef(families[1])))
    td = aws("ecs", "register-task-definition", "--cli-input-json", f"file://{f}",
             node=nodes[-1]).json["taskDefinition"]
    assert td["revision"] == 2

    for reader in nodes:
        def sees_all():
            res = aws("ecs", "describe-clusters", "--clusters", *names.values(), node=reader).json
            return sorted(c["clusterName"] for c in res["clusters"]) == sorted(names.values())
        wait_until(sees_all, CATCH_UP, f"{reader} to see the clusters created through every node")
        for fam in families.values():
            def sees(fam=fam):
                return aws("ecs", "describe-task-definition", "--task-definition", f"{fam}:1", node=reader,
                           expect_rc=None).rc == 0
            wait_until(sees, CATCH_UP, f"{reader} to see task definition {fam}:1")
        latest = aws("ecs", "describe-task-definition", "--task-definition", families[1],
                     node=reader).json["taskDefinition"]
        assert latest["revision"] == 2, f"{reader} resolves {families[1]} to rev {latest['revision']}"


class ChaosWriter(threading.Thread):
    """Registers family `chaos` continuously, round-robin over nodes, and records
    every acknowledged (HTTP 200) revision. Failures are retried on the next node."""

    def __init__(self, nodes, family: str = "chaos"):
        super().__init__(daemon=True)
        self.nodes = nodes
        self.family = family
        self.stop_event = threading.Event()
        self.acked: list[tuple[int, str, float]] = []  # (revision, arn, monotonic time)
        self.failures: Counter = Counter()
        self.lock = threading.Lock()
        self.error: BaseException | None = None

    def acked_since(self, t: float) -> int:
        with self.lock:
            return sum(1 for _, _, at in self.acked if at > t)

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def run(self) -> None:
        clients = {n.node_id: RawClient(n, timeout=5) for n in self.nodes}
        body = simple_taskdef(self.family)
        i = 0
        try:
            while not self.stop_event.is_set():
                node = self.nodes[i % len(self.nodes)]
                i += 1
                try:
                    resp = clients[node.node_id].call("RegisterTaskDefinition", body)
                except (OSError, http.client.HTTPException) as e:  # refused/reset/timeouts
                    self.failures[f"{type(e).__name__}"] += 1
                    time.sleep(0.02)
                    continue
                if resp.status == 200:
                    td = resp.json["taskDefinition"]
                    with self.lock:
                        self.acked.append((td["revision"], td["taskDefinitionArn"], time.monotonic()))
                else:
                    self.failures[f"HTTP {resp.status} {resp.error_type}"] += 1
                    time.sleep(0.02)
        except BaseException as e:  # noqa: BLE001 - surfaced by the test
            self.error = e
        finally:
            for c in clients.values():
                c.close()


def assert_all_visible(node, acked: list[tuple[int, str, float]], family: str = "chaos"):
    client = RawClient(node, timeout=10)
    try:
        top = max(r for r, _, _ in acked)

        def caught_up():
            resp = client.call("DescribeTaskDefinition", {"taskDefinition": f"{family}:{top}"})
            return resp.status == 200

        wait_until(caught_up, CATCH_UP, f"{node} to catch up to {family}:{top}")
        missing = []
        for rev, arn, _ in acked:
            resp = client.call("DescribeTaskDefinition", {"taskDefinition": f"{family}:{rev}"})
            if resp.status != 200 or resp.json["taskDefinition"]["taskDefinitionArn"] != arn:
                missing.append((rev, resp.status, resp.body[:200]))
        assert not missing, f"{node} lost {len(missing)} acknowledged writes, e.g. {missing[:5]}"
    finally:
        client.close()


def test_leader_failover_under_load(cluster3):
    nodes = cluster3.nodes
    writer = ChaosWriter(nodes)
    writer.start()
    try:
        wait_until(lambda: writer.count() >= 30 or writer.error, 30, "30 acknowledged writes before the kill")
        assert writer.error is None, writer.error

        old = cluster3.leader()
        survivors = [n for n in nodes if n is not old]
        t_kill = time.monotonic()
        before = writer.count()
        old.kill9()

        new = cluster3.leader(among=survivors, timeout=30)
        elected = time.monotonic() - t_kill
        assert new is not old
        wait_until(lambda: writer.acked_since(t_kill) >= 30 or writer.error, 30,
                   "30 acknowledged writes after the leader was killed",
                   on_timeout=lambda: f"failures so far: {dict(writer.failures)}")
        first_after = min((at for _, _, at in writer.acked if at > t_kill), default=None)
    finally:
        writer.stop_event.set()
        writer.join(timeout=30)
    assert writer.error is None, f"writer crashed: {writer.error!r}"
    acked = list(writer.acked)
    print(f"\nkilled leader node {old.node_id}; node {new.node_id} elected after {elected:.2f}s; "
          f"first write acknowledged {first_after - t_kill:.2f}s after the kill; "
          f"{before} writes before, {len(acked) - before} after; non-acknowledged attempts: {dict(writer.failures)}")

    revs = [r for r, _, _ in acked]
    dup = [r for r, c in Counter(revs).items() if c > 1]
    assert not dup, f"two acknowledged writes got the same revision: {dup[:10]}"
    for rev, arn, _ in acked:
        assert arn == td_arn("chaos", rev)

    for n in survivors:
        assert_all_visible(n, acked)

    # The killed node comes back with the same arguments and data dir and catches up.
    old.start()
    old.wait_knows_leader(timeout=30)
    assert_all_visible(old, acked)
    # ...and accepts writes again (forwarded to whoever leads).
    resp = RawClient(old).call("RegisterTaskDefinition", simple_taskdef("chaos"))
    assert resp.status == 200, resp.body
    assert resp.json["taskDefinition"]["revision"] > max(revs)


def test_status_lists_three_voters(cluster3):
    from berth_harness import voters_from_status
    for n in cluster3.nodes:
        wait_until(lambda n=n: voters_from_status(n.status()) == {1, 2, 3}, CATCH_UP,
                   f"{n} /status to list voters 1,2,3")
        h = n.healthz()
        assert h["nodeId"] == n.node_id
        assert h["leaderId"] in (1, 2, 3)
    leader = cluster3.leader()
    assert sum(1 for n in cluster3.nodes if n.healthz()["isLeader"]) == 1
    assert leader.healthz()["isLeader"] is True
