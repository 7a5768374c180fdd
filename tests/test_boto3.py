"""The same happy paths through boto3 (reference §11.8)."""

from __future__ import annotations

import datetime as dt

import pytest
from botocore.exceptions import ClientError

from berth_harness import AUTH_TASKDEF, boto3_client, cluster_arn, simple_taskdef, td_arn, unique


def test_create_and_describe_cluster(ecs):
    name = unique("b3")
    c = ecs.create_cluster(clusterName=name, tags=[{"key": "env", "value": "dev"}])["cluster"]
    assert c["clusterArn"] == cluster_arn(name)
    assert c["status"] == "ACTIVE"
    d = ecs.describe_clusters(clusters=[name, "b3-missing"], include=["TAGS"])
    assert [x["clusterName"] for x in d["clusters"]] == [name]
    assert d["clusters"][0]["tags"] == [{"key": "env", "value": "dev"}]
    assert [(f["arn"], f["reason"]) for f in d["failures"]] == [(cluster_arn("b3-missing"), "MISSING")]
    assert d["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert d["ResponseMetadata"]["RequestId"]


def test_register_and_describe_task_definition(ecs):
    fam = unique("b3td")
    req = dict(AUTH_TASKDEF, family=fam)
    td = ecs.register_task_definition(**req)["taskDefinition"]
    assert td["taskDefinitionArn"] == td_arn(fam, 1)
    assert td["revision"] == 1
    assert isinstance(td["registeredAt"], dt.datetime), "registeredAt parses as a timestamp"
    got = ecs.describe_task_definition(taskDefinition=fam)["taskDefinition"]
    assert got["containerDefinitions"][0]["portMappings"] == [{"containerPort": 10080, "hostPort": 0,
                                                               "protocol": "tcp"}]
    assert got["containerDefinitions"][0]["dockerLabels"] == {"service": "auth"}


def test_list_task_definitions_paginator(ecs):
    fam = unique("b3pg")
    for _ in range(7):
        ecs.register_task_definition(**simple_taskdef(fam))
    pages = list(ecs.get_paginator("list_task_definitions").paginate(
        familyPrefix=fam, PaginationConfig={"PageSize": 3}))
    assert [len(p["taskDefinitionArns"]) for p in pages] == [3, 3, 1]
    arns = [a for p in pages for a in p["taskDefinitionArns"]]
    assert arns == [td_arn(fam, r) for r in range(1, 8)]
    assert "nextToken" not in pages[-1] or not pages[-1]["nextToken"]

    desc = ecs.list_task_definitions(familyPrefix=fam, sort="DESC", maxResults=2)
    assert desc["taskDefinitionArns"] == [td_arn(fam, 7), td_arn(fam, 6)]
    assert desc["nextToken"]


def test_list_clusters_paginator(ecs):
    names = [unique("b3lc") for _ in range(5)]
    for n in names:
        ecs.create_cluster(clusterName=n)
    arns = [a for p in ecs.get_paginator("list_clusters").paginate(PaginationConfig={"PageSize": 2})
            for a in p["clusterArns"]]
    assert len(arns) == len(set(arns))
    assert {cluster_arn(n) for n in names} <= set(arns)


def test_modeled_exceptions(ecs):
    with pytest.raises(ecs.exceptions.ClusterNotFoundException) as ei:
        ecs.delete_cluster(cluster=unique("b3ghost"))
    err = ei.value.response["Error"]
    assert err["Code"] == "ClusterNotFoundException"
    assert err["Message"]
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert ei.value.response["ResponseMetadata"]["RequestId"]

    with pytest.raises(ecs.exceptions.ClientException) as ei:
        ecs.describe_task_definition(taskDefinition=unique("b3ghost"))
    assert ei.value.response["Error"]["Message"] == "Unable to describe task definition."

    with pytest.raises(ecs.exceptions.InvalidParameterException):
        ecs.create_cluster(clusterName="bad name!")

    with pytest.raises(ecs.exceptions.ResourceNotFoundException):
        ecs.list_tags_for_resource(resourceArn=td_arn(unique("b3ghost"), 1))


def test_bad_credentials(server):
    bad = boto3_client(server, secret_key="wrong")
    with pytest.raises(ClientError) as ei:
        bad.list_clusters()
    assert ei.value.response["Error"]["Code"] == "InvalidSignatureException"
    unknown = boto3_client(server, access_key="AKIDNOPE")
    with pytest.raises(ClientError) as ei:
        unknown.list_clusters()
    assert ei.value.response["Error"]["Code"] == "UnrecognizedClientException"


def test_tags_and_delete(ecs):
    fam = unique("b3tag")
    arn = ecs.register_task_definition(**simple_taskdef(fam))["taskDefinition"]["taskDefinitionArn"]
    ecs.tag_resource(resourceArn=arn, tags=[{"key": "a", "value": "1"}])
    assert ecs.list_tags_for_resource(resourceArn=arn)["tags"] == [{"key": "a", "value": "1"}]
    ecs.untag_resource(resourceArn=arn, tagKeys=["a"])
    assert ecs.list_tags_for_resource(resourceArn=arn)["tags"] == []
    d = ecs.deregister_task_definition(taskDefinition=arn)["taskDefinition"]
    assert d["status"] == "INACTIVE"
    assert isinstance(d["deregisteredAt"], dt.datetime)
    r = ecs.delete_task_definitions(taskDefinitions=[arn])
    assert r["taskDefinitions"][0]["status"] == "DELETE_IN_PROGRESS"
    assert r.get("failures", []) == []
    fams = ecs.list_task_definition_families(familyPrefix=fam, status="ALL")["families"]
    assert fams in ([fam], []), fams
