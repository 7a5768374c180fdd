"""The ELBv2 (Application Load Balancer) API through the real AWS CLI and boto3, on the
same endpoint as ECS (reference §10, §11.10): the Query protocol in, XML out; the
shapes and defaults of load balancers, target groups, listeners, rules and targets;
every error a user meets, with ELBv2's codes as the CLI prints them, and nothing
changed by a refused request.

Listener ports come from free_port(): berth serves every load balancer on the same
addresses, so a port has one listener server-wide (and the load-balancer runtime may
bind it)."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import re

import pytest

from berth_harness import (ACCESS_KEY, ACCOUNT, REGION, SECRET_KEY, api_connection, aws, expect_cli_error,
                           free_port, unique, wait_until)

ARN_PREFIX = f"arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT}"
HEX16 = r"[0-9a-f]{16}"
XMLNS = "http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/"


def elb(node, *args: str, expect_rc: int | None = 0, **kw):
    return aws("elbv2", *args, node=node, expect_rc=expect_rc, **kw)


def elb_fails(node, op: str, code: str | tuple[str, ...], *args: str, contains=None):
    return expect_cli_error(elb(node, *args, expect_rc=None), code, op, contains)


def name(prefix: str) -> str:
    return unique(prefix)  # prefix-8hex: valid for load balancers and target groups


def create_lb(node, lb_name: str | None = None, *extra: str) -> dict:
    lb_name = lb_name or name("lb")
    return elb(node, "create-load-balancer", "--name", lb_name, *extra).json["LoadBalancers"][0]


def create_tg(node, tg_name: str | None = None, *extra: str, port: str = "80") -> dict:
    tg_name = tg_name or name("tg")
    args = ["create-target-group", "--name", tg_name, "--protocol", "HTTP", "--port", port, *extra]
    return elb(node, *args).json["TargetGroups"][0]


def create_listener(node, lb_arn: str, tg_arn: str, port: int | None = None) -> dict:
    port = port or free_port()
    return elb(node, "create-listener", "--load-balancer-arn", lb_arn, "--protocol", "HTTP",
               "--port", str(port), "--default-actions",
               f"Type=forward,TargetGroupArn={tg_arn}").json["Listeners"][0]


def forward(tg_arn: str) -> str:
    return f"Type=forward,TargetGroupArn={tg_arn}"


def describe_tgs(node, *names: str) -> list[dict]:
    return elb(node, "describe-target-groups", "--names", *names).json["TargetGroups"]


def rules_of(node, listener_arn: str) -> list[dict]:
    return elb(node, "describe-rules", "--listener-arn", listener_arn).json["Rules"]


def expected_forward(tg_arn: str) -> dict:
    return {"Type": "forward", "TargetGroupArn": tg_arn,
            "ForwardConfig": {"TargetGroups": [{"TargetGroupArn": tg_arn, "Weight": 1}],
                              "TargetGroupStickinessConfig": {"Enabled": False}}}


# ---------------------------------------------------------------------------- the issue's session


def test_issue_session(server):
    lb_name, tg_name, tg2_name = name("stage01"), name("auth"), name("random")
    lb = elb(server, "create-load-balancer", "--name", lb_name, "--subnets", "subnet-a",
             "subnet-b").json["LoadBalancers"][0]
    tg = elb(server, "create-target-group", "--name", tg_name, "--protocol", "HTTP", "--port", "80",
             "--vpc-id", "vpc-local", "--health-check-path", "/", "--health-check-interval-seconds", "5",
             "--healthy-threshold-count", "2", "--unhealthy-threshold-count", "2").json["TargetGroups"][0]
    assert tg["HealthCheckIntervalSeconds"] == 5
    assert tg["HealthCheckTimeoutSeconds"] < 5
    tg2 = create_tg(server, tg2_name)
    port = free_port()
    listener = elb(server, "create-listener", "--load-balancer-arn", lb["LoadBalancerArn"],
                   "--protocol", "HTTP", "--port", str(port), "--default-actions",
                   forward(tg["TargetGroupArn"])).json["Listeners"][0]
    rule = elb(server, "create-rule", "--listener-arn", listener["ListenerArn"], "--priority", "10",
               "--conditions", "Field=path-pattern,Values=/random/*",
               "--actions", forward(tg2["TargetGroupArn"])).json["Rules"][0]
    health = elb(server, "describe-target-health", "--target-group-arn", tg["TargetGroupArn"]).json
    assert health == {"TargetHealthDescriptions": []}

    assert listener["Port"] == port and listener["Protocol"] == "HTTP"
    assert listener["LoadBalancerArn"] == lb["LoadBalancerArn"]
    assert listener["DefaultActions"] == [expected_forward(tg["TargetGroupArn"])]
    assert re.fullmatch(rf"{ARN_PREFIX}:listener/app/{lb_name}/{HEX16}/{HEX16}", listener["ListenerArn"])
    assert rule["Priority"] == "10" and rule["IsDefault"] is False
    assert rule["Conditions"] == [{"Field": "path-pattern", "Values": ["/random/*"],
                                   "PathPatternConfig": {"Values": ["/random/*"]}}]
    assert rule["Actions"] == [expected_forward(tg2["TargetGroupArn"])]
    assert re.fullmatch(rf"{ARN_PREFIX}:listener-rule/app/{lb_name}/{HEX16}/{HEX16}/{HEX16}", rule["RuleArn"])

    rules = rules_of(server, listener["ListenerArn"])
    assert [r["Priority"] for r in rules] == ["10", "default"]
    assert rules[1]["IsDefault"] is True and rules[1]["Conditions"] == []
    assert rules[1]["Actions"] == listener["DefaultActions"]
    # Both target groups are now used by the load balancer.
    for t in describe_tgs(server, tg_name, tg2_name):
        assert t["LoadBalancerArns"] == [lb["LoadBalancerArn"]]


# ---------------------------------------------------------------------------- load balancers


def test_load_balancer_shape_and_describe(server):
    lb_name = name("shape")
    lb = create_lb(server, lb_name, "--subnets", "subnet-a", "subnet-b", "--security-groups", "sg-1",
                   "--tags", "Key=team,Value=web")
    assert re.fullmatch(rf"{ARN_PREFIX}:loadbalancer/app/{lb_name}/({HEX16})", lb["LoadBalancerArn"])
    lb_id = lb["LoadBalancerArn"].rsplit("/", 1)[1]
    assert lb["DNSName"] == f"{lb_name}-{lb_id}.{REGION}.elb.berth.local"
    assert lb["LoadBalancerName"] == lb_name
    assert lb["Scheme"] == "internet-facing"
    assert lb["State"] == {"Code": "active"}
    assert lb["Type"] == "application"
    assert lb["IpAddressType"] == "ipv4"
    assert lb["SecurityGroups"] == ["sg-1"]
    assert [z["SubnetId"] for z in lb["AvailabilityZones"]] == ["subnet-a", "subnet-b"]
    assert all(z["ZoneName"] for z in lb["AvailabilityZones"])
    created = dt.datetime.fromisoformat(lb["CreatedTime"].replace("Z", "+00:00"))
    assert abs((dt.datetime.now(dt.timezone.utc) - created).total_seconds()) < 60

    by_name = elb(server, "describe-load-balancers", "--names", lb_name).json["LoadBalancers"]
    by_arn = elb(server, "describe-load-balancers", "--load-balancer-arns",
                 lb["LoadBalancerArn"]).json["LoadBalancers"]
    assert by_name == by_arn == [lb]
    everything = elb(server, "describe-load-balancers").json["LoadBalancers"]
    assert lb in everything
    tags = elb(server, "describe-tags", "--resource-arns", lb["LoadBalancerArn"]).json
    assert tags["TagDescriptions"] == [{"ResourceArn": lb["LoadBalancerArn"],
                                        "Tags": [{"Key": "team", "Value": "web"}]}]

    tg = create_tg(server)
    elb(server, "add-tags", "--resource-arns", lb["LoadBalancerArn"], tg["TargetGroupArn"],
        "--tags", "Key=env,Value=stage", "Key=team,Value=api")
    elb(server, "remove-tags", "--resource-arns", lb["LoadBalancerArn"], "--tag-keys", "env")
    tags = elb(server, "describe-tags", "--resource-arns", lb["LoadBalancerArn"],
               tg["TargetGroupArn"]).json["TagDescriptions"]
    assert [sorted((t["Key"], t["Value"]) for t in d["Tags"]) for d in tags] == [
        [("team", "api")], [("env", "stage"), ("team", "api")]]
    elb_fails(server, "AddTags", "LoadBalancerNotFound", "add-tags", "--resource-arns",
              f"{ARN_PREFIX}:loadbalancer/app/ghost/0123456789abcdef", "--tags", "Key=a,Value=b")

    internal = create_lb(server, None, "--scheme", "internal")
    assert internal["Scheme"] == "internal"


def test_load_balancer_refusals(server):
    taken = name("dup")
    create_lb(server, taken)
    elb_fails(server, "CreateLoadBalancer", "DuplicateLoadBalancerName",
              "create-load-balancer", "--name", taken, "--scheme", "internal")
    for bad, needle in [("internal-x", "internal-"), ("-lead", "-lead"), ("a_b", "a_b"),
                        ("x" * 33, "32")]:
        elb_fails(server, "CreateLoadBalancer", "ValidationError",
                  "create-load-balancer", f"--name={bad}", contains=needle)
    nlb = name("nlb")
    elb_fails(server, "CreateLoadBalancer", ("ValidationError", "UnsupportedProtocol"),
              "create-load-balancer", "--name", nlb, "--type", "network", contains="network")
    for n in ("internal-x", "-lead", nlb):
        elb_fails(server, "DescribeLoadBalancers", "LoadBalancerNotFound",
                  "describe-load-balancers", f"--names={n}", contains="load balancers not found")
    ghost = f"{ARN_PREFIX}:loadbalancer/app/ghost/0123456789abcdef"
    elb_fails(server, "DescribeLoadBalancers", "LoadBalancerNotFound",
              "describe-load-balancers", "--load-balancer-arns", ghost)


def pages(node, *args: str, key: str) -> list[list[str]]:
    """Follows NextMarker by hand: with its own --page-size the CLI does not paginate."""
    out, marker = [], None
    for _ in range(10):
        extra = ["--marker", marker] if marker else []
        res = elb(node, *args, *extra).json
        items = next(v for v in res.values() if isinstance(v, list))
        out.append([x[key] for x in items])
        marker = res.get("NextMarker")
        if not marker:
            return out
    raise AssertionError("paging did not end")


def test_describe_load_balancers_paging(server):
    names = sorted(name("page") for _ in range(3))
    for n in names:
        create_lb(server, n)
    assert pages(server, "describe-load-balancers", "--names", *names, "--page-size", "2",
                 key="LoadBalancerName") == [names[:2], names[2:]]
    assert pages(server, "describe-load-balancers", "--names", *names, "--page-size", "1",
                 key="LoadBalancerName") == [[n] for n in names]
    # Without --page-size the CLI follows NextMarker itself (one page of 400 here).
    merged = elb(server, "describe-load-balancers", "--names", *names).json
    assert [lb["LoadBalancerName"] for lb in merged["LoadBalancers"]] == names
    elb_fails(server, "DescribeLoadBalancers", "ValidationError",
              "describe-load-balancers", "--page-size", "401", contains="401")
    elb_fails(server, "DescribeLoadBalancers", "ValidationError",
              "describe-load-balancers", "--marker", "garbage", contains="garbage")


# ---------------------------------------------------------------------------- load balancer attributes

LB_DEFAULTS = [
    ("idle_timeout.timeout_seconds", "60"),
    ("deletion_protection.enabled", "false"),
    ("routing.http2.enabled", "true"),
    ("routing.http.drop_invalid_header_fields.enabled", "false"),
    ("routing.http.x_amzn_tls_version_and_cipher_suite.enabled", "false"),
    ("routing.http.xff_client_port.enabled", "false"),
    ("routing.http.xff_header_processing.mode", "append"),
    ("routing.http.preserve_host_header.enabled", "false"),
    ("routing.http.desync_mitigation_mode", "defensive"),
    ("waf.fail_open.enabled", "false"),
    ("access_logs.s3.enabled", "false"),
    ("access_logs.s3.bucket", ""),
    ("access_logs.s3.prefix", ""),
    ("client_keep_alive.seconds", "3600"),
    ("connection_logs.s3.enabled", "false"),
]


def lb_attrs(node, lb_arn: str) -> list[dict]:
    return elb(node, "describe-load-balancer-attributes", "--load-balancer-arn",
               lb_arn).json["Attributes"]


def test_load_balancer_attribute_defaults(server):
    lb = create_lb(server)
    attrs = lb_attrs(server, lb["LoadBalancerArn"])
    assert attrs == [{"Key": k, "Value": v} for k, v in LB_DEFAULTS]
    ghost = f"{ARN_PREFIX}:loadbalancer/app/ghost/0123456789abcdef"
    elb_fails(server, "DescribeLoadBalancerAttributes", "LoadBalancerNotFound",
              "describe-load-balancer-attributes", "--load-balancer-arn", ghost)


def test_modify_load_balancer_attributes_round_trip(server):
    lb = create_lb(server)
    arn = lb["LoadBalancerArn"]
    out = elb(server, "modify-load-balancer-attributes", "--load-balancer-arn", arn, "--attributes",
              "Key=idle_timeout.timeout_seconds,Value=120", "Key=routing.http2.enabled,Value=false",
              "Key=routing.http.xff_header_processing.mode,Value=preserve",
              "Key=access_logs.s3.bucket,Value=logs").json["Attributes"]
    expected = dict(LB_DEFAULTS) | {"idle_timeout.timeout_seconds": "120",
                                    "routing.http2.enabled": "false",
                                    "routing.http.xff_header_processing.mode": "preserve",
                                    "access_logs.s3.bucket": "logs"}
    # Every attribute comes back, not only those changed (as ALB answers).
    assert out == [{"Key": k, "Value": expected[k]} for k, _ in LB_DEFAULTS]
    assert lb_attrs(server, arn) == out
    # A second change merges with the first.
    elb(server, "modify-load-balancer-attributes", "--load-balancer-arn", arn, "--attributes",
        "Key=client_keep_alive.seconds,Value=60")
    after = {a["Key"]: a["Value"] for a in lb_attrs(server, arn)}
    assert after == expected | {"client_keep_alive.seconds": "60"}
    # Another load balancer keeps its defaults.
    assert lb_attrs(server, create_lb(server)["LoadBalancerArn"]) == \
        [{"Key": k, "Value": v} for k, v in LB_DEFAULTS]


def test_modify_load_balancer_attributes_refusals_change_nothing(server):
    lb = create_lb(server)
    arn = lb["LoadBalancerArn"]
    elb(server, "modify-load-balancer-attributes", "--load-balancer-arn", arn, "--attributes",
        "Key=idle_timeout.timeout_seconds,Value=30")
    before = lb_attrs(server, arn)
    cases = [
        ("no.such.key", "1", "ValidationError", ["no.such.key", "not recognized"]),
        ("idle_timeout.timeout_seconds", "ten", "ValidationError", ["idle_timeout.timeout_seconds", "'ten'"]),
        ("idle_timeout.timeout_seconds", "0", "ValidationError", ["idle_timeout.timeout_seconds", "'0'"]),
        ("idle_timeout.timeout_seconds", "4001", "ValidationError", ["idle_timeout.timeout_seconds", "'4001'"]),
        ("client_keep_alive.seconds", "59", "ValidationError", ["client_keep_alive.seconds", "'59'"]),
        ("client_keep_alive.seconds", "604801", "ValidationError", ["client_keep_alive.seconds", "'604801'"]),
        ("deletion_protection.enabled", "yes", "ValidationError", ["deletion_protection.enabled", "'yes'"]),
        ("routing.http2.enabled", "TRUE", "ValidationError", ["routing.http2.enabled", "'TRUE'"]),
        ("routing.http.xff_header_processing.mode", "drop", "ValidationError",
         ["routing.http.xff_header_processing.mode", "'drop'"]),
        ("routing.http.desync_mitigation_mode", "lax", "ValidationError",
         ["routing.http.desync_mitigation_mode", "'lax'"]),
        ("access_logs.s3.enabled", "true", "InvalidConfigurationRequest", ["access_logs.s3.enabled", "S3"]),
    ]
    for key, value, code, needles in cases:
        # A valid change in the same request is not applied either.
        elb_fails(server, "ModifyLoadBalancerAttributes", code, "modify-load-balancer-attributes",
                  "--load-balancer-arn", arn, "--attributes",
                  "Key=deletion_protection.enabled,Value=true", f"Key={key},Value={value}",
                  contains=needles)
        assert lb_attrs(server, arn) == before, (key, value)
    ghost = f"{ARN_PREFIX}:loadbalancer/app/ghost/0123456789abcdef"
    elb_fails(server, "ModifyLoadBalancerAttributes", "LoadBalancerNotFound",
              "modify-load-balancer-attributes", "--load-balancer-arn", ghost, "--attributes",
              "Key=idle_timeout.timeout_seconds,Value=5")
    assert lb_attrs(server, arn) == before


def test_deletion_protection_blocks_delete_until_turned_off(server):
    lb = create_lb(server)
    arn = lb["LoadBalancerArn"]
    tg = create_tg(server)
    listener = create_listener(server, arn, tg["TargetGroupArn"])
    elb(server, "modify-load-balancer-attributes", "--load-balancer-arn", arn, "--attributes",
        "Key=deletion_protection.enabled,Value=true")
    elb_fails(server, "DeleteLoadBalancer", "OperationNotPermitted", "delete-load-balancer",
              "--load-balancer-arn", arn,
              contains=f"Load balancer '{arn}' cannot be deleted because deletion protection is enabled")
    # Nothing went: the load balancer, its listener, its attributes.
    assert elb(server, "describe-load-balancers", "--load-balancer-arns",
               arn).json["LoadBalancers"][0]["LoadBalancerArn"] == arn
    assert [x["ListenerArn"] for x in elb(server, "describe-listeners", "--load-balancer-arn",
                                          arn).json["Listeners"]] == [listener["ListenerArn"]]
    assert {a["Key"]: a["Value"] for a in lb_attrs(server, arn)}["deletion_protection.enabled"] == "true"
    elb(server, "modify-load-balancer-attributes", "--load-balancer-arn", arn, "--attributes",
        "Key=deletion_protection.enabled,Value=false")
    elb(server, "delete-load-balancer", "--load-balancer-arn", arn)
    elb_fails(server, "DescribeLoadBalancers", "LoadBalancerNotFound",
              "describe-load-balancers", "--load-balancer-arns", arn)


# ---------------------------------------------------------------------------- target groups


def test_target_group_defaults_and_attributes(server):
    tg_name = name("defaults")
    tg = create_tg(server, tg_name, "--vpc-id", "vpc-local")
    assert re.fullmatch(rf"{ARN_PREFIX}:targetgroup/{tg_name}/{HEX16}", tg["TargetGroupArn"])
    expected = {
        "TargetGroupArn": tg["TargetGroupArn"], "TargetGroupName": tg_name, "Protocol": "HTTP",
        "Port": 80, "VpcId": "vpc-local", "HealthCheckProtocol": "HTTP",
        "HealthCheckPort": "traffic-port", "HealthCheckEnabled": True,
        "HealthCheckIntervalSeconds": 30, "HealthCheckTimeoutSeconds": 5,
        "HealthyThresholdCount": 5, "UnhealthyThresholdCount": 2, "HealthCheckPath": "/",
        "Matcher": {"HttpCode": "200"}, "LoadBalancerArns": [], "TargetType": "instance",
        "ProtocolVersion": "HTTP1", "IpAddressType": "ipv4",
    }
    assert tg == expected
    assert describe_tgs(server, tg_name) == [expected]

    attrs = {a["Key"]: a["Value"] for a in elb(
        server, "describe-target-group-attributes", "--target-group-arn",
        tg["TargetGroupArn"]).json["Attributes"]}
    for k, v in {"deregistration_delay.timeout_seconds": "300", "stickiness.enabled": "false",
                 "stickiness.type": "lb_cookie", "stickiness.lb_cookie.duration_seconds": "86400",
                 "load_balancing.algorithm.type": "round_robin", "slow_start.duration_seconds": "0",
                 "load_balancing.cross_zone.enabled": "use_load_balancer_configuration"}.items():
        assert attrs[k] == v, (k, attrs)

    out = elb(server, "modify-target-group-attributes", "--target-group-arn", tg["TargetGroupArn"],
              "--attributes", "Key=deregistration_delay.timeout_seconds,Value=30",
              "Key=load_balancing.algorithm.type,Value=least_outstanding_requests").json
    changed = {a["Key"]: a["Value"] for a in out["Attributes"]}
    assert changed["deregistration_delay.timeout_seconds"] == "30"
    again = {a["Key"]: a["Value"] for a in elb(
        server, "describe-target-group-attributes", "--target-group-arn",
        tg["TargetGroupArn"]).json["Attributes"]}
    assert again == changed
    assert again["load_balancing.algorithm.type"] == "least_outstanding_requests"
    assert again["stickiness.type"] == "lb_cookie"

    for kv, needle in [("Key=deregistration_delay.timeout_seconds,Value=3601", "3601"),
                       ("Key=load_balancing.algorithm.type,Value=weighted_random", "weighted_random"),
                       ("Key=slow_start.duration_seconds,Value=10", "10"),
                       ("Key=no.such.key,Value=1", "no.such.key")]:
        elb_fails(server, "ModifyTargetGroupAttributes", "ValidationError",
                  "modify-target-group-attributes", "--target-group-arn", tg["TargetGroupArn"],
                  "--attributes", kv, contains=needle)
    unchanged = {a["Key"]: a["Value"] for a in elb(
        server, "describe-target-group-attributes", "--target-group-arn",
        tg["TargetGroupArn"]).json["Attributes"]}
    assert unchanged == changed


def test_target_group_modify(server):
    tg = create_tg(server, None, "--health-check-path", "/health", "--matcher", "HttpCode=200-299")
    assert tg["Matcher"] == {"HttpCode": "200-299"} and tg["HealthCheckPath"] == "/health"
    out = elb(server, "modify-target-group", "--target-group-arn", tg["TargetGroupArn"],
              "--health-check-interval-seconds", "10", "--health-check-timeout-seconds", "3",
              "--health-check-port", "8081", "--matcher", '{"HttpCode": "200,204"}').json["TargetGroups"][0]
    assert (out["HealthCheckIntervalSeconds"], out["HealthCheckTimeoutSeconds"]) == (10, 3)
    assert out["HealthCheckPort"] == "8081" and out["Matcher"] == {"HttpCode": "200,204"}
    assert out["HealthCheckPath"] == "/health"
    elb_fails(server, "ModifyTargetGroup", "ValidationError",
              "modify-target-group", "--target-group-arn", tg["TargetGroupArn"],
              "--health-check-timeout-seconds", "20", contains="must be smaller than the interval")
    assert describe_tgs(server, tg["TargetGroupName"])[0] == out


def test_target_group_refusals(server):
    taken = name("taken")
    create_tg(server, taken)
    elb_fails(server, "CreateTargetGroup", "DuplicateTargetGroupName",
              "create-target-group", "--name", taken, "--protocol", "HTTP", "--port", "81")
    cases = [
        (["--health-check-interval-seconds", "301"], "ValidationError", "'301'"),
        (["--health-check-timeout-seconds", "121"], "ValidationError", "'121'"),
        (["--health-check-interval-seconds", "10", "--health-check-timeout-seconds", "10"],
         "ValidationError", "Health check timeout '10' must be smaller than the interval '10'"),
        (["--healthy-threshold-count", "11"], "ValidationError", "'11'"),
        (["--unhealthy-threshold-count", "11"], "ValidationError", "'11'"),
        (["--health-check-path", "health"], "ValidationError", "'health'"),
        (["--matcher", "HttpCode=600"], "ValidationError", "'600'"),
        (["--target-type", "lambda"], "ValidationError", "lambda"),
    ]
    for extra, code, needle in cases:
        n = name("bad")
        elb_fails(server, "CreateTargetGroup", code, "create-target-group", "--name", n,
                  "--protocol", "HTTP", "--port", "80", *extra, contains=needle)
        elb_fails(server, "DescribeTargetGroups", "TargetGroupNotFound",
                  "describe-target-groups", "--names", n, contains="target groups not found")
    n = name("https")
    elb_fails(server, "CreateTargetGroup", "UnsupportedProtocol", "create-target-group", "--name", n,
              "--protocol", "HTTPS", "--port", "443", contains="HTTPS")
    elb_fails(server, "CreateTargetGroup", ("UnsupportedProtocol", "ValidationError"),
              "create-target-group", "--name", n, "--protocol", "TCP", "--port", "80", contains="TCP")


def test_describe_target_groups_paging_and_filters(server):
    names = sorted(name("tgpage") for _ in range(3))
    arns = [create_tg(server, n)["TargetGroupArn"] for n in names]
    assert pages(server, "describe-target-groups", "--names", *names, "--page-size", "1",
                 key="TargetGroupName") == [[n] for n in names]
    by_arn = elb(server, "describe-target-groups", "--target-group-arns", arns[1]).json
    assert [t["TargetGroupName"] for t in by_arn["TargetGroups"]] == [names[1]]
    elb_fails(server, "DescribeTargetGroups", "TargetGroupNotFound", "describe-target-groups",
              "--target-group-arns", arns[0], f"{ARN_PREFIX}:targetgroup/ghost/0123456789abcdef")
    lb = create_lb(server)
    create_listener(server, lb["LoadBalancerArn"], arns[2])
    of_lb = elb(server, "describe-target-groups", "--load-balancer-arn", lb["LoadBalancerArn"]).json
    assert [t["TargetGroupArn"] for t in of_lb["TargetGroups"]] == [arns[2]]


# ---------------------------------------------------------------------------- listeners


def test_listener_refusals(server):
    lb, other_lb = create_lb(server), create_lb(server)
    tg, other_tg = create_tg(server), create_tg(server)
    port = free_port()
    listener = create_listener(server, lb["LoadBalancerArn"], tg["TargetGroupArn"], port)

    def listeners(lb_arn):
        return elb(server, "describe-listeners", "--load-balancer-arn", lb_arn).json["Listeners"]

    # The same listener again is answered with the existing one (ALB is idempotent here).
    same = create_listener(server, lb["LoadBalancerArn"], tg["TargetGroupArn"], port)
    assert same == listener
    # The port with other actions, on this load balancer and on another one.
    elb_fails(server, "CreateListener", "DuplicateListener", "create-listener",
              "--load-balancer-arn", lb["LoadBalancerArn"], "--protocol", "HTTP", "--port", str(port),
              "--default-actions", forward(other_tg["TargetGroupArn"]))
    elb_fails(server, "CreateListener", "DuplicateListener", "create-listener",
              "--load-balancer-arn", other_lb["LoadBalancerArn"], "--protocol", "HTTP",
              "--port", str(port), "--default-actions", forward(other_tg["TargetGroupArn"]),
              contains=str(port))
    assert listeners(lb["LoadBalancerArn"]) == [listener]
    assert listeners(other_lb["LoadBalancerArn"]) == []

    elb_fails(server, "CreateListener", "UnsupportedProtocol", "create-listener",
              "--load-balancer-arn", lb["LoadBalancerArn"], "--protocol", "HTTPS",
              "--port", str(free_port()), "--default-actions", forward(tg["TargetGroupArn"]),
              contains="certificate")
    elb_fails(server, "CreateListener", "TargetGroupNotFound", "create-listener",
              "--load-balancer-arn", lb["LoadBalancerArn"], "--protocol", "HTTP",
              "--port", str(free_port()), "--default-actions",
              forward(f"{ARN_PREFIX}:targetgroup/ghost/0123456789abcdef"))
    elb_fails(server, "CreateListener", "LoadBalancerNotFound", "create-listener",
              "--load-balancer-arn", f"{ARN_PREFIX}:loadbalancer/app/ghost/0123456789abcdef",
              "--protocol", "HTTP", "--port", str(free_port()),
              "--default-actions", forward(tg["TargetGroupArn"]))
    elb_fails(server, "CreateListener", "ValidationError", "create-listener",
              "--load-balancer-arn", lb["LoadBalancerArn"], "--protocol", "HTTP", "--port", "65536",
              "--default-actions", forward(tg["TargetGroupArn"]), contains="'65536'")
    elb_fails(server, "CreateListener", "InvalidLoadBalancerAction", "create-listener",
              "--load-balancer-arn", lb["LoadBalancerArn"], "--protocol", "HTTP",
              "--port", str(free_port()), "--default-actions",
              json.dumps([{"Type": "redirect", "RedirectConfig": {"StatusCode": "HTTP_301"}}]),
              contains="loop")
    elb_fails(server, "CreateListener", "InvalidLoadBalancerAction", "create-listener",
              "--load-balancer-arn", lb["LoadBalancerArn"], "--protocol", "HTTP",
              "--port", str(free_port()), "--default-actions",
              json.dumps([{"Type": "authenticate-oidc", "Order": 1, "AuthenticateOidcConfig": {
                  "Issuer": "i", "AuthorizationEndpoint": "a", "TokenEndpoint": "t",
                  "UserInfoEndpoint": "u", "ClientId": "c"}},
                  {"Type": "forward", "Order": 2, "TargetGroupArn": tg["TargetGroupArn"]}]),
              contains="HTTPS")
    # A target group belongs to one load balancer.
    elb_fails(server, "CreateListener", "TargetGroupAssociationLimit", "create-listener",
              "--load-balancer-arn", other_lb["LoadBalancerArn"], "--protocol", "HTTP",
              "--port", str(free_port()), "--default-actions", forward(tg["TargetGroupArn"]))
    assert listeners(lb["LoadBalancerArn"]) == [listener]
    assert listeners(other_lb["LoadBalancerArn"]) == []
    elb_fails(server, "DescribeListeners", "ListenerNotFound", "describe-listeners",
              "--listener-arns", listener["ListenerArn"] + "0")


def test_modify_and_delete_listener(server):
    lb = create_lb(server)
    tg, tg2 = create_tg(server), create_tg(server)
    listener = create_listener(server, lb["LoadBalancerArn"], tg["TargetGroupArn"])
    new_port = free_port()
    out = elb(server, "modify-listener", "--listener-arn", listener["ListenerArn"], "--port",
              str(new_port), "--default-actions",
              json.dumps([{"Type": "fixed-response", "FixedResponseConfig": {
                  "StatusCode": "503", "ContentType": "text/plain", "MessageBody": "down"}}])
              ).json["Listeners"][0]
    assert out["Port"] == new_port
    assert out["DefaultActions"] == [{"Type": "fixed-response", "FixedResponseConfig": {
        "StatusCode": "503", "ContentType": "text/plain", "MessageBody": "down"}}]
    described = elb(server, "describe-listeners", "--listener-arns",
                    listener["ListenerArn"]).json["Listeners"]
    assert described == [out]
    default_rule = rules_of(server, listener["ListenerArn"])[-1]
    assert default_rule["IsDefault"] and default_rule["Actions"] == out["DefaultActions"]
    # The first target group is no longer used: it can go.
    elb(server, "delete-target-group", "--target-group-arn", tg["TargetGroupArn"])
    elb(server, "modify-listener", "--listener-arn", listener["ListenerArn"],
        "--default-actions", forward(tg2["TargetGroupArn"]))
    elb(server, "delete-listener", "--listener-arn", listener["ListenerArn"])
    elb_fails(server, "DescribeListeners", "ListenerNotFound", "describe-listeners",
              "--listener-arns", listener["ListenerArn"])
    elb_fails(server, "DeleteListener", "ListenerNotFound", "delete-listener",
              "--listener-arn", listener["ListenerArn"])
    assert describe_tgs(server, tg2["TargetGroupName"])[0]["LoadBalancerArns"] == []


# ---------------------------------------------------------------------------- rules


def make_listener(server):
    lb = create_lb(server)
    tg, tg2 = create_tg(server), create_tg(server)
    listener = create_listener(server, lb["LoadBalancerArn"], tg["TargetGroupArn"])
    return lb, tg, tg2, listener


def test_rules(server):
    lb, tg, tg2, listener = make_listener(server)
    larn = listener["ListenerArn"]
    r10 = elb(server, "create-rule", "--listener-arn", larn, "--priority", "10", "--conditions",
              "Field=path-pattern,Values=/api/*", "Field=host-header,Values=api.example.com",
              "--actions", forward(tg2["TargetGroupArn"])).json["Rules"][0]
    assert r10["Conditions"][1] == {"Field": "host-header", "Values": ["api.example.com"],
                                    "HostHeaderConfig": {"Values": ["api.example.com"]}}
    r5 = elb(server, "create-rule", "--listener-arn", larn, "--priority", "5", "--conditions",
             json.dumps([{"Field": "http-request-method",
                          "HttpRequestMethodConfig": {"Values": ["GET", "HEAD"]}},
                         {"Field": "source-ip", "SourceIpConfig": {"Values": ["10.0.0.0/8"]}}]),
             "--actions", json.dumps([{"Type": "redirect", "RedirectConfig": {
                 "StatusCode": "HTTP_302", "Path": "/elsewhere"}}])).json["Rules"][0]
    assert r5["Actions"] == [{"Type": "redirect", "RedirectConfig": {
        "StatusCode": "HTTP_302", "Protocol": "#{protocol}", "Host": "#{host}", "Port": "#{port}",
        "Path": "/elsewhere", "Query": "#{query}"}}]
    weighted = elb(server, "create-rule", "--listener-arn", larn, "--priority", "20", "--conditions",
                   "Field=path-pattern,Values=/canary/*", "--actions", json.dumps([{
                       "Type": "forward", "ForwardConfig": {"TargetGroups": [
                           {"TargetGroupArn": tg["TargetGroupArn"], "Weight": 90},
                           {"TargetGroupArn": tg2["TargetGroupArn"], "Weight": 10}]}}])
                   ).json["Rules"][0]
    assert "TargetGroupArn" not in weighted["Actions"][0]
    assert weighted["Actions"][0]["ForwardConfig"]["TargetGroups"] == [
        {"TargetGroupArn": tg["TargetGroupArn"], "Weight": 90},
        {"TargetGroupArn": tg2["TargetGroupArn"], "Weight": 10}]
    assert [r["Priority"] for r in rules_of(server, larn)] == ["5", "10", "20", "default"]

    before = rules_of(server, larn)
    elb_fails(server, "CreateRule", "PriorityInUse", "create-rule", "--listener-arn", larn,
              "--priority", "10", "--conditions", "Field=path-pattern,Values=/other/*",
              "--actions", forward(tg["TargetGroupArn"]), contains="10")
    for conds, needle in [
        (["Field=path-pattern,Values=/a b"], "/a b"),
        (["Field=host-header,Values=localhost"], "localhost"),
        (["Field=path-pattern,Values=/a", "Field=path-pattern,Values=/b"], "path-pattern"),
        (["Field=path-pattern,Values=/1,/2,/3", "Field=host-header,Values=a.io,b.io,c.io"], "5"),
    ]:
        elb_fails(server, "CreateRule", "ValidationError", "create-rule", "--listener-arn", larn,
                  "--priority", "30", "--conditions", *conds,
                  "--actions", forward(tg["TargetGroupArn"]), contains=needle)
    elb_fails(server, "CreateRule", "ValidationError", "create-rule", "--listener-arn", larn,
              "--priority", "50001", "--conditions", "Field=path-pattern,Values=/x",
              "--actions", forward(tg["TargetGroupArn"]), contains="50001")
    elb_fails(server, "CreateRule", "InvalidLoadBalancerAction", "create-rule", "--listener-arn", larn,
              "--priority", "30", "--conditions", "Field=path-pattern,Values=/x", "--actions",
              json.dumps([{"Type": "fixed-response", "Order": 1,
                           "FixedResponseConfig": {"StatusCode": "200"}},
                          {"Type": "forward", "Order": 2, "TargetGroupArn": tg["TargetGroupArn"]}]))
    elb_fails(server, "CreateRule", "ValidationError", "create-rule", "--listener-arn", larn,
              "--priority", "30", "--conditions", "Field=path-pattern,Values=/x", "--actions",
              json.dumps([{"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "302"}}]),
              contains="302")
    elb_fails(server, "CreateRule", "ListenerNotFound", "create-rule", "--listener-arn", larn + "0",
              "--priority", "30", "--conditions", "Field=path-pattern,Values=/x",
              "--actions", forward(tg["TargetGroupArn"]))
    assert rules_of(server, larn) == before

    # Priorities: swapping two rules at once is fine; onto a third rule's priority is not.
    swapped = elb(server, "set-rule-priorities", "--rule-priorities",
                  f"RuleArn={r5['RuleArn']},Priority=10", f"RuleArn={r10['RuleArn']},Priority=5"
                  ).json["Rules"]
    assert {r["RuleArn"]: r["Priority"] for r in swapped} == {r5["RuleArn"]: "10", r10["RuleArn"]: "5"}
    elb_fails(server, "SetRulePriorities", "PriorityInUse", "set-rule-priorities",
              "--rule-priorities", f"RuleArn={r5['RuleArn']},Priority=20")
    default_arn = rules_of(server, larn)[-1]["RuleArn"]
    elb_fails(server, "SetRulePriorities", "OperationNotPermitted", "set-rule-priorities",
              "--rule-priorities", f"RuleArn={default_arn},Priority=7")
    assert [r["Priority"] for r in rules_of(server, larn)] == ["5", "10", "20", "default"]

    modified = elb(server, "modify-rule", "--rule-arn", r10["RuleArn"], "--conditions",
                   "Field=path-pattern,Values=/v2/*").json["Rules"][0]
    assert modified["Conditions"] == [{"Field": "path-pattern", "Values": ["/v2/*"],
                                       "PathPatternConfig": {"Values": ["/v2/*"]}}]
    assert modified["Actions"] == r10["Actions"] and modified["Priority"] == "5"
    described = elb(server, "describe-rules", "--rule-arns", r10["RuleArn"]).json["Rules"]
    assert described == [modified]

    elb_fails(server, "DeleteRule", "OperationNotPermitted", "delete-rule", "--rule-arn", default_arn)
    elb(server, "delete-rule", "--rule-arn", r10["RuleArn"])
    elb_fails(server, "DescribeRules", "RuleNotFound", "describe-rules", "--rule-arns", r10["RuleArn"])
    elb_fails(server, "DeleteRule", "RuleNotFound", "delete-rule", "--rule-arn", r10["RuleArn"])
    assert [r["Priority"] for r in rules_of(server, larn)] == ["10", "20", "default"]


def test_target_group_in_use_and_delete_cascade(server):
    lb, tg, tg2, listener = make_listener(server)
    larn = listener["ListenerArn"]
    rule = elb(server, "create-rule", "--listener-arn", larn, "--priority", "1", "--conditions",
               "Field=path-pattern,Values=/x/*", "--actions", forward(tg2["TargetGroupArn"])
               ).json["Rules"][0]
    for t in (tg, tg2):
        elb_fails(server, "DeleteTargetGroup", "ResourceInUse", "delete-target-group",
                  "--target-group-arn", t["TargetGroupArn"])
    assert len(describe_tgs(server, tg["TargetGroupName"], tg2["TargetGroupName"])) == 2

    elb(server, "delete-load-balancer", "--load-balancer-arn", lb["LoadBalancerArn"])
    elb_fails(server, "DescribeLoadBalancers", "LoadBalancerNotFound", "describe-load-balancers",
              "--load-balancer-arns", lb["LoadBalancerArn"])
    elb_fails(server, "DescribeListeners", "ListenerNotFound", "describe-listeners",
              "--listener-arns", larn)
    elb_fails(server, "DescribeRules", "RuleNotFound", "describe-rules", "--rule-arns", rule["RuleArn"])
    for t in describe_tgs(server, tg["TargetGroupName"], tg2["TargetGroupName"]):
        assert t["LoadBalancerArns"] == []
    # Deleting again is not an error (ALB's DeleteLoadBalancer and DeleteTargetGroup).
    elb(server, "delete-load-balancer", "--load-balancer-arn", lb["LoadBalancerArn"])
    for t in (tg, tg2):
        elb(server, "delete-target-group", "--target-group-arn", t["TargetGroupArn"])
    elb_fails(server, "DescribeTargetGroups", "TargetGroupNotFound", "describe-target-groups",
              "--names", tg["TargetGroupName"])


# ---------------------------------------------------------------------------- targets


def target_health(server, tg_arn: str, *targets: str) -> list[dict]:
    args = ["describe-target-health", "--target-group-arn", tg_arn]
    if targets:
        args += ["--targets", *targets]
    return elb(server, *args).json["TargetHealthDescriptions"]


def test_register_and_deregister_ip_targets(server):
    tg = create_tg(server, None, "--target-type", "ip", "--vpc-id", "vpc-local",
                   "--health-check-interval-seconds", "5")
    arn = tg["TargetGroupArn"]
    elb(server, "register-targets", "--target-group-arn", arn, "--targets", "Id=127.0.0.1,Port=9",
        "Id=127.0.0.2")
    health = target_health(server, arn)
    assert [(h["Target"]["Id"], h["Target"]["Port"]) for h in health] == [("127.0.0.1", 9),
                                                                          ("127.0.0.2", 80)]
    assert [h["HealthCheckPort"] for h in health] == ["9", "80"]
    # No listener sends to the group: no traffic, no health checks (ALB's words).
    assert {h["TargetHealth"]["State"] for h in health} == {"unused"}, health
    assert health[0]["TargetHealth"]["Reason"] == "Target.NotInUse", health
    assert health[0]["TargetHealth"]["Description"] == \
        "Target group is not configured to receive traffic from the load balancer", health
    # On a listener, its targets are checked: initial, then a verdict (nothing listens
    # on 127.0.0.1:9, so unhealthy).
    lb = create_lb(server)
    listener = create_listener(server, lb["LoadBalancerArn"], arn)
    health = target_health(server, arn, "Id=127.0.0.1,Port=9")
    assert health[0]["TargetHealth"]["State"] in ("initial", "unhealthy"), health
    wait_until(lambda: target_health(server, arn, "Id=127.0.0.1,Port=9")[0]["TargetHealth"]["State"]
               == "unhealthy", 60, "127.0.0.1:9 checked and found unhealthy")
    # Off the listener again: unused, whatever the last verdict was.
    elb(server, "delete-listener", "--listener-arn", listener["ListenerArn"])
    health = target_health(server, arn, "Id=127.0.0.1,Port=9")
    assert health[0]["TargetHealth"]["Reason"] == "Target.NotInUse", health

    elb(server, "deregister-targets", "--target-group-arn", arn, "--targets", "Id=127.0.0.1,Port=9")
    drained = target_health(server, arn, "Id=127.0.0.1,Port=9")
    assert drained == [{"Target": {"Id": "127.0.0.1", "Port": 9}, "HealthCheckPort": "9",
                        "TargetHealth": {"State": "draining",
                                         "Reason": "Target.DeregistrationInProgress",
                                         "Description": "Target deregistration is in progress"}}]
    unknown = target_health(server, arn, "Id=10.9.9.9,Port=81")
    assert unknown == [{"Target": {"Id": "10.9.9.9", "Port": 81}, "HealthCheckPort": "81",
                        "TargetHealth": {"State": "unused", "Reason": "Target.NotRegistered",
                                         "Description": "Target is not registered to the target group"}}]

    elb_fails(server, "DeregisterTargets", "InvalidTarget", "deregister-targets",
              "--target-group-arn", arn, "--targets", "Id=10.9.9.9", contains="10.9.9.9")
    elb_fails(server, "RegisterTargets", "InvalidTarget", "register-targets",
              "--target-group-arn", arn, "--targets", "Id=not-an-ip", contains="not-an-ip")
    elb_fails(server, "RegisterTargets", "ValidationError", "register-targets",
              "--target-group-arn", arn, "--targets", "Id=127.0.0.3,Port=70000", contains="70000")
    ghost = f"{ARN_PREFIX}:targetgroup/ghost/0123456789abcdef"
    elb_fails(server, "DescribeTargetHealth", "TargetGroupNotFound", "describe-target-health",
              "--target-group-arn", ghost, contains="One or more target groups not found")

    # With no deregistration delay a deregistered target goes at once.
    elb(server, "modify-target-group-attributes", "--target-group-arn", arn,
        "--attributes", "Key=deregistration_delay.timeout_seconds,Value=0")
    elb(server, "deregister-targets", "--target-group-arn", arn, "--targets", "Id=127.0.0.2")
    wait_until(lambda: all(h["Target"]["Id"] != "127.0.0.2" for h in target_health(server, arn)),
               20, "127.0.0.2 removed")


def test_instance_targets_must_be_container_instances(server):
    tg = create_tg(server)
    elb_fails(server, "RegisterTargets", "InvalidTarget", "register-targets",
              "--target-group-arn", tg["TargetGroupArn"], "--targets", "Id=i-0123456789abcdef0",
              contains="i-0123456789abcdef0")
    assert target_health(server, tg["TargetGroupArn"]) == []


# ---------------------------------------------------------------------------- protocol


def test_boto3_elbv2_client(server):
    import boto3
    from botocore.config import Config

    client = boto3.session.Session(aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                                   region_name=REGION).client(
        "elbv2", endpoint_url=server.endpoint, verify=str(server.ca_bundle),
        config=Config(retries={"max_attempts": 1}))
    lb = client.create_load_balancer(Name=name("b3"), Subnets=["subnet-a"])["LoadBalancers"][0]
    assert isinstance(lb["CreatedTime"], dt.datetime)
    tg = client.create_target_group(Name=name("b3tg"), Protocol="HTTP", Port=8080,
                                    TargetType="ip")["TargetGroups"][0]
    listener = client.create_listener(
        LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=free_port(),
        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg["TargetGroupArn"]}])["Listeners"][0]
    rule = client.create_rule(
        ListenerArn=listener["ListenerArn"], Priority=7,
        Conditions=[{"Field": "host-header", "HostHeaderConfig": {"Values": ["*.example.com"]}}],
        Actions=[{"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "404"}}])["Rules"][0]
    assert rule["Conditions"][0]["Values"] == ["*.example.com"]
    page1 = client.describe_rules(ListenerArn=listener["ListenerArn"], PageSize=1)
    assert [r["Priority"] for r in page1["Rules"]] == ["7"] and page1["NextMarker"]
    page2 = client.describe_rules(ListenerArn=listener["ListenerArn"], PageSize=1,
                                  Marker=page1["NextMarker"])
    assert [r["Priority"] for r in page2["Rules"]] == ["default"] and "NextMarker" not in page2
    client.register_targets(TargetGroupArn=tg["TargetGroupArn"], Targets=[{"Id": "127.0.0.1"}])
    health = client.describe_target_health(TargetGroupArn=tg["TargetGroupArn"])
    assert health["TargetHealthDescriptions"][0]["Target"] == {"Id": "127.0.0.1", "Port": 8080}
    with pytest.raises(client.exceptions.TargetGroupNotFoundException) as ei:
        client.describe_target_health(TargetGroupArn=tg["TargetGroupArn"] + "0")
    assert ei.value.response["Error"]["Code"] == "TargetGroupNotFound"
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    with pytest.raises(client.exceptions.PriorityInUseException):
        client.create_rule(ListenerArn=listener["ListenerArn"], Priority=7,
                           Conditions=[{"Field": "path-pattern", "Values": ["/x"]}],
                           Actions=[{"Type": "forward", "TargetGroupArn": tg["TargetGroupArn"]}])


def test_cli_auth_errors_are_elbv2_errors(server):
    r = elb(server, "describe-load-balancers", expect_rc=None, secret_key="wrong")
    expect_cli_error(r, "SignatureDoesNotMatch", "DescribeLoadBalancers")
    r = elb(server, "describe-load-balancers", expect_rc=None, access_key="AKIDNOPE")
    expect_cli_error(r, "InvalidClientTokenId", "DescribeLoadBalancers")


def signed_query(server, body: str, service: str = "elasticloadbalancing"):
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    req = AWSRequest(method="POST", url=f"http://127.0.0.1:{server.api_port}/", data=body.encode(),
                     headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), service, REGION).add_auth(req)
    conn = api_connection(server.api_port, 10)
    try:
        conn.request("POST", "/", body=body.encode(), headers=dict(req.headers.items()))
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type"), resp.read().decode()
    finally:
        conn.close()


def test_raw_query_protocol(server):
    status, ctype, body = signed_query(server, "Action=DescribeLoadBalancers&Version=2015-12-01")
    assert status == 200 and ctype.startswith("text/xml")
    assert f'<DescribeLoadBalancersResponse xmlns="{XMLNS}"><DescribeLoadBalancersResult>' in body
    assert re.search(r"<ResponseMetadata><RequestId>[0-9a-f-]{36}</RequestId></ResponseMetadata>", body)

    status, _, body = signed_query(server, "Action=FlyToTheMoon&Version=2015-12-01")
    assert status == 400 and "<Code>InvalidAction</Code>" in body and "<Type>Sender</Type>" in body
    status, _, body = signed_query(server, "Action=DescribeLoadBalancers&Version=2012-06-01")
    assert status == 400 and "<Code>InvalidAction</Code>" in body
    status, _, body = signed_query(server, "Action=DescribeLoadBalancers&Version=2015-12-01",
                                   service="ecs")
    assert status == 403 and "<Code>SignatureDoesNotMatch</Code>" in body
    assert "elasticloadbalancing" in body
    status, _, body = signed_query(server, "Action=DescribeTargetHealth&Version=2015-12-01")
    assert status == 400 and "<Code>ValidationError</Code>" in body and "TargetGroupArn" in body
    # Escaping: a fixed response body with XML's special characters round-trips.
    lb, tg, tg2, listener = make_listener(server)
    body_text = "<b>&'\"</b>"
    rule = elb(server, "create-rule", "--listener-arn", listener["ListenerArn"], "--priority", "3",
               "--conditions", "Field=path-pattern,Values=/esc", "--actions", json.dumps([{
                   "Type": "fixed-response", "FixedResponseConfig": {
                       "StatusCode": "200", "ContentType": "text/html", "MessageBody": body_text}}])
               ).json["Rules"][0]
    assert rule["Actions"][0]["FixedResponseConfig"]["MessageBody"] == body_text

    # ECS on the same endpoint is unaffected.
    assert "clusterArns" in aws("ecs", "list-clusters", node=server).json
