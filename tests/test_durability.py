"""Acknowledged writes survive `kill -9` (everything goes through Raft and disk)."""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from berth_harness import RawClient, call, ok, simple_taskdef, td_arn

N = 1000
THREADS = 16


def list_all(node, family: str) -> list[str]:
    arns, token = [], None
    while True:
        req = {"familyPrefix": family, "maxResults": 100}
        if token:
            req["nextToken"] = token
        page = ok(call(node, "ListTaskDefinitions", req))
        arns += page["taskDefinitionArns"]
        token = page.get("nextToken")
        if not token:
            return arns


def test_thousand_revisions_survive_kill9(fresh_server):
    node = fresh_server
    fam = "durable"
    body = simple_taskdef(fam)
    local = threading.local()
    clients: list[RawClient] = []

    def register(_: int) -> tuple[int, str]:
        if not hasattr(local, "client"):
            local.client = RawClient(node, timeout=30)
            clients.append(local.client)
        td = ok(local.client.call("RegisterTaskDefinition", body))["taskDefinition"]
        return td["revision"], td["taskDefinitionArn"]

    t0 = time.monotonic()
    with ThreadPoolExecutor(THREADS) as pool:
        acked = list(pool.map(register, range(N)))
    elapsed = time.monotonic() - t0
    for c in clients:
        c.close()
    print(f"\n{N} RegisterTaskDefinition calls over {THREADS} connections: {elapsed:.1f}s "
          f"({N / elapsed:.0f}/s)")

    revisions = sorted(r for r, _ in acked)
    assert revisions == list(range(1, N + 1)), "acknowledged revisions are not exactly 1..1000"
    for rev, arn in acked:
        assert arn == td_arn(fam, rev)
    assert list_all(node, fam) == [td_arn(fam, r) for r in range(1, N + 1)]

    node.kill9()
    node.start()
    t1 = time.monotonic()
    node.wait_leader()
    print(f"restart to leader after kill -9: {time.monotonic() - t1:.2f}s")

    assert list_all(node, fam) == [td_arn(fam, r) for r in range(1, N + 1)], \
        "revisions lost or changed across kill -9"
    for rev in random.sample(range(1, N + 1), 10) + [1, N]:
        td = ok(call(node, "DescribeTaskDefinition", {"taskDefinition": f"{fam}:{rev}"}))["taskDefinition"]
        assert td["revision"] == rev
        assert td["status"] == "ACTIVE"
        assert td["containerDefinitions"][0]["image"] == "busybox", json.dumps(td)
    latest = ok(call(node, "DescribeTaskDefinition", {"taskDefinition": fam}))["taskDefinition"]
    assert latest["revision"] == N

    nxt = ok(call(node, "RegisterTaskDefinition", body))["taskDefinition"]
    assert nxt["revision"] == N + 1
    assert nxt["taskDefinitionArn"] == td_arn(fam, N + 1)


def test_clusters_survive_graceful_restart(fresh_server):
    node = fresh_server
    for i in range(5):
        ok(call(node, "CreateCluster", {"clusterName": f"keep{i}"}))
    ok(call(node, "DeleteCluster", {"cluster": "keep4"}))
    node.restart()
    node.wait_leader()
    arns = ok(call(node, "ListClusters", {}))["clusterArns"]
    names = sorted(a.rsplit("/", 1)[-1] for a in arns)
    assert [n for n in names if n.startswith("keep")] == ["keep0", "keep1", "keep2", "keep3"]
    d = ok(call(node, "DescribeClusters", {"clusters": ["keep4"]}))
    assert [c["status"] for c in d["clusters"]] == ["INACTIVE"]
