"""Clusters through the real AWS CLI (reference §6.1, §5, §11)."""

from __future__ import annotations

from berth_harness import ACCOUNT, REGION, aws, cluster_arn, expect_cli_error, unique


def list_cluster_arns(node, *extra) -> list[str]:
    return aws("ecs", "list-clusters", *extra, node=node).json["clusterArns"]


def test_create_cluster_output_and_idempotent(server):
    res = aws("ecs", "create-cluster", "--cluster-name", "stage01", node=server)
    c = res.json["cluster"]
    assert c["clusterArn"] == f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/stage01"
    assert c["clusterName"] == "stage01"
    assert c["status"] == "ACTIVE"
    for counter in ("registeredContainerInstancesCount", "runningTasksCount", "pendingTasksCount",
                    "activeServicesCount"):
        assert c[counter] == 0, f"{counter} = {c.get(counter)!r}"

    again = aws("ecs", "create-cluster", "--cluster-name", "stage01", node=server).json["cluster"]
    assert again["clusterArn"] == c["clusterArn"]
    assert again["status"] == "ACTIVE"
    assert list_cluster_arns(server).count(c["clusterArn"]) == 1


def test_create_cluster_without_name_creates_default(fresh_server):
    res = aws("ecs", "create-cluster", node=fresh_server)
    c = res.json["cluster"]
    assert c["clusterName"] == "default"
    assert c["clusterArn"] == cluster_arn("default")
    assert c["status"] == "ACTIVE"
    assert cluster_arn("default") in list_cluster_arns(fresh_server)


def test_describe_clusters_missing_and_found(server):
    name = unique("desc")
    aws("ecs", "create-cluster", "--cluster-name", name, node=server)
    res = aws("ecs", "describe-clusters", "--clusters", name, "nope-a", cluster_arn("nope-b"), node=server)
    clusters = res.json["clusters"]
    assert [c["clusterName"] for c in clusters] == [name]
    assert clusters[0]["status"] == "ACTIVE"
    failures = res.json["failures"]
    assert {f["reason"] for f in failures} == {"MISSING"}
    assert sorted(f["arn"] for f in failures) == sorted([cluster_arn("nope-a"), cluster_arn("nope-b")])
    # By ARN as well as by name.
    by_arn = aws("ecs", "describe-clusters", "--clusters", cluster_arn(name), node=server).json
    assert [c["clusterName"] for c in by_arn["clusters"]] == [name]
    assert by_arn.get("failures", []) == []


def test_describe_clusters_include_tags_and_statistics(server):
    name = unique("incl")
    aws("ecs", "create-cluster", "--cluster-name", name, "--tags", "key=env,value=dev", "key=team,value=core",
        node=server)

    plain = aws("ecs", "describe-clusters", "--clusters", name, node=server).json["clusters"][0]
    assert not plain.get("tags"), f"tags shown without --include TAGS: {plain.get('tags')}"
    assert not plain.get("statistics"), f"statistics shown without --include: {plain.get('statistics')}"

    tags_only = aws("ecs", "describe-clusters", "--clusters", name, "--include", "TAGS",
                    node=server).json["clusters"][0]
    assert sorted((t["key"], t["value"]) for t in tags_only["tags"]) == [("env", "dev"), ("team", "core")]
    assert not tags_only.get("statistics")

    both = aws("ecs", "describe-clusters", "--clusters", name, "--include", "TAGS", "STATISTICS",
               node=server).json["clusters"][0]
    assert sorted((t["key"], t["value"]) for t in both["tags"]) == [("env", "dev"), ("team", "core")]
    stats = both.get("statistics")
    assert isinstance(stats, list) and stats, f"no statistics with --include STATISTICS: {both}"
    for s in stats:
        assert set(s) >= {"name", "value"}, s
        assert isinstance(s["value"], str), s


def test_list_clusters_paging(fresh_server):
    before = list_cluster_arns(fresh_server)
    names = [f"page{i:02d}" for i in range(7)]
    for n in names:
        aws("ecs", "create-cluster", "--cluster-name", n, node=fresh_server)
    expected = sorted(before + [cluster_arn(n) for n in names])

    # The CLI follows nextToken itself when --page-size limits each request.
    paged = list_cluster_arns(fresh_server, "--page-size", "2")
    assert sorted(paged) == expected
    assert len(paged) == len(set(paged)), f"duplicates across pages: {paged}"

    # --max-items stops early and hands back a token to resume from.
    first = aws("ecs", "list-clusters", "--page-size", "2", "--max-items", "3", node=fresh_server).json
    assert len(first["clusterArns"]) == 3
    assert first.get("NextToken"), f"no NextToken with --max-items: {first}"
    rest = aws("ecs", "list-clusters", "--page-size", "2", "--starting-token", first["NextToken"],
               node=fresh_server).json
    combined = first["clusterArns"] + rest["clusterArns"]
    assert sorted(combined) == expected
    assert len(combined) == len(set(combined)), f"duplicates: {combined}"

    # A single raw page honours maxResults and returns nextToken.
    one = aws("ecs", "list-clusters", "--max-results", "2", "--no-paginate", node=fresh_server).json
    assert len(one["clusterArns"]) == 2
    assert one.get("nextToken")


def test_update_cluster_settings_echoed(server):
    name = unique("upd")
    aws("ecs", "create-cluster", "--cluster-name", name, node=server)
    res = aws("ecs", "update-cluster", "--cluster", name, "--settings", "name=containerInsights,value=enabled",
              node=server)
    c = res.json["cluster"]
    assert c["clusterName"] == name
    assert {"name": "containerInsights", "value": "enabled"} in c["settings"]
    desc = aws("ecs", "describe-clusters", "--clusters", name, "--include", "SETTINGS",
               node=server).json["clusters"][0]
    assert {"name": "containerInsights", "value": "enabled"} in desc["settings"]


def test_update_cluster_unknown(server):
    res = aws("ecs", "update-cluster", "--cluster", unique("ghost"),
              "--settings", "name=containerInsights,value=enabled", node=server, expect_rc=255)
    expect_cli_error(res, "ClusterNotFoundException", "UpdateCluster")


def test_delete_cluster(server):
    name = unique("del")
    arn = aws("ecs", "create-cluster", "--cluster-name", name, node=server).json["cluster"]["clusterArn"]
    deleted = aws("ecs", "delete-cluster", "--cluster", name, node=server).json["cluster"]
    assert deleted["clusterArn"] == arn
    assert deleted["status"] == "INACTIVE"

    desc = aws("ecs", "describe-clusters", "--clusters", name, node=server).json
    assert [(c["clusterArn"], c["status"]) for c in desc["clusters"]] == [(arn, "INACTIVE")]
    assert arn not in list_cluster_arns(server)


def test_delete_cluster_by_arn(server):
    name = unique("delarn")
    aws("ecs", "create-cluster", "--cluster-name", name, node=server)
    res = aws("ecs", "delete-cluster", "--cluster", cluster_arn(name), node=server)
    assert res.json["cluster"]["status"] == "INACTIVE"


def test_delete_unknown_cluster(server):
    name = unique("ghost")
    res = aws("ecs", "delete-cluster", "--cluster", name, node=server, expect_rc=255)
    expect_cli_error(res, "ClusterNotFoundException", "DeleteCluster")


def test_bad_cluster_names_rejected(server):
    before = list_cluster_arns(server)
    for bad in ("bad name!", "x" * 256, "slash/name"):
        res = aws("ecs", "create-cluster", "--cluster-name", bad, node=server, expect_rc=255)
        expect_cli_error(res, "InvalidParameterException", "CreateCluster", contains=bad)
    assert list_cluster_arns(server) == before, "a rejected create-cluster created something"


def test_255_char_name_accepted(server):
    name = "n" * 250 + unique("")[1:6]
    assert len(name) == 255
    c = aws("ecs", "create-cluster", "--cluster-name", name, node=server).json["cluster"]
    assert c["clusterName"] == name
