"""Task definitions through the real AWS CLI (reference §6.2, §7, §11.1, §11.3, Appendix B)."""

from __future__ import annotations

import copy
import json

import pytest

from berth_harness import (AUTH_TASKDEF, AWS_BIN, aws, expect_cli_error, simple_taskdef, td_arn,
                           unique)

VALIDATION_ERRORS = ("ClientException", "InvalidParameterException")


def register_file(node, tmp_path, payload: dict, expect_rc=0, name="td.json"):
    f = tmp_path / name
    f.write_text(json.dumps(payload))
    return aws("ecs", "register-task-definition", "--cli-input-json", f"file://{f}", node=node,
               expect_rc=expect_rc)


def register(node, tmp_path, family: str, **kw) -> dict:
    return register_file(node, tmp_path, simple_taskdef(family), **kw).json["taskDefinition"]


def list_tds(node, *extra) -> list[str]:
    return aws("ecs", "list-task-definitions", *extra, node=node).json["taskDefinitionArns"]


def list_families(node, *extra) -> list[str]:
    return aws("ecs", "list-task-definition-families", *extra, node=node).json["families"]


# ---------------------------------------------------------------------------
# The tutorial definition
# ---------------------------------------------------------------------------


def test_register_tutorial_definition_echo(fresh_server, tmp_path):
    f = tmp_path / "auth.json"
    # Same bytes as reference §11.3's capture/auth-taskdef.json.
    f.write_text('{"family":"auth","containerDefinitions":[{"name":"auth","image":"srirajan/auth","cpu":512,'
                 '"memory":512,"portMappings":[{"protocol":"tcp","containerPort":10080,"hostPort":0}],'
                 '"essential":true,"dockerLabels":{"service":"auth"}}]}')
    assert json.loads(f.read_text()) == AUTH_TASKDEF
    res = aws("ecs", "register-task-definition", "--cli-input-json", f"file://{f}", node=fresh_server)
    td = res.json["taskDefinition"]
    assert td["taskDefinitionArn"] == "arn:aws:ecs:us-east-1:123456789012:task-definition/auth:1"
    assert td["family"] == "auth"
    assert td["revision"] == 1
    assert td["networkMode"] == "bridge"
    assert td["status"] == "ACTIVE"
    assert td["volumes"] == []
    assert td["placementConstraints"] == []
    assert "EC2" in td["compatibilities"]
    assert isinstance(td["registeredAt"], (int, float)) and not isinstance(td["registeredAt"], bool)
    assert td["registeredAt"] > 1_600_000_000
    if "registeredBy" in td:
        assert isinstance(td["registeredBy"], str) and td["registeredBy"]
    assert "deregisteredAt" not in td
    [c] = td["containerDefinitions"]
    assert c == {
        "name": "auth",
        "image": "srirajan/auth",
        "cpu": 512,
        "memory": 512,
        "portMappings": [{"containerPort": 10080, "hostPort": 0, "protocol": "tcp"}],
        "essential": True,
        "environment": [],
        "mountPoints": [],
        "volumesFrom": [],
        "dockerLabels": {"service": "auth"},
        **{k: v for k, v in c.items() if k in ("systemControls",)},
    }, f"container echo differs from reference §11.1: {json.dumps(c, indent=1)}"

    again = aws("ecs", "register-task-definition", "--cli-input-json", f"file://{f}",
                node=fresh_server).json["taskDefinition"]
    assert again["revision"] == 2
    assert again["taskDefinitionArn"] == td_arn("auth", 2)


def test_defaults_filled_in(server, tmp_path):
    fam = unique("defaults")
    payload = {"family": fam, "containerDefinitions": [
        {"name": "web", "image": "nginx", "memory": 128, "portMappings": [{"containerPort": 80}]}]}
    td = register_file(server, tmp_path, payload).json["taskDefinition"]
    c = td["containerDefinitions"][0]
    assert c["essential"] is True, "essential defaults to true"
    assert c["portMappings"][0]["protocol"] == "tcp", "protocol defaults to tcp"
    assert td["networkMode"] == "bridge"


# ---------------------------------------------------------------------------
# Describe
# ---------------------------------------------------------------------------


def test_describe_by_family_revision_arn_and_tags(server, tmp_path):
    fam = unique("desc")
    payload = simple_taskdef(fam)
    payload["tags"] = [{"key": "team", "value": "core"}]
    r1 = register_file(server, tmp_path, payload).json
    assert r1["taskDefinition"]["revision"] == 1
    assert r1.get("tags") == [{"key": "team", "value": "core"}]
    register_file(server, tmp_path, payload)

    latest = aws("ecs", "describe-task-definition", "--task-definition", fam, node=server).json
    assert latest["taskDefinition"]["revision"] == 2
    assert latest["taskDefinition"]["taskDefinitionArn"] == td_arn(fam, 2)
    assert not latest.get("tags"), "tags shown without --include TAGS"

    first = aws("ecs", "describe-task-definition", "--task-definition", f"{fam}:1",
                node=server).json["taskDefinition"]
    assert first["revision"] == 1 and first["family"] == fam

    by_arn = aws("ecs", "describe-task-definition", "--task-definition", td_arn(fam, 1),
                 node=server).json["taskDefinition"]
    assert by_arn == first

    tagged = aws("ecs", "describe-task-definition", "--task-definition", fam, "--include", "TAGS",
                 node=server).json
    assert tagged["tags"] == [{"key": "team", "value": "core"}]


def test_describe_unknown_family(server):
    fam = unique("nosuch")
    for ref in (fam, f"{fam}:1", td_arn(fam, 1)):
        res = aws("ecs", "describe-task-definition", "--task-definition", ref, node=server, expect_rc=255)
        err = expect_cli_error(res, "ClientException", "DescribeTaskDefinition")
        assert err.message == "Unable to describe task definition.", err


def test_describe_unknown_revision_of_known_family(server, tmp_path):
    fam = unique("norev")
    register(server, tmp_path, fam)
    res = aws("ecs", "describe-task-definition", "--task-definition", f"{fam}:7", node=server, expect_rc=255)
    expect_cli_error(res, "ClientException", "DescribeTaskDefinition")


def test_describe_negative_revision(server, tmp_path):
    res = aws("ecs", "describe-task-definition", "--task-definition", "auth:-1", node=server, expect_rc=255)
    expect_cli_error(res, "InvalidParameterException", "DescribeTaskDefinition", contains="-1")


# ---------------------------------------------------------------------------
# Listing
# ---------------------------------------------------------------------------


def test_list_task_definitions_filters_sort_and_paging(server, tmp_path):
    fam = unique("lst")
    other = fam + "x"  # shares the prefix: familyPrefix means the full family name
    for _ in range(5):
        register(server, tmp_path, fam)
    register(server, tmp_path, other)
    mine = [td_arn(fam, r) for r in range(1, 6)]

    assert list_tds(server, "--family-prefix", fam) == mine
    assert list_tds(server, "--family-prefix", fam, "--sort", "ASC") == mine
    assert list_tds(server, "--family-prefix", fam, "--sort", "DESC") == mine[::-1]

    # Automatic paging by the CLI returns everything once.
    assert list_tds(server, "--family-prefix", fam, "--page-size", "2") == mine

    # Manual paging: 2 + 2 + 1 over three pages.
    pages, token = [], None
    while True:
        args = ["--family-prefix", fam, "--max-results", "2", "--no-paginate"]
        if token:
            args += ["--next-token", token]
        page = aws("ecs", "list-task-definitions", *args, node=server).json
        pages.append(page["taskDefinitionArns"])
        token = page.get("nextToken")
        if not token:
            break
        assert len(pages) < 10, "paging does not end"
    assert pages == [mine[0:2], mine[2:4], mine[4:5]]

    # status filter
    aws("ecs", "deregister-task-definition", "--task-definition", f"{fam}:2", node=server)
    assert list_tds(server, "--family-prefix", fam) == [a for a in mine if a != td_arn(fam, 2)]
    assert list_tds(server, "--family-prefix", fam, "--status", "INACTIVE") == [td_arn(fam, 2)]
    assert list_tds(server, "--family-prefix", fam, "--status", "ACTIVE", "--sort", "DESC") == \
        [td_arn(fam, r) for r in (5, 4, 3, 1)]

    # Unfiltered listing contains both families, families in order.
    everything = list_tds(server)
    assert set(mine) - {td_arn(fam, 2)} <= set(everything)
    assert td_arn(other, 1) in everything
    assert everything.index(td_arn(fam, 5)) < everything.index(td_arn(other, 1))


def test_list_task_definition_families(server, tmp_path):
    base = unique("fam")
    one, two, three = f"{base}-abc-one", f"{base}-abc-two", f"{base}-abd"
    for f in (one, two, three):
        register(server, tmp_path, f)
    register(server, tmp_path, two)
    # `two` has no ACTIVE revision left after this.
    aws("ecs", "deregister-task-definition", "--task-definition", f"{two}:1", node=server)
    aws("ecs", "deregister-task-definition", "--task-definition", f"{two}:2", node=server)

    assert list_families(server, "--family-prefix", f"{base}-abc") == [one, two]
    assert list_families(server, "--family-prefix", f"{base}-abc", "--status", "ALL") == [one, two]
    assert list_families(server, "--family-prefix", f"{base}-abc", "--status", "ACTIVE") == [one]
    assert list_families(server, "--family-prefix", f"{base}-abc", "--status", "INACTIVE") == [two]
    assert list_families(server, "--family-prefix", base) == sorted([one, two, three])
    assert list_families(server, "--family-prefix", base, "--page-size", "1") == sorted([one, two, three])
    assert list_families(server, "--family-prefix", unique("nothing")) == []


# ---------------------------------------------------------------------------
# Deregister / delete / revision numbering
# ---------------------------------------------------------------------------


def test_deregister_and_latest_active(server, tmp_path):
    fam = unique("dereg")
    for _ in range(3):
        register(server, tmp_path, fam)
    res = aws("ecs", "deregister-task-definition", "--task-definition", f"{fam}:3", node=server).json
    td = res["taskDefinition"]
    assert td["status"] == "INACTIVE"
    assert td["revision"] == 3
    assert isinstance(td["deregisteredAt"], (int, float)) and td["deregisteredAt"] >= td["registeredAt"]

    latest = aws("ecs", "describe-task-definition", "--task-definition", fam, node=server).json["taskDefinition"]
    assert latest["revision"] == 2 and latest["status"] == "ACTIVE"
    # INACTIVE revisions stay describable.
    inactive = aws("ecs", "describe-task-definition", "--task-definition", f"{fam}:3",
                   node=server).json["taskDefinition"]
    assert inactive["status"] == "INACTIVE"
    assert "deregisteredAt" in inactive


def test_deregister_unknown(server, tmp_path):
    fam = unique("deregx")
    register(server, tmp_path, fam)
    res = aws("ecs", "deregister-task-definition", "--task-definition", f"{fam}:99", node=server, expect_rc=255)
    expect_cli_error(res, VALIDATION_ERRORS, "DeregisterTaskDefinition", contains=f"{fam}:99")
    res = aws("ecs", "deregister-task-definition", "--task-definition", f"{unique('ghost')}:1", node=server,
              expect_rc=255)
    expect_cli_error(res, VALIDATION_ERRORS, "DeregisterTaskDefinition")
    # The revision that does exist is untouched.
    assert list_tds(server, "--family-prefix", fam) == [td_arn(fam, 1)]


def test_delete_task_definitions_and_revisions_never_reused(server, tmp_path):
    fam = unique("delete")
    for _ in range(3):
        register(server, tmp_path, fam)
    aws("ecs", "deregister-task-definition", "--task-definition", f"{fam}:3", node=server)
    aws("ecs", "deregister-task-definition", "--task-definition", f"{fam}:2", node=server)

    res = aws("ecs", "delete-task-definitions", "--task-definitions", f"{fam}:3", td_arn(fam, 1),
              node=server).json
    assert [t["taskDefinitionArn"] for t in res["taskDefinitions"]] == [td_arn(fam, 3)]
    assert res["taskDefinitions"][0]["status"] == "DELETE_IN_PROGRESS"
    assert len(res["failures"]) == 1, res
    assert res["failures"][0]["arn"] == td_arn(fam, 1)
    assert res["failures"][0].get("reason"), res

    assert list_tds(server, "--family-prefix", fam, "--status", "DELETE_IN_PROGRESS") == [td_arn(fam, 3)]
    assert list_tds(server, "--family-prefix", fam, "--status", "INACTIVE") == [td_arn(fam, 2)]
    assert list_tds(server, "--family-prefix", fam) == [td_arn(fam, 1)]

    # The highest revision was deleted; numbering still continues after it.
    nxt = register(server, tmp_path, fam)
    assert nxt["revision"] == 4
    assert nxt["taskDefinitionArn"] == td_arn(fam, 4)


# ---------------------------------------------------------------------------
# Every ContainerDefinition field round-trips
# ---------------------------------------------------------------------------

FULL_CONTAINER = {
    "name": "app",
    "image": "registry.example.com/team/app:1.2.3",
    "repositoryCredentials": {"credentialsParameter": "arn:aws:secretsmanager:us-east-1:123456789012:secret:reg"},
    "cpu": 256,
    "memory": 512,
    "memoryReservation": 256,
    "links": ["sidecar:side"],
    "portMappings": [
        {"containerPort": 8080, "hostPort": 18080, "protocol": "tcp", "name": "http", "appProtocol": "http"},
        {"containerPortRange": "9000-9010", "protocol": "udp"},
    ],
    "essential": True,
    "restartPolicy": {"enabled": True, "ignoredExitCodes": [0, 143], "restartAttemptPeriod": 120},
    "entryPoint": ["/bin/sh", "-c"],
    "command": ["exec app --port 8080"],
    "environment": [{"name": "MODE", "value": "prod"}, {"name": "EMPTY", "value": ""}],
    "environmentFiles": [{"value": "arn:aws:s3:::bucket/app.env", "type": "s3"}],
    "mountPoints": [{"sourceVolume": "data", "containerPath": "/data", "readOnly": False}],
    "volumesFrom": [{"sourceContainer": "sidecar", "readOnly": True}],
    "linuxParameters": {
        "capabilities": {"add": ["NET_ADMIN"], "drop": ["MKNOD"]},
        "devices": [{"hostPath": "/dev/fuse", "containerPath": "/dev/fuse", "permissions": ["read", "write"]}],
        "initProcessEnabled": True,
        "sharedMemorySize": 64,
        "tmpfs": [{"containerPath": "/scratch", "size": 32, "mountOptions": ["noexec", "nosuid"]}],
        "maxSwap": 0,
        "swappiness": 10,
    },
    "secrets": [{"name": "DB_PASSWORD", "valueFrom": "arn:aws:ssm:us-east-1:123456789012:parameter/db"}],
    "dependsOn": [{"containerName": "sidecar", "condition": "HEALTHY"}],
    "startTimeout": 60,
    "stopTimeout": 20,
    "versionConsistency": "disabled",
    "hostname": "app-host",
    "user": "1000:1000",
    "workingDirectory": "/srv",
    "disableNetworking": False,
    "privileged": False,
    "readonlyRootFilesystem": True,
    "dnsServers": ["10.0.0.2"],
    "dnsSearchDomains": ["svc.local"],
    "extraHosts": [{"hostname": "db.local", "ipAddress": "10.0.0.5"}],
    "dockerSecurityOptions": ["no-new-privileges"],
    "interactive": True,
    "pseudoTerminal": True,
    "dockerLabels": {"service": "app", "tier": "web"},
    "ulimits": [{"name": "nofile", "softLimit": 1024, "hardLimit": 4096}],
    "logConfiguration": {
        "logDriver": "json-file",
        "options": {"max-size": "10m", "mode": "non-blocking"},
        "secretOptions": [{"name": "token", "valueFrom": "arn:aws:ssm:us-east-1:123456789012:parameter/t"}],
    },
    "healthCheck": {"command": ["CMD-SHELL", "curl -f http://localhost:8080/ || exit 1"],
                    "interval": 10, "timeout": 3, "retries": 4, "startPeriod": 15},
    "systemControls": [{"namespace": "net.core.somaxconn", "value": "1024"}],
    "resourceRequirements": [{"type": "GPU", "value": "1"}],
    "firelensConfiguration": {"type": "fluentbit", "options": {"enable-ecs-log-metadata": "true"}},
    "credentialSpecs": ["credentialspec:arn:aws:s3:::bucket/gmsa.json"],
}

SIDECAR = {
    "name": "sidecar", "image": "busybox:1.36", "memory": 64, "essential": False,
    "healthCheck": {"command": ["CMD", "true"], "interval": 5, "timeout": 2, "retries": 1, "startPeriod": 0},
}


def _cli_container_members() -> list[str]:
    """Every ContainerDefinition member in the CLI's own (vendored) model."""
    import glob
    paths = glob.glob(str(AWS_BIN.parent.parent / "lib" / "python*" / "site-packages" / "awscli" / "botocore"
                          / "data" / "ecs" / "2014-11-13" / "service-2.json"))
    if not paths:
        pytest.skip("CLI model not found")
    model = json.load(open(paths[0]))
    return sorted(model["shapes"]["ContainerDefinition"]["members"])


def test_every_container_definition_field_round_trips(server, tmp_path):
    missing = set(_cli_container_members()) - set(FULL_CONTAINER)
    assert not missing, f"test definition does not set: {sorted(missing)}"

    fam = unique("full")
    payload = {"family": fam, "networkMode": "bridge",
               "volumes": [{"name": "data", "host": {"sourcePath": "/var/lib/app"}}],
               "containerDefinitions": [FULL_CONTAINER, SIDECAR]}
    registered = register_file(server, tmp_path, payload).json["taskDefinition"]
    described = aws("ecs", "describe-task-definition", "--task-definition", f"{fam}:1",
                    node=server).json["taskDefinition"]
    for td, what in ((registered, "register"), (described, "describe")):
        by_name = {c["name"]: c for c in td["containerDefinitions"]}
        assert list(by_name) == ["app", "sidecar"], f"{what}: container order/names {list(by_name)}"
        for key, want in FULL_CONTAINER.items():
            assert by_name["app"].get(key) == want, \
                f"{what}: field {key!r} came back as {by_name['app'].get(key)!r}, sent {want!r}"
        for key, want in SIDECAR.items():
            assert by_name["sidecar"].get(key) == want, f"{what}: sidecar {key!r}"
        assert td["volumes"] == payload["volumes"]


# ---------------------------------------------------------------------------
# Validation errors: each exits 255 with the right error, names the bad value,
# and registers nothing.
# ---------------------------------------------------------------------------


def _snapshot(server):
    return (list_tds(server), list_tds(server, "--status", "INACTIVE"), list_families(server, "--status", "ALL"))


def _container(name="c", **kw):
    d = {"name": name, "image": "busybox", "memory": 64}
    d.update(kw)
    return d


def _bad_cases():
    fam = "badcase"
    return [
        ("family-chars", {"family": "bad family!", "containerDefinitions": [_container()]}, ["bad family!"]),
        ("family-too-long", {"family": "f" * 256, "containerDefinitions": [_container()]}, ["f" * 256]),
        ("11-containers", {"family": fam, "containerDefinitions": [_container(f"c{i}") for i in range(11)]},
         [("10", "11")]),
        ("no-containers", {"family": fam, "containerDefinitions": []}, []),
        ("duplicate-names", {"family": fam, "containerDefinitions": [_container("dup"), _container("dup")]},
         ["dup"]),
        ("bad-container-name", {"family": fam, "containerDefinitions": [_container("no way")]}, ["no way"]),
        ("missing-image", {"family": fam, "containerDefinitions": [{"name": "noimage", "memory": 64}]},
         ["image"]),
        ("missing-name", {"family": fam, "containerDefinitions": [{"image": "busybox", "memory": 64}]},
         ["name"]),
        ("memory-missing", {"family": fam, "containerDefinitions": [{"name": "nomem", "image": "busybox"}]},
         ["nomem", "memory"]),
        ("memory-below-reservation",
         {"family": fam, "containerDefinitions": [_container("res", memory=64, memoryReservation=128)]},
         ["res"]),
        ("dependsOn-unknown",
         {"family": fam, "containerDefinitions": [
             _container("a", dependsOn=[{"containerName": "ghost", "condition": "START"}])]},
         ["ghost"]),
        ("no-essential", {"family": fam, "containerDefinitions": [_container("a", essential=False)]},
         ["essential"]),
        ("mount-unknown-volume",
         {"family": fam, "containerDefinitions": [
             _container("a", mountPoints=[{"sourceVolume": "novol", "containerPath": "/x"}])]},
         ["novol"]),
        ("bad-protocol",
         {"family": fam, "containerDefinitions": [
             _container("a", portMappings=[{"containerPort": 80, "protocol": "sctp"}])]},
         ["sctp"]),
        ("bad-log-driver",
         {"family": fam, "containerDefinitions": [_container("a", logConfiguration={"logDriver": "carrier-pigeon"})]},
         ["carrier-pigeon"]),
        ("aws-tag",
         {"family": fam, "containerDefinitions": [_container()], "tags": [{"key": "aws:x", "value": "y"}]},
         ["aws:"]),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_register_rejected(server, tmp_path, case):
    _, payload, mentions = case
    before = _snapshot(server)
    res = register_file(server, tmp_path, payload, expect_rc=255)
    err = expect_cli_error(res, VALIDATION_ERRORS, "RegisterTaskDefinition")
    for m in mentions:
        alternatives = m if isinstance(m, tuple) else (m,)
        assert any(a in err.message for a in alternatives), \
            f"error message {err.message!r} should mention {' or '.join(map(repr, alternatives))}"
    assert _snapshot(server) == before, "a rejected registration changed the listings"


def test_register_bad_network_mode_from_cli_args(server):
    """`--network-mode foo` is sent unvalidated by the CLI (§11.7); the server must reject it."""
    before = _snapshot(server)
    res = aws("ecs", "register-task-definition", "--family", "netmode", "--network-mode", "foo",
              "--container-definitions", json.dumps([_container()]), node=server, expect_rc=255)
    expect_cli_error(res, VALIDATION_ERRORS, "RegisterTaskDefinition", contains="foo")
    assert _snapshot(server) == before


def test_register_container_without_name_or_image_from_cli_args(server):
    """The exact body of §11.7: `[{"cpu":1}]` reaches the server."""
    before = _snapshot(server)
    res = aws("ecs", "register-task-definition", "--family", "bad", "--container-definitions", '[{"cpu":1}]',
              node=server, expect_rc=255)
    expect_cli_error(res, VALIDATION_ERRORS, "RegisterTaskDefinition")
    assert _snapshot(server) == before


def test_tutorial_definition_still_valid_after_rejections(server, tmp_path):
    """Sanity: the validation above is not so strict that a plain definition fails."""
    payload = copy.deepcopy(AUTH_TASKDEF)
    payload["family"] = unique("ok")
    td = register_file(server, tmp_path, payload).json["taskDefinition"]
    assert td["revision"] == 1
