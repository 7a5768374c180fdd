"""Tags through the real AWS CLI (reference §6.7)."""

from __future__ import annotations

import json

import pytest

from berth_harness import aws, cluster_arn, expect_cli_error, simple_taskdef, td_arn, unique


def tags_of(node, arn) -> list[tuple[str, str]]:
    res = aws("ecs", "list-tags-for-resource", "--resource-arn", arn, node=node)
    return sorted((t["key"], t["value"]) for t in res.json["tags"])


def make_cluster(node) -> str:
    name = unique("tagc")
    return aws("ecs", "create-cluster", "--cluster-name", name, node=node).json["cluster"]["clusterArn"]


def make_taskdef(node, tmp_path) -> str:
    fam = unique("tagtd")
    f = tmp_path / "td.json"
    f.write_text(json.dumps(simple_taskdef(fam)))
    aws("ecs", "register-task-definition", "--cli-input-json", f"file://{f}", node=node)
    return td_arn(fam, 1)


@pytest.mark.parametrize("kind", ["cluster", "task-definition"])
def test_tag_untag_list(server, tmp_path, kind):
    arn = make_cluster(server) if kind == "cluster" else make_taskdef(server, tmp_path)
    assert tags_of(server, arn) == []

    res = aws("ecs", "tag-resource", "--resource-arn", arn, "--tags", "key=env,value=dev", "key=team,value=core",
              node=server)
    assert res.out.strip() in ("", "{}")
    assert tags_of(server, arn) == [("env", "dev"), ("team", "core")]

    # Existing keys are overwritten, others kept; empty values are allowed.
    aws("ecs", "tag-resource", "--resource-arn", arn, "--tags", "key=env,value=prod", "key=empty,value=",
        node=server)
    assert tags_of(server, arn) == [("empty", ""), ("env", "prod"), ("team", "core")]

    aws("ecs", "untag-resource", "--resource-arn", arn, "--tag-keys", "team", "not-there", node=server)
    assert tags_of(server, arn) == [("empty", ""), ("env", "prod")]


def test_cluster_tags_visible_in_describe(server):
    arn = make_cluster(server)
    aws("ecs", "tag-resource", "--resource-arn", arn, "--tags", "key=owner,value=ops", node=server)
    c = aws("ecs", "describe-clusters", "--clusters", arn, "--include", "TAGS", node=server).json["clusters"][0]
    assert c["tags"] == [{"key": "owner", "value": "ops"}]


def test_taskdef_tags_visible_in_describe(server, tmp_path):
    arn = make_taskdef(server, tmp_path)
    aws("ecs", "tag-resource", "--resource-arn", arn, "--tags", "key=owner,value=ops", node=server)
    res = aws("ecs", "describe-task-definition", "--task-definition", arn, "--include", "TAGS", node=server)
    assert res.json["tags"] == [{"key": "owner", "value": "ops"}]


def test_unknown_resource(server):
    for op, extra in (("tag-resource", ["--tags", "key=a,value=b"]),
                      ("untag-resource", ["--tag-keys", "a"]),
                      ("list-tags-for-resource", [])):
        opname = "".join(p.capitalize() for p in op.split("-"))
        res = aws("ecs", op, "--resource-arn", td_arn(unique("ghost"), 1), *extra, node=server, expect_rc=255)
        expect_cli_error(res, "ResourceNotFoundException", opname)


def test_unknown_cluster_arn(server):
    res = aws("ecs", "tag-resource", "--resource-arn", cluster_arn(unique("ghost")), "--tags", "key=a,value=b",
              node=server, expect_rc=255)
    expect_cli_error(res, ("ResourceNotFoundException", "ClusterNotFoundException"), "TagResource")


def test_reserved_aws_prefix(server):
    arn = make_cluster(server)
    res = aws("ecs", "tag-resource", "--resource-arn", arn, "--tags", "key=aws:owner,value=x", node=server,
              expect_rc=255)
    expect_cli_error(res, "InvalidParameterException", "TagResource", contains="aws:")
    assert tags_of(server, arn) == []


def test_too_many_tags(server):
    arn = make_cluster(server)
    tags = [f"key=k{i:02d},value=v" for i in range(51)]
    res = aws("ecs", "tag-resource", "--resource-arn", arn, "--tags", *tags, node=server, expect_rc=255)
    expect_cli_error(res, "InvalidParameterException", "TagResource")
    assert tags_of(server, arn) == []

    # 50 is fine, and then one more (a new key) is too many.
    aws("ecs", "tag-resource", "--resource-arn", arn, "--tags", *tags[:50], node=server)
    assert len(tags_of(server, arn)) == 50
    res = aws("ecs", "tag-resource", "--resource-arn", arn, "--tags", "key=extra,value=v", node=server,
              expect_rc=255)
    expect_cli_error(res, "InvalidParameterException", "TagResource")
    assert len(tags_of(server, arn)) == 50


def test_tags_of_deleted_cluster(server):
    arn = make_cluster(server)
    aws("ecs", "delete-cluster", "--cluster", arn, node=server)
    res = aws("ecs", "tag-resource", "--resource-arn", arn, "--tags", "key=a,value=b", node=server, expect_rc=255)
    expect_cli_error(res, ("InvalidParameterException", "ClusterNotFoundException", "ResourceNotFoundException"),
                     "TagResource")
