"""Services through the real AWS CLI, on clusters with no container instances (reference
§6.4, §9.1, §9.3, §9.4, §9.8, §9.9, §1.4): validation errors with ECS's exception names
and messages, the shapes of create/describe/list/update/delete, idempotency, paging, the
services-stable waiter, service deployments and tags.

No agents run here, so no task ever starts: the tests assert what the API answers, never
that the controller converges (the agent test files do that)."""

from __future__ import annotations

import json
import re

import berth_harness as h
from berth_harness import (ACCOUNT, REGION, aws, call, cluster_arn, expect_cli_error,
                           td_arn, unique)

DEPLOYMENT_ID = re.compile(r"^ecs-svc/\d{19}$")


def make_cluster(node) -> str:
    name = unique("svc")
    aws("ecs", "create-cluster", "--cluster-name", name, node=node)
    return name


def web_taskdef(family: str) -> dict:
    return {"family": family,
            "containerDefinitions": [{
                "name": "web", "image": "busybox", "memory": 64, "essential": True,
                "portMappings": [{"containerPort": 8080, "hostPort": 0, "protocol": "tcp"}],
            }]}


def register(node, tmp_path, family: str, taskdef: dict | None = None) -> dict:
    f = tmp_path / f"{family}-{unique('r')}.json"
    f.write_text(json.dumps(taskdef or web_taskdef(family)))
    return aws("ecs", "register-task-definition", "--cli-input-json", f"file://{f}",
               node=node).json["taskDefinition"]


def service_arn(cluster: str, name: str) -> str:
    return f"arn:aws:ecs:{REGION}:{ACCOUNT}:service/{cluster}/{name}"


def setup(node, tmp_path) -> tuple[str, str]:
    """A cluster and a registered task definition family (revision 1)."""
    family = unique("web")
    register(node, tmp_path, family)
    return make_cluster(node), family


def create(node, cluster: str, name: str, family: str, *extra: str, desired: str | None = "2") -> dict:
    args = ["ecs", "create-service", "--cluster", cluster, "--service-name", name,
            "--task-definition", family]
    if desired is not None:
        args += ["--desired-count", desired]
    return aws(*args, *extra, node=node).json["service"]


def create_fails(node, cluster: str, name: str, *args: str):
    return aws("ecs", "create-service", "--cluster", cluster, "--service-name", name, *args,
               node=node, expect_rc=None)


def describe(node, cluster: str, *services: str, include_tags: bool = False) -> dict:
    args = ["ecs", "describe-services", "--cluster", cluster, "--services", *services]
    if include_tags:
        args += ["--include", "TAGS"]
    return aws(*args, node=node).json


def describe_one(node, cluster: str, name: str) -> dict:
    res = describe(node, cluster, name)
    assert res["failures"] == [], res
    assert len(res["services"]) == 1
    return res["services"][0]


def test_create_service_shape(server, tmp_path):
    c, family = setup(server, tmp_path)
    name = unique("s")
    svc = create(server, c, name, family)
    assert svc["serviceName"] == name
    assert svc["serviceArn"] == service_arn(c, name)
    assert svc["clusterArn"] == cluster_arn(c)
    assert svc["status"] == "ACTIVE"
    assert svc["desiredCount"] == 2
    assert svc["runningCount"] == 0 and svc["pendingCount"] == 0
    assert svc["launchType"] == "EC2"
    assert svc["taskDefinition"] == td_arn(family, 1)
    assert svc["schedulingStrategy"] == "REPLICA"
    assert svc["deploymentController"] == {"type": "ECS"}
    assert svc["deploymentConfiguration"] == {
        "deploymentCircuitBreaker": {"enable": False, "rollback": False},
        "maximumPercent": 200, "minimumHealthyPercent": 100}
    assert svc["events"] == []
    assert svc["loadBalancers"] == [] and svc["placementStrategy"] == []
    assert svc["propagateTags"] == "NONE"
    assert svc["enableECSManagedTags"] is False
    assert isinstance(svc["createdAt"], (int, float))
    [d] = svc["deployments"]
    assert DEPLOYMENT_ID.match(d["id"]), d["id"]
    assert d["status"] == "PRIMARY"
    assert d["taskDefinition"] == td_arn(family, 1)
    assert d["rolloutState"] == "IN_PROGRESS"
    assert d["rolloutStateReason"] == f"ECS deployment {d['id']} in progress."
    assert d["runningCount"] == 0 and d["pendingCount"] == 0
    assert d["launchType"] == "EC2"
    digits = d["id"].split("/")[1]
    assert svc["currentServiceDeployment"] == (
        f"arn:aws:ecs:{REGION}:{ACCOUNT}:service-deployment/{c}/{name}/{digits}")

    got = describe_one(server, c, name)
    assert got["serviceArn"] == svc["serviceArn"]
    assert got["status"] == "ACTIVE"
    assert got["desiredCount"] == 2 and got["runningCount"] == 0
    assert got["deploymentConfiguration"] == svc["deploymentConfiguration"]
    assert isinstance(got["events"], list)
    assert [x["id"] for x in got["deployments"]] == [d["id"]]
    assert got["deployments"][0]["status"] == "PRIMARY"
    assert "tags" not in got
    # By ARN too.
    assert describe_one(server, c, svc["serviceArn"])["serviceName"] == name

    cl = aws("ecs", "describe-clusters", "--clusters", c, "--include", "STATISTICS",
             node=server).json["clusters"][0]
    assert cl["activeServicesCount"] == 1
    stats = {s["name"]: s["value"] for s in cl["statistics"]}
    assert stats["activeEC2ServiceCount"] == "1"


def real_target_group(server) -> str:
    """A target group used by a load balancer's listener (ECS refuses others)."""
    lb = h.aws("elbv2", "create-load-balancer", "--name", unique("lb")[:32], node=server).json
    tg = h.aws("elbv2", "create-target-group", "--name", unique("tg")[:32], "--protocol", "HTTP",
               "--port", "80", node=server).json["TargetGroups"][0]["TargetGroupArn"]
    h.aws("elbv2", "create-listener", "--load-balancer-arn", lb["LoadBalancers"][0]["LoadBalancerArn"],
          "--protocol", "HTTP", "--port", str(h.free_port()),
          "--default-actions", f"Type=forward,TargetGroupArn={tg}", node=server)
    return tg


def test_daemon_defaults_and_custom_configuration(server, tmp_path):
    c, family = setup(server, tmp_path)
    d = create(server, c, unique("d"), family, "--scheduling-strategy", "DAEMON", desired=None)
    assert d["schedulingStrategy"] == "DAEMON"
    assert d["deploymentConfiguration"]["maximumPercent"] == 100
    assert d["deploymentConfiguration"]["minimumHealthyPercent"] == 0
    s = create(server, c, unique("s"), family,
               "--deployment-configuration",
               "maximumPercent=150,minimumHealthyPercent=50,"
               "deploymentCircuitBreaker={enable=true,rollback=true}",
               "--placement-strategy", "type=spread,field=instanceId", "type=binpack,field=memory",
               "--placement-constraints", "type=distinctInstance",
               "--health-check-grace-period-seconds", "30",
               "--propagate-tags", "SERVICE", "--enable-execute-command",
               "--load-balancers",
               f"targetGroupArn={real_target_group(server)},"
               "containerName=web,containerPort=8080")
    assert s["deploymentConfiguration"] == {
        "deploymentCircuitBreaker": {"enable": True, "rollback": True},
        "maximumPercent": 150, "minimumHealthyPercent": 50}
    assert s["placementStrategy"] == [{"type": "spread", "field": "instanceId"},
                                      {"type": "binpack", "field": "memory"}]
    assert s["placementConstraints"] == [{"type": "distinctInstance"}]
    assert s["healthCheckGracePeriodSeconds"] == 30
    assert s["propagateTags"] == "SERVICE"
    assert s["enableExecuteCommand"] is True
    assert s["loadBalancers"][0]["containerPort"] == 8080


def test_create_service_validation(server, tmp_path):
    c, family = setup(server, tmp_path)
    n = unique("v")
    tg = f"arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT}:targetgroup/web/0123456789abcdef"
    cases = [
        ((["--task-definition", family],), "InvalidParameterException", "desiredCount"),
        ((["--task-definition", family, "--desired-count", "-1"],), "InvalidParameterException",
         "desiredCount"),
        ((["--task-definition", unique("nope"), "--desired-count", "1"],),
         "InvalidParameterException", "TaskDefinition not found."),
        ((["--desired-count", "1"],), "InvalidParameterException", "taskDefinition"),
        ((["--task-definition", family, "--scheduling-strategy", "DAEMON",
           "--placement-strategy", "type=spread,field=instanceId"],),
         "InvalidParameterException",
         "Placement strategies are not supported with the DAEMON scheduling strategy."),
        ((["--task-definition", family, "--scheduling-strategy", "DAEMON", "--deployment-configuration",
           "maximumPercent=200"],),
         "InvalidParameterException", "does not support values above 100 for maximumPercent"),
        ((["--task-definition", family, "--scheduling-strategy", "DAEMON", "--desired-count", "1"],),
         "InvalidParameterException", "desiredCount"),
        ((["--task-definition", family, "--desired-count", "1", "--deployment-configuration",
           "minimumHealthyPercent=101"],), "InvalidParameterException", "minimumHealthyPercent"),
        ((["--task-definition", family, "--desired-count", "1", "--deployment-configuration",
           "maximumPercent=50"],), "InvalidParameterException", "maximumPercent"),
        ((["--task-definition", family, "--desired-count", "1", "--launch-type", "FARGATE"],),
         "InvalidParameterException", "FARGATE"),
        ((["--task-definition", family, "--desired-count", "1", "--deployment-controller",
           "type=CODE_DEPLOY"],), "InvalidParameterException", "CODE_DEPLOY"),
        ((["--task-definition", family, "--desired-count", "1", "--load-balancers",
           f"targetGroupArn={tg},containerName=ghost,containerPort=8080"],),
         "InvalidParameterException", "The container ghost does not exist in the task definition."),
        ((["--task-definition", family, "--desired-count", "1", "--load-balancers",
           f"targetGroupArn={tg},containerName=web,containerPort=81"],),
         "InvalidParameterException", "The container web did not have a container port 81 defined."),
        ((["--task-definition", family, "--desired-count", "1", "--load-balancers",
           f"targetGroupArn={tg},containerName=web,containerPort=8080"],),
         "InvalidParameterException", f"The target group with targetGroupArn {tg} does not exist."),
        ((["--task-definition", family, "--desired-count", "1", "--service-registries",
           "registryArn=arn:aws:servicediscovery:us-east-1:123456789012:service/srv-a",
           "registryArn=arn:aws:servicediscovery:us-east-1:123456789012:service/srv-b"],),
         "InvalidParameterException", "at most 1"),
        ((["--task-definition", family, "--desired-count", "1", "--health-check-grace-period-seconds",
           "-1"],), "InvalidParameterException", "healthCheckGracePeriodSeconds"),
        ((["--task-definition", family, "--desired-count", "1", "--tags", "key=aws:x,value=y"],),
         "InvalidParameterException", "aws:"),
        ((["--task-definition", family, "--desired-count", "1", "--client-token", "x" * 37],),
         "InvalidParameterException", "clientToken"),
        ((["--task-definition", family, "--desired-count", "1", "--placement-strategy",
           "type=bogus,field=x"],), "InvalidParameterException", None),
        ((["--task-definition", family, "--desired-count", "1", "--placement-constraints",
           "type=memberOf,expression=attribute:stack =="],), "InvalidParameterException", None),
        ((["--task-definition", family, "--desired-count", "1", "--propagate-tags", "TASK"],),
         "InvalidParameterException", "propagateTags"),
    ]
    for (args,), kind, msg in cases:
        res = create_fails(server, c, n, *args)
        expect_cli_error(res, kind, "CreateService", msg)
    res = create_fails(server, c, "bad name!", "--task-definition", family, "--desired-count", "1")
    expect_cli_error(res, "InvalidParameterException", "CreateService", "bad name!")
    res = create_fails(server, unique("nocluster"), n, "--task-definition", family, "--desired-count", "1")
    expect_cli_error(res, "ClusterNotFoundException", "CreateService", "Cluster not found.")
    # A deregistered (INACTIVE) task definition cannot start a service.
    aws("ecs", "deregister-task-definition", "--task-definition", f"{family}:1", node=server)
    res = create_fails(server, c, n, "--task-definition", f"{family}:1", "--desired-count", "1")
    expect_cli_error(res, "InvalidParameterException", "CreateService", "inactive")
    # The CLI checks required circuit-breaker members itself; a raw request reaches us.
    register(server, tmp_path, family)
    r = call(server, "CreateService", {
        "cluster": c, "serviceName": n, "taskDefinition": family, "desiredCount": 1,
        "deploymentConfiguration": {"deploymentCircuitBreaker": {"enable": True}}})
    assert r.status == 400 and r.error_type == "InvalidParameterException", r
    assert "deploymentCircuitBreaker" in r.json["message"]
    # Nothing was created by any of these.
    assert aws("ecs", "list-services", "--cluster", c, node=server).json["serviceArns"] == []


def test_name_clash_and_client_token(server, tmp_path):
    c, family = setup(server, tmp_path)
    n = unique("s")
    first = create(server, c, n, family, "--client-token", "tok-1")
    again = create(server, c, n, family, "--client-token", "tok-1", desired="5")
    assert again["desiredCount"] == 2, "the same clientToken answers with the first service"
    assert again["deployments"][0]["id"] == first["deployments"][0]["id"]
    for extra in ([], ["--client-token", "tok-2"]):
        res = create_fails(server, c, n, "--task-definition", family, "--desired-count", "2", *extra)
        expect_cli_error(res, "InvalidParameterException", "CreateService",
                         "Creation of service was not idempotent.")
    assert aws("ecs", "list-services", "--cluster", c, node=server).json["serviceArns"] == [
        service_arn(c, n)]


def test_list_services_paging_and_filters(server, tmp_path):
    c, family = setup(server, tmp_path)
    names = sorted(unique(f"p{i:02d}") for i in range(12))
    for n in names:
        r = call(server, "CreateService", {"cluster": c, "serviceName": n, "taskDefinition": family,
                                           "desiredCount": 0})
        assert r.status == 200, r
    daemon = unique("zd")
    create(server, c, daemon, family, "--scheduling-strategy", "DAEMON", desired=None)
    # Default page: 10, then the rest.
    first = call(server, "ListServices", {"cluster": c}).json
    assert len(first["serviceArns"]) == 10
    assert "nextToken" in first
    second = call(server, "ListServices", {"cluster": c, "nextToken": first["nextToken"]}).json
    assert "nextToken" not in second
    listed = first["serviceArns"] + second["serviceArns"]
    assert sorted(listed) == sorted([service_arn(c, n) for n in names] + [service_arn(c, daemon)])
    assert len(set(listed)) == len(listed)
    # The CLI follows the tokens itself.
    res = aws("ecs", "list-services", "--cluster", c, "--page-size", "5", node=server).json
    assert sorted(res["serviceArns"]) == sorted(listed)
    res = aws("ecs", "list-services", "--cluster", c, "--scheduling-strategy", "DAEMON", node=server).json
    assert res["serviceArns"] == [service_arn(c, daemon)]
    res = aws("ecs", "list-services", "--cluster", c, "--launch-type", "EXTERNAL", node=server).json
    assert res["serviceArns"] == []
    for bad in (0, 101):
        r = call(server, "ListServices", {"cluster": c, "maxResults": bad})
        assert r.status == 400 and r.error_type == "InvalidParameterException"
    r = call(server, "ListServices", {"cluster": c, "nextToken": "garbage"})
    assert r.status == 400 and r.error_type == "InvalidParameterException"
    res = aws("ecs", "list-services", "--cluster", unique("nocluster"), node=server, expect_rc=None)
    expect_cli_error(res, "ClusterNotFoundException", "ListServices")


def test_describe_services_failures_limits_and_tags(server, tmp_path):
    c, family = setup(server, tmp_path)
    n = unique("s")
    create(server, c, n, family, "--tags", "key=team,value=core", "key=env,value=dev")
    ghost = unique("ghost")
    other = service_arn(unique("elsewhere"), n)
    res = describe(server, c, n, ghost, other, include_tags=True)
    assert [s["serviceName"] for s in res["services"]] == [n]
    assert sorted((t["key"], t["value"]) for t in res["services"][0]["tags"]) == [
        ("env", "dev"), ("team", "core")]
    assert res["failures"] == [{"arn": service_arn(c, ghost), "reason": "MISSING"},
                               {"arn": other, "reason": "MISSING"}]
    res = aws("ecs", "describe-services", "--cluster", c, "--services",
              *[unique("x") for _ in range(11)], node=server, expect_rc=None)
    expect_cli_error(res, "InvalidParameterException", "DescribeServices", "10")
    res = aws("ecs", "describe-services", "--cluster", unique("nocluster"), "--services", n,
              node=server, expect_rc=None)
    expect_cli_error(res, "ClusterNotFoundException", "DescribeServices")
    # The waiter's failure acceptor: a MISSING service fails it at once.
    res = aws("ecs", "wait", "services-stable", "--cluster", c, "--services", ghost, node=server,
              expect_rc=None)
    assert res.rc != 0
    assert "MISSING" in res.err or "failure" in res.err.lower(), res.err


def test_services_stable_waiter(server, tmp_path):
    c, family = setup(server, tmp_path)
    n = unique("s")
    create(server, c, n, family, desired="0")
    # One deployment and runningCount == desiredCount (0): stable on the first poll.
    aws("ecs", "wait", "services-stable", "--cluster", c, "--services", n, node=server, timeout=60)


def test_update_service(server, tmp_path):
    c, family = setup(server, tmp_path)
    n = unique("s")
    first = create(server, c, n, family)
    dep = first["deployments"][0]["id"]

    # desiredCount and other non-deployment members: the same deployment.
    up = aws("ecs", "update-service", "--cluster", c, "--service", n, "--desired-count", "3",
             "--deployment-configuration", "minimumHealthyPercent=50",
             "--placement-strategy", "type=spread,field=instanceId",
             "--health-check-grace-period-seconds", "10", node=server).json["service"]
    assert up["desiredCount"] == 3
    assert [d["id"] for d in up["deployments"]] == [dep]
    assert up["deploymentConfiguration"]["minimumHealthyPercent"] == 50
    assert up["deploymentConfiguration"]["maximumPercent"] == 200, "unmentioned members are kept"
    assert up["placementStrategy"] == [{"type": "spread", "field": "instanceId"}]
    assert up["healthCheckGracePeriodSeconds"] == 10
    assert describe_one(server, c, n)["desiredCount"] == 3

    # An empty list clears the placement strategy (the CLI sends [] for '[]').
    up = aws("ecs", "update-service", "--cluster", c, "--service", n, "--placement-strategy", "[]",
             node=server).json["service"]
    assert up["placementStrategy"] == []

    # A new task definition revision: a new PRIMARY; the old one becomes ACTIVE.
    register(server, tmp_path, family)
    up = aws("ecs", "update-service", "--cluster", c, "--service", service_arn(c, n),
             "--task-definition", family, node=server).json["service"]
    assert up["taskDefinition"] == td_arn(family, 2)
    by_status = {d["status"]: d for d in up["deployments"]}
    assert set(by_status) == {"PRIMARY", "ACTIVE"}, up["deployments"]
    assert by_status["ACTIVE"]["id"] == dep
    assert by_status["PRIMARY"]["id"] != dep
    assert by_status["PRIMARY"]["taskDefinition"] == td_arn(family, 2)
    assert by_status["PRIMARY"]["rolloutState"] == "IN_PROGRESS"

    # forceNewDeployment starts one with the same task definition.
    up2 = aws("ecs", "update-service", "--cluster", c, "--service", n, "--force-new-deployment",
              node=server).json["service"]
    primary = [d for d in up2["deployments"] if d["status"] == "PRIMARY"]
    assert len(primary) == 1
    assert primary[0]["id"] != by_status["PRIMARY"]["id"]
    assert primary[0]["taskDefinition"] == td_arn(family, 2)

    # Errors.
    res = aws("ecs", "update-service", "--cluster", c, "--service", unique("ghost"),
              "--desired-count", "1", node=server, expect_rc=None)
    expect_cli_error(res, "ServiceNotFoundException", "UpdateService", "Service not found.")
    res = aws("ecs", "update-service", "--cluster", c, "--service", n, "--desired-count", "-1",
              node=server, expect_rc=None)
    expect_cli_error(res, "InvalidParameterException", "UpdateService", "desiredCount")
    res = aws("ecs", "update-service", "--cluster", c, "--service", n, "--task-definition",
              unique("nope"), node=server, expect_rc=None)
    expect_cli_error(res, "InvalidParameterException", "UpdateService", "TaskDefinition not found.")
    d = unique("d")
    create(server, c, d, family, "--scheduling-strategy", "DAEMON", desired=None)
    res = aws("ecs", "update-service", "--cluster", c, "--service", d, "--desired-count", "2",
              node=server, expect_rc=None)
    expect_cli_error(res, "InvalidParameterException", "UpdateService", "DAEMON")
    res = aws("ecs", "update-service", "--cluster", c, "--service", d, "--placement-strategy",
              "type=random", node=server, expect_rc=None)
    expect_cli_error(res, "InvalidParameterException", "UpdateService",
                     "Placement strategies are not supported with the DAEMON scheduling strategy.")


def test_delete_service(server, tmp_path):
    c, family = setup(server, tmp_path)
    n = unique("s")
    create(server, c, n, family)
    res = aws("ecs", "delete-service", "--cluster", c, "--service", n, node=server, expect_rc=None)
    expect_cli_error(res, "InvalidParameterException", "DeleteService",
                     "The service cannot be stopped while it is scaled above 0.")
    assert describe_one(server, c, n)["status"] == "ACTIVE"

    gone = aws("ecs", "delete-service", "--cluster", c, "--service", n, "--force",
               node=server).json["service"]
    assert gone["status"] == "DRAINING"
    assert gone["desiredCount"] == 0
    assert aws("ecs", "list-services", "--cluster", c, node=server).json["serviceArns"] == []
    assert describe_one(server, c, n)["status"] in ("DRAINING", "INACTIVE")
    cl = aws("ecs", "describe-clusters", "--clusters", c, node=server).json["clusters"][0]
    assert cl["activeServicesCount"] == 0

    res = aws("ecs", "update-service", "--cluster", c, "--service", n, "--desired-count", "1",
              node=server, expect_rc=None)
    expect_cli_error(res, "ServiceNotActiveException", "UpdateService", "Service was not ACTIVE.")
    res = aws("ecs", "delete-service", "--cluster", c, "--service", unique("ghost"), node=server,
              expect_rc=None)
    expect_cli_error(res, "ServiceNotFoundException", "DeleteService", "Service not found.")

    # Scaled to 0 first, no force is needed; a DAEMON service never needs it.
    z = unique("z")
    create(server, c, z, family)
    aws("ecs", "update-service", "--cluster", c, "--service", z, "--desired-count", "0", node=server)
    assert aws("ecs", "delete-service", "--cluster", c, "--service", z,
               node=server).json["service"]["status"] == "DRAINING"
    d = unique("d")
    create(server, c, d, family, "--scheduling-strategy", "DAEMON", desired=None)
    assert aws("ecs", "delete-service", "--cluster", c, "--service", service_arn(c, d),
               node=server).json["service"]["status"] == "DRAINING"


def test_draining_service_name_clash(server, tmp_path):
    c, family = setup(server, tmp_path)
    n = unique("s")
    create(server, c, n, family, desired="0")
    aws("ecs", "delete-service", "--cluster", c, "--service", n, node=server)
    status = describe_one(server, c, n)["status"]
    if status == "DRAINING":
        # Deleting it again answers with it; its name is still taken.
        again = aws("ecs", "delete-service", "--cluster", c, "--service", n,
                    node=server).json["service"]
        assert again["status"] in ("DRAINING", "INACTIVE")
        res = create_fails(server, c, n, "--task-definition", family, "--desired-count", "1")
        if describe_one(server, c, n)["status"] == "DRAINING":
            expect_cli_error(res, "InvalidParameterException", "CreateService",
                             "Creation of service was not idempotent.")


def test_delete_cluster_with_services(server, tmp_path):
    c, family = setup(server, tmp_path)
    n = unique("s")
    create(server, c, n, family, desired="0")
    res = aws("ecs", "delete-cluster", "--cluster", c, node=server, expect_rc=None)
    expect_cli_error(res, "ClusterContainsServicesException", "DeleteCluster",
                     "The Cluster cannot be deleted while Services are active.")
    aws("ecs", "delete-service", "--cluster", c, "--service", n, node=server)
    # DRAINING still counts as active for DeleteCluster.
    if describe_one(server, c, n)["status"] == "DRAINING":
        res = aws("ecs", "delete-cluster", "--cluster", c, node=server, expect_rc=None)
        expect_cli_error(res, "ClusterContainsServicesException", "DeleteCluster")


def test_service_deployments(server, tmp_path):
    c, family = setup(server, tmp_path)
    n = unique("s")
    first = create(server, c, n, family)
    register(server, tmp_path, family)
    aws("ecs", "update-service", "--cluster", c, "--service", n, "--task-definition", family,
        node=server)
    res = aws("ecs", "list-service-deployments", "--cluster", c, "--service", n, node=server).json
    deps = res["serviceDeployments"]
    assert len(deps) == 2
    newest, oldest = deps
    prefix = f"arn:aws:ecs:{REGION}:{ACCOUNT}:service-deployment/{c}/{n}/"
    assert oldest["serviceDeploymentArn"] == prefix + first["deployments"][0]["id"].split("/")[1]
    assert newest["serviceDeploymentArn"].startswith(prefix)
    assert newest["createdAt"] >= oldest["createdAt"]
    for d in deps:
        assert d["serviceArn"] == service_arn(c, n)
        assert d["clusterArn"] == cluster_arn(c)
        assert d["targetServiceRevisionArn"].startswith(
            f"arn:aws:ecs:{REGION}:{ACCOUNT}:service-revision/{c}/{n}/")
    assert newest["status"] == "IN_PROGRESS"
    assert oldest["status"] != "IN_PROGRESS", "the replaced deployment no longer runs"

    filtered = aws("ecs", "list-service-deployments", "--cluster", c, "--service", n,
                   "--status", "IN_PROGRESS", node=server).json["serviceDeployments"]
    assert [d["serviceDeploymentArn"] for d in filtered] == [newest["serviceDeploymentArn"]]
    page = call(server, "ListServiceDeployments", {"cluster": c, "service": n, "maxResults": 1}).json
    assert [d["serviceDeploymentArn"] for d in page["serviceDeployments"]] == [
        newest["serviceDeploymentArn"]]
    rest = call(server, "ListServiceDeployments", {"cluster": c, "service": n, "maxResults": 1,
                                                   "nextToken": page["nextToken"]}).json
    assert [d["serviceDeploymentArn"] for d in rest["serviceDeployments"]] == [
        oldest["serviceDeploymentArn"]]
    assert "nextToken" not in rest
    later = call(server, "ListServiceDeployments",
                 {"cluster": c, "service": n, "createdAt": {"after": newest["createdAt"] + 10}}).json
    assert later["serviceDeployments"] == []

    missing = prefix + "1234567890123456789"
    res = aws("ecs", "describe-service-deployments", "--service-deployment-arns",
              newest["serviceDeploymentArn"], missing, node=server).json
    assert res["failures"] == [{"arn": missing, "reason": "MISSING"}]
    [sd] = res["serviceDeployments"]
    assert sd["serviceDeploymentArn"] == newest["serviceDeploymentArn"]
    assert sd["status"] == "IN_PROGRESS"
    assert sd["targetServiceRevision"]["arn"] == newest["targetServiceRevisionArn"]
    assert sd["targetServiceRevision"]["runningTaskCount"] == 0
    assert sd["deploymentConfiguration"]["maximumPercent"] == 200
    assert sd["deploymentCircuitBreaker"]["status"] == "DISABLED"
    assert [s["arn"] for s in sd["sourceServiceRevisions"]] == [
        oldest["targetServiceRevisionArn"]]

    res = aws("ecs", "list-service-deployments", "--cluster", c, "--service", unique("ghost"),
              node=server, expect_rc=None)
    expect_cli_error(res, "ServiceNotFoundException", "ListServiceDeployments")
    r = call(server, "DescribeServiceDeployments", {"serviceDeploymentArns": [missing] * 21})
    assert r.status == 400 and r.error_type == "InvalidParameterException"


def test_service_tags(server, tmp_path):
    c, family = setup(server, tmp_path)
    n = unique("s")
    svc = create(server, c, n, family, "--tags", "key=team,value=core", desired="0")
    assert svc["tags"] == [{"key": "team", "value": "core"}]
    arn = svc["serviceArn"]

    def tags():
        return sorted((t["key"], t["value"]) for t in aws(
            "ecs", "list-tags-for-resource", "--resource-arn", arn, node=server).json["tags"])

    assert tags() == [("team", "core")]
    aws("ecs", "tag-resource", "--resource-arn", arn, "--tags", "key=env,value=dev", node=server)
    assert tags() == [("env", "dev"), ("team", "core")]
    aws("ecs", "untag-resource", "--resource-arn", arn, "--tag-keys", "team", node=server)
    assert tags() == [("env", "dev")]
    ghost = service_arn(c, unique("ghost"))
    res = aws("ecs", "tag-resource", "--resource-arn", ghost, "--tags", "key=a,value=b",
              node=server, expect_rc=None)
    expect_cli_error(res, "ResourceNotFoundException", "TagResource")
