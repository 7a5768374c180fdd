"""Tasks, container instances and attributes through the real AWS CLI, on a cluster with
no agents (reference §6.3, §6.5, §6.6, §8.4, §1.4). End-to-end tests with agents live in
the agent test files."""

from __future__ import annotations

import json

from berth_harness import (REGION, ACCOUNT, aws, call, cluster_arn, expect_cli_error,
                           simple_taskdef, unique)


def make_cluster(node) -> str:
    name = unique("ci")
    aws("ecs", "create-cluster", "--cluster-name", name, node=node)
    return name


def register(node, tmp_path, family: str, taskdef: dict | None = None) -> dict:
    f = tmp_path / f"{family}.json"
    f.write_text(json.dumps(taskdef or simple_taskdef(family)))
    return aws("ecs", "register-task-definition", "--cli-input-json", f"file://{f}",
               node=node).json["taskDefinition"]


def fail(node, op: str, *args: str):
    return aws("ecs", *args, node=node, expect_rc=None)


def test_empty_cluster_lists_no_instances_or_tasks(server):
    c = make_cluster(server)
    res = aws("ecs", "list-container-instances", "--cluster", c, node=server).json
    assert res["containerInstanceArns"] == []
    for status in ("RUNNING", "STOPPED"):
        res = aws("ecs", "list-tasks", "--cluster", c, "--desired-status", status, node=server).json
        assert res["taskArns"] == []
    res = aws("ecs", "list-tasks", "--cluster", c, "--family", "x", "--started-by", "me",
              node=server).json
    assert res["taskArns"] == []
    res = aws("ecs", "list-attributes", "--cluster", c, "--target-type", "container-instance",
              node=server).json
    assert res["attributes"] == []
    desc = aws("ecs", "describe-clusters", "--clusters", c, node=server).json["clusters"][0]
    assert desc["registeredContainerInstancesCount"] == 0
    assert desc["runningTasksCount"] == 0
    assert desc["pendingTasksCount"] == 0


def test_run_task_without_instances_is_the_ecs_error(server, tmp_path):
    c = make_cluster(server)
    family = unique("rt")
    register(server, tmp_path, family)
    res = fail(server, "RunTask", "run-task", "--cluster", c, "--task-definition", family)
    expect_cli_error(res, "InvalidParameterException", "RunTask",
                     "No Container Instances were found in your cluster.")
    # StartTask names instances; unknown ones are MISSING failures, not an error.
    ci = f"arn:aws:ecs:{REGION}:{ACCOUNT}:container-instance/{c}/0123456789abcdef0123456789abcdef"
    res = aws("ecs", "start-task", "--cluster", c, "--task-definition", family,
              "--container-instances", ci, node=server).json
    assert res["tasks"] == []
    assert res["failures"] == [{"arn": ci, "reason": "MISSING"}]


def test_run_task_validation(server, tmp_path):
    c = make_cluster(server)
    family = unique("rtv")
    register(server, tmp_path, family)
    res = fail(server, "RunTask", "run-task", "--cluster", c, "--task-definition", unique("nope"))
    expect_cli_error(res, "InvalidParameterException", "RunTask", "TaskDefinition not found.")
    res = fail(server, "RunTask", "run-task", "--cluster", c, "--task-definition", family,
               "--count", "11")
    expect_cli_error(res, "InvalidParameterException", "RunTask", "count")
    res = fail(server, "RunTask", "run-task", "--cluster", c, "--task-definition", family,
               "--overrides", '{"containerOverrides":[{"name":"ghost","command":["x"]}]}')
    expect_cli_error(res, "InvalidParameterException", "RunTask",
                     "Override for container named ghost is not a container in the TaskDefinition.")
    res = fail(server, "RunTask", "run-task", "--cluster", c, "--task-definition", family,
               "--placement-constraints", "type=memberOf,expression=attribute:stack ==")
    expect_cli_error(res, "InvalidParameterException", "RunTask",
                     ["memberOf", "end of expression"])
    res = fail(server, "RunTask", "run-task", "--cluster", c, "--task-definition", family,
               "--launch-type", "FARGATE")
    expect_cli_error(res, "InvalidParameterException", "RunTask", "FARGATE")
    res = fail(server, "RunTask", "run-task", "--cluster", unique("nocluster"),
               "--task-definition", family)
    expect_cli_error(res, "ClusterNotFoundException", "RunTask")


def test_describe_unknown_tasks_and_instances_are_missing(server):
    c = make_cluster(server)
    tid = "4d590253bb114126b7afa7b58eea9221"
    tarn = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/{c}/{tid}"
    res = aws("ecs", "describe-tasks", "--cluster", c, "--tasks", tid, tarn, "--include", "TAGS",
              node=server).json
    assert res["tasks"] == []
    assert res["failures"] == [{"arn": tarn, "reason": "MISSING"}, {"arn": tarn, "reason": "MISSING"}]
    ciarn = f"arn:aws:ecs:{REGION}:{ACCOUNT}:container-instance/{c}/{tid}"
    res = aws("ecs", "describe-container-instances", "--cluster", c, "--container-instances", tid,
              node=server).json
    assert res["containerInstances"] == []
    assert res["failures"] == [{"arn": ciarn, "reason": "MISSING"}]
    res = fail(server, "DescribeTasks", "describe-tasks", "--cluster", unique("nocluster"),
               "--tasks", tid)
    expect_cli_error(res, "ClusterNotFoundException", "DescribeTasks")


def test_stop_unknown_task(server):
    c = make_cluster(server)
    res = fail(server, "StopTask", "stop-task", "--cluster", c, "--task",
               "4d590253bb114126b7afa7b58eea9221")
    expect_cli_error(res, "InvalidParameterException", "StopTask", "The referenced task was not found.")


def test_list_attributes_needs_container_instance_target_type(server):
    c = make_cluster(server)
    # The CLI requires --target-type itself; a raw request without it reaches the server.
    r = call(server, "ListAttributes", {"cluster": c})
    assert r.status == 400
    assert r.json["__type"] == "InvalidParameterException"
    assert "targetType" in r.json["message"]
    res = fail(server, "ListAttributes", "list-attributes", "--cluster", c, "--target-type", "task")
    expect_cli_error(res, "InvalidParameterException", "ListAttributes", "targetType")


def test_bad_filter_names_the_problem(server):
    c = make_cluster(server)
    res = fail(server, "ListContainerInstances", "list-container-instances", "--cluster", c,
               "--filter", "attribute:ecs.instance-type === t2.small")
    err = expect_cli_error(res, "InvalidParameterException", "ListContainerInstances",
                           ["unknown operator '==='", "position"])
    assert "attribute:ecs.instance-type === t2.small" in err.message
    res = fail(server, "ListContainerInstances", "list-container-instances", "--cluster", c,
               "--filter", "foo == bar")
    expect_cli_error(res, "InvalidParameterException", "ListContainerInstances",
                     "unknown subject 'foo'")
    # A good filter on an empty cluster lists nothing.
    res = aws("ecs", "list-container-instances", "--cluster", c, "--filter",
              "attribute:ecs.instance-type =~ t2.* and not(task:group == database)", node=server).json
    assert res["containerInstanceArns"] == []
    res = fail(server, "ListContainerInstances", "list-container-instances", "--cluster", c,
               "--status", "INACTIVE")
    expect_cli_error(res, "InvalidParameterException", "ListContainerInstances", "INACTIVE")


def test_instance_operations_on_unknown_instances(server):
    c = make_cluster(server)
    res = fail(server, "PutAttributes", "put-attributes", "--cluster", c, "--attributes",
               "name=stack,value=prod,targetType=container-instance,targetId=0123456789abcdef0123456789abcdef")
    expect_cli_error(res, "TargetNotFoundException", "PutAttributes")
    res = fail(server, "UpdateContainerInstancesState", "update-container-instances-state",
               "--cluster", c, "--container-instances", "abc", "--status", "REGISTERING")
    expect_cli_error(res, "InvalidParameterException", "UpdateContainerInstancesState",
                     ["ACTIVE", "DRAINING"])
    res = aws("ecs", "update-container-instances-state", "--cluster", c, "--container-instances",
              "abc", "--status", "DRAINING", node=server).json
    assert res["containerInstances"] == []
    assert [f["reason"] for f in res["failures"]] == ["MISSING"]
    res = fail(server, "DeregisterContainerInstance", "deregister-container-instance",
               "--cluster", c, "--container-instance", "abc")
    expect_cli_error(res, "InvalidParameterException", "DeregisterContainerInstance", "abc")


def test_delete_empty_cluster_still_works(server):
    c = make_cluster(server)
    res = aws("ecs", "delete-cluster", "--cluster", c, node=server).json["cluster"]
    assert res["status"] == "INACTIVE"
    assert res["clusterArn"] == cluster_arn(c)
