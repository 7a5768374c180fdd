"""The AWS JSON 1.1 wire protocol and SigV4 (reference §1, §2), over raw HTTP."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import socket
import ssl

from berth_harness import (JSON_CT, TARGET_PREFIX, RawClient, api_connection, aws, call,
                           cluster_arn, expect_cli_error, ok, sign_headers, unique)


def assert_error(resp, status: int, types, mentions=None):
    types = (types,) if isinstance(types, str) else tuple(types)
    assert resp.status == status, f"HTTP {resp.status}, expected {status}: {resp.body[:500]!r}"
    assert resp.headers.get("content-type", "").startswith(JSON_CT), \
        f"error Content-Type {resp.headers.get('content-type')!r}"
    assert resp.headers.get("x-amzn-requestid"), f"no x-amzn-RequestId header: {resp.headers}"
    body = resp.json
    assert isinstance(body, dict), f"error body is not a JSON object: {resp.body[:500]!r}"
    assert "__type" in body and "message" in body, f"error body lacks __type/message: {body}"
    assert resp.error_type in types, f"__type {body['__type']!r}, expected one of {types}"
    assert isinstance(body["message"], str) and body["message"], body
    if mentions:
        assert mentions in body["message"], f"message {body['message']!r} should mention {mentions!r}"
    return body


def cluster_names(node) -> list[str]:
    arns = ok(call(node, "ListClusters", {}))["clusterArns"]
    return [a.rsplit("/", 1)[-1] for a in arns]


def test_success_headers(server):
    resp = call(server, "ListClusters", {})
    assert resp.status == 200
    assert resp.headers.get("content-type", "").startswith(JSON_CT)
    assert resp.headers.get("x-amzn-requestid")
    assert isinstance(resp.json.get("clusterArns"), list)
    # request ids are unique per request
    assert call(server, "ListClusters", {}).headers["x-amzn-requestid"] != resp.headers["x-amzn-requestid"]


def test_any_path_is_accepted(server):
    """--endpoint-url http://h:p/ecs-api makes the CLI POST to /ecs-api (§1.2, §3.3)."""
    aws("ecs", "list-clusters", endpoint=server.endpoint + "/ecs-api")


def test_unknown_operation(server):
    assert_error(call(server, "FlyToTheMoon", {}), 400, "UnknownOperationException")
    assert_error(call(server, "x", {}, target="SomethingElse.ListClusters"), 400, "UnknownOperationException")


def test_missing_target_header(server):
    c = RawClient(server)
    body = b"{}"
    headers = sign_headers(server.api_port, f"{TARGET_PREFIX}.ListClusters", body)
    del headers["X-Amz-Target"]
    try:
        resp = c.send(body, headers)
    finally:
        c.close()
    assert resp.status == 400, resp
    assert resp.error_type in ("UnknownOperationException", "IncompleteSignatureException",
                               "InvalidSignatureException"), resp.body


def test_malformed_json(server):
    assert_error(call(server, "CreateCluster", raw_body=b'{"clusterName": '), 400, "SerializationException")
    assert_error(call(server, "CreateCluster", raw_body=b"[1, 2]"), 400, "SerializationException")


def test_wrong_member_type(server):
    body = assert_error(call(server, "CreateCluster", {"clusterName": 5}), 400,
                        ("SerializationException", "InvalidParameterException"))
    assert "clusterName" in body["message"], body


def test_oversized_body(server):
    name = unique("big")
    payload = json.dumps({"clusterName": name, "tags": [{"key": "k", "value": "v" * 200}],
                          "padding": "x" * (2 * 1024 * 1024)}).encode()
    headers = sign_headers(server.api_port, f"{TARGET_PREFIX}.CreateCluster", payload)
    headers["Host"] = f"127.0.0.1:{server.api_port}"
    conn = api_connection(server.api_port, 15)
    try:
        conn.putrequest("POST", "/", skip_host=True, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.putheader("Content-Length", str(len(payload)))
        conn.endheaders()
        try:
            for i in range(0, len(payload), 65536):
                conn.send(payload[i:i + 65536])
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # the server may answer and close before reading everything
        resp = conn.getresponse()
        status, ctype = resp.status, resp.getheader("Content-Type", "")
        body = resp.read()
    finally:
        conn.close()
    assert status == 400, f"HTTP {status} for a 2 MiB body: {body[:300]!r}"
    assert ctype.startswith(JSON_CT)
    assert "__type" in json.loads(body)
    # still healthy, and nothing was created
    assert server.healthz()["status"] == "ok"
    assert name not in cluster_names(server)


def test_unsigned_request(server):
    name = unique("unsigned")
    body = assert_error(call(server, "CreateCluster", {"clusterName": name}, sign=False), 400,
                        "MissingAuthenticationTokenException")
    assert name not in cluster_names(server)
    assert body


def test_wrong_secret(server):
    name = unique("wrongsecret")
    assert_error(call(server, "CreateCluster", {"clusterName": name}, secret_key="not-the-secret"), 400,
                 "InvalidSignatureException")
    assert name not in cluster_names(server)


def test_unknown_access_key(server):
    assert_error(call(server, "ListClusters", {}, access_key="AKIDUNKNOWN"), 400, "UnrecognizedClientException")


def test_tampered_body(server):
    """The signature covers the body: changing it after signing must fail."""
    name = unique("tamper")
    body = json.dumps({"clusterName": name}).encode()
    headers = sign_headers(server.api_port, f"{TARGET_PREFIX}.CreateCluster", body)
    headers["Host"] = f"127.0.0.1:{server.api_port}"
    c = RawClient(server)
    try:
        resp = c.send(json.dumps({"clusterName": name + "x"}).encode(), headers)
    finally:
        c.close()
    assert_error(resp, 400, "InvalidSignatureException")
    assert name + "x" not in cluster_names(server)


def test_expired_date(server):
    old = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(minutes=20)
    body = assert_error(call(server, "ListClusters", {}, when=old), 400, "InvalidSignatureException")
    assert "Signature expired" in body["message"], body


def test_future_date(server):
    future = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) + dt.timedelta(minutes=20)
    assert_error(call(server, "ListClusters", {}, when=future), 400, "InvalidSignatureException")


def test_date_within_skew_accepted(server):
    recent = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(minutes=5)
    assert call(server, "ListClusters", {}, when=recent).status == 200


def test_other_region_in_scope_accepted(server):
    """The region is whatever the client used (§2); the server accepts the scope's region."""
    resp = call(server, "ListClusters", {}, region="eu-west-1")
    assert resp.status == 200, resp.body


def test_keep_alive_many_requests(server):
    c = RawClient(server)
    try:
        for _ in range(50):
            assert c.call("ListClusters", {}).status == 200
    finally:
        c.close()


def test_healthz_unauthenticated(server):
    h = server.healthz()
    assert h["status"] == "ok" and h["isLeader"] is True and h["leaderId"] == h["nodeId"] == 1
    assert isinstance(h["lastApplied"], int)


def test_cli_wrong_secret(server):
    name = unique("cliwrong")
    res = aws("ecs", "create-cluster", "--cluster-name", name, node=server, secret_key="wrong", expect_rc=255)
    expect_cli_error(res, "InvalidSignatureException", "CreateCluster")
    assert name not in cluster_names(server)


def test_cli_unknown_key(server):
    res = aws("ecs", "list-clusters", node=server, access_key="AKIDNOPE", expect_rc=255)
    expect_cli_error(res, "UnrecognizedClientException", "ListClusters")


def test_cli_service_error_line(server):
    """A modeled error reaches the CLI as its exact error line (reference §1.4)."""
    res = aws("ecs", "delete-cluster", "--cluster", unique("nope"), node=server, expect_rc=255)
    err = expect_cli_error(res, "ClusterNotFoundException", "DeleteCluster")
    assert res.err.startswith("\n"), "the CLI prints a blank line before the error"
    assert err.message


def test_raw_error_body_shape(server):
    resp = call(server, "DeleteCluster", {"cluster": unique("nope")})
    body = assert_error(resp, 400, "ClusterNotFoundException")
    assert set(body) >= {"__type", "message"}


def test_request_id_on_every_response(server):
    for resp in (call(server, "ListClusters", {}),
                 call(server, "Nope", {}),
                 call(server, "ListClusters", {}, sign=False),
                 call(server, "CreateCluster", raw_body=b"{")):
        assert resp.headers.get("x-amzn-requestid"), f"HTTP {resp.status} without x-amzn-RequestId"


def test_server_survives_garbage(server):
    with socket.create_connection(("127.0.0.1", server.api_port), timeout=5) as s:
        s.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        try:
            s.recv(1024)
        except OSError:
            pass
    assert call(server, "ListClusters", {}).status == 200


def test_signed_create_then_visible(server):
    name = unique("signed")
    ok(call(server, "CreateCluster", {"clusterName": name}))
    assert ok(call(server, "DescribeClusters", {"clusters": [name]}))["clusters"][0]["clusterArn"] == \
        cluster_arn(name)
