"""Helpers for berth's integration tests.

Starts real `berth server` / `berth dev` processes on loopback ports and drives
them the way users do: the real AWS CLI (`aws`), boto3, and raw SigV4-signed
HTTP requests for protocol-level checks.

Nothing here sleeps for correctness: every wait polls a condition against a
deadline and fails with a message that says what it was waiting for.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional
from unittest import mock

REPO = Path(__file__).resolve().parents[1]


def _resolve(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else (REPO / p)


BERTH_BIN = _resolve(os.environ.get("BERTH_BIN", "target/debug/berth"))
AWS_BIN = _resolve(os.environ.get("AWS_BIN", ".venv/bin/aws"))

REGION = "us-east-1"
ACCOUNT = "123456789012"
ACCESS_KEY = "AKIDBERTHTEST"
SECRET_KEY = "berthtestsecret"
TARGET_PREFIX = "AmazonEC2ContainerServiceV20141113"
JSON_CT = "application/x-amz-json-1.1"

READY_TIMEOUT = float(os.environ.get("BERTH_READY_TIMEOUT", "20"))


def cluster_arn(name: str) -> str:
    return f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/{name}"


def td_arn(family: str, revision: int) -> str:
    return f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/{family}:{revision}"


def unique(prefix: str) -> str:
    """A name unique within the test session (valid ECS name characters)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------------------
# Ports
# ---------------------------------------------------------------------------

_handed_out: set[int] = set()
_port_lock = threading.Lock()


def free_port() -> int:
    """A loopback TCP port that is free right now (bind to port 0), never the
    same one twice in a session."""
    with _port_lock:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError("could not find a free loopback port")


# ---------------------------------------------------------------------------
# Waiting
# ---------------------------------------------------------------------------


def wait_until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.05,
               on_timeout: Optional[Callable[[], str]] = None) -> Any:
    """Poll `cond` until it returns a truthy value; return that value.
    Raises AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: Optional[BaseException] = None
    while True:
        try:
            v = cond()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - reported below
            last_exc = e
        if time.monotonic() >= deadline:
            extra = f"; last error: {last_exc!r}" if last_exc else ""
            if on_timeout:
                extra += "\n" + on_timeout()
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------

# Every node ever started in this session, so conftest can print their logs
# when a test fails.
ALL_NODES: list["BerthNode"] = []
# Likewise every agent and registry (defined in the agent section below).
ALL_AGENTS: list["AgentProcess"] = []
ALL_REGISTRIES: list["Registry"] = []


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def tls_context(ca_bundle: "Path | str") -> ssl.SSLContext:
    """An SSL context that trusts only `ca_bundle` (a cluster's ca.pem), as the AWS CLI
    with ca_bundle does."""
    return ssl.create_default_context(cafile=str(ca_bundle))


def node_for_port(port: int) -> Optional["BerthNode"]:
    return next((n for n in reversed(ALL_NODES) if n.api_port == port), None)


def api_connection(port: int, timeout: float, host: str = "127.0.0.1") -> http.client.HTTPConnection:
    """A connection to a berth API port: HTTPS verified by that node's cluster CA, or plain
    HTTP for a node started with --api-insecure-http."""
    node = node_for_port(port)
    if node is not None and not node.insecure_http:
        if not node.ca_bundle.exists():
            raise ConnectionRefusedError(f"{node} has no CA bundle yet")
        return http.client.HTTPSConnection(host, port, timeout=timeout, context=tls_context(node.ca_bundle))
    return http.client.HTTPConnection(host, port, timeout=timeout)


def _http_get_json(port: int, path: str, timeout: float = 2.0, host: str = "127.0.0.1") -> tuple[int, Any]:
    conn = api_connection(port, timeout, host)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        try:
            return resp.status, json.loads(body) if body else None
        except ValueError:
            return resp.status, body.decode("utf-8", "replace")
    finally:
        conn.close()


def server_env(**extra: str) -> dict[str, str]:
    """The environment for berth processes: ours, minus any BERTH_* settings
    (every flag reads BERTH_<FLAG>, so a stray variable would change the test)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env.setdefault("RUST_BACKTRACE", "1")
    env.update(extra)
    return env


def _kill_leftovers() -> None:
    for n in [*ALL_AGENTS, *ALL_NODES, *ALL_REGISTRIES]:
        p = getattr(n, "proc", None)
        if p is not None and p.poll() is None:
            p.kill()
    if _cli_home is not None:
        shutil.rmtree(_cli_home, ignore_errors=True)


atexit.register(_kill_leftovers)


class BerthNode:
    """One `berth server` process with its own data dir and log file."""

    def __init__(self, node_id: int = 1, join: Optional[str] = None, workdir: Optional[Path] = None,
                 extra_args: Optional[list[str]] = None, access_keys: Optional[list[str]] = None,
                 join_token: Optional[str] = None, host: str = "127.0.0.1"):
        """`join_token`: passed as `--join-token` (agents must present it); `host`: the
        address both the API and the Raft/cluster port listen on (agents in other
        network namespaces need a non-loopback one)."""
        self.node_id = node_id
        self.host = host
        self.join_token = join_token
        self.api_port = free_port()
        self.raft_port = free_port()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"berth-node{node_id}-"))
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "berth.log"
        self.join = join
        self.extra_args = list(extra_args or [])
        self.access_keys = access_keys or [f"{ACCESS_KEY}:{SECRET_KEY}"]
        # Servers that join one another must share a token (the legacy --join-token
        # admits servers, as k3s's server token does).
        if self.join and not self.join_token:
            self.join_token = JOIN_TOKEN
        self.proc: Optional[subprocess.Popen] = None
        self._log_fh = None
        ALL_NODES.append(self)

    # -- addresses -----------------------------------------------------
    @property
    def insecure_http(self) -> bool:
        return "--api-insecure-http" in self.extra_args

    @property
    def endpoint(self) -> str:
        scheme = "http" if self.insecure_http else "https"
        return f"{scheme}://{self.host}:{self.api_port}"

    @property
    def ca_bundle(self) -> Path:
        """The cluster CA bundle this server wrote (what clients verify its API with)."""
        return self.data_dir / "tls" / "ca.pem"

    def ca_hash(self) -> str:
        """The CA's sha256: hash as the server logs it (what --ca-cert-hash pins)."""
        m = re.findall(r"ca_hash=(sha256:[0-9a-f]{64})", strip_ansi(self.log_text()))
        assert m, f"{self} has not logged its CA hash yet"
        return m[-1]

    @property
    def raft_addr(self) -> str:
        """host:port of the Raft/cluster port (agents connect here too)."""
        return f"{self.host}:{self.raft_port}"

    def __repr__(self) -> str:
        return f"<berth node {self.node_id} api={self.api_port} raft={self.raft_port}>"

    # -- lifecycle -----------------------------------------------------
    def args(self) -> list[str]:
        a = [
            str(BERTH_BIN), "server",
            "--node-id", str(self.node_id),
            "--data-dir", str(self.data_dir),
            "--api-addr", f"{self.host}:{self.api_port}",
            "--raft-addr", self.raft_addr,
            "--region", REGION,
            "--account-id", ACCOUNT,
        ]
        for k in self.access_keys:
            a += ["--access-key", k]
        if self.join:
            a += ["--join", self.join]
        if self.join_token:
            a += ["--join-token", self.join_token]
        return a + self.extra_args

    def start(self) -> "BerthNode":
        if not BERTH_BIN.exists():
            raise AssertionError(f"berth binary not found at {BERTH_BIN} (set BERTH_BIN or run cargo build -p berth)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log_fh = open(self.log_path, "ab", buffering=0)
        self._log_fh.write(f"\n===== start: {' '.join(self.args())}\n".encode())
        env = server_env()
        self.proc = subprocess.Popen(self.args(), stdout=self._log_fh, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, cwd=self.workdir)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        if self._log_fh:
            self._log_fh.write(b"\n===== killed with SIGKILL by the test\n")
            self._log_fh.close()
            self._log_fh = None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._log_fh:
            self._log_fh.close()
            self._log_fh = None

    def restart(self) -> "BerthNode":
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- observation ---------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def healthz(self) -> Optional[dict]:
        """The /healthz JSON (whatever the status code), or None if unreachable."""
        try:
            _, body = _http_get_json(self.api_port, "/healthz", host=self.host)
        except OSError:
            return None
        return body if isinstance(body, dict) else None

    def status(self) -> Any:
        _, body = _http_get_json(self.api_port, "/status", host=self.host)
        return body

    def _not_dead(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self} exited with code {self.proc.returncode} before becoming ready.\n"
                                 f"--- log ---\n{tail(self.log_text())}")

    def wait_leader(self, timeout: float = READY_TIMEOUT) -> dict:
        """Wait until this node reports itself leader (single-node readiness)."""
        def ok():
            self._not_dead()
            h = self.healthz()
            return h if h and h.get("isLeader") is True else None
        return wait_until(ok, timeout, f"{self} to report isLeader=true on /healthz",
                          on_timeout=lambda: f"last /healthz: {self.healthz()}\n--- log ---\n{tail(self.log_text())}")

    def wait_knows_leader(self, timeout: float = READY_TIMEOUT) -> dict:
        """Wait until this node knows a leader (cluster member readiness)."""
        def ok():
            self._not_dead()
            h = self.healthz()
            return h if h and h.get("leaderId") is not None else None
        return wait_until(ok, timeout, f"{self} to know a leader on /healthz",
                          on_timeout=lambda: f"last /healthz: {self.healthz()}\n--- log ---\n{tail(self.log_text())}")


def tail(text: str, lines: int = 150) -> str:
    return "\n".join(text.splitlines()[-lines:])


def start_single(workdir: Optional[Path] = None, **kw) -> BerthNode:
    node = BerthNode(1, workdir=workdir, **kw).start()
    node.wait_leader()
    return node


def voters_from_status(st: Any) -> set[int]:
    """Voter ids from /status (openraft RaftMetrics JSON). Handles
    `membership_config.membership.configs` (openraft 0.9 serde) and a plain
    `voters` list; uses the last config of a joint membership."""
    found: list[set[int]] = []

    def walk(o: Any) -> None:
        if isinstance(o, dict):
            if "configs" in o and isinstance(o["configs"], list) and o["configs"]:
                last = o["configs"][-1]
                if isinstance(last, (list, dict)):
                    found.append({int(x) for x in last})
                    return
            if "voters" in o and isinstance(o["voters"], (list, dict)):
                found.append({int(x) for x in o["voters"]})
                return
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(st)
    return found[0] if found else set()


class BerthCluster:
    """Three (or n) `berth server` processes: node 1 bootstraps, the others join it."""

    def __init__(self, size: int = 3):
        self.nodes: list[BerthNode] = []
        first = BerthNode(1, join_token=JOIN_TOKEN)
        self.nodes.append(first)
        for i in range(2, size + 1):
            self.nodes.append(BerthNode(i, join=first.raft_addr))

    def start(self) -> "BerthCluster":
        first = self.nodes[0]
        first.start()
        first.wait_leader()
        for n in self.nodes[1:]:
            n.start()
        want = {n.node_id for n in self.nodes}
        wait_until(lambda: voters_from_status(first.status()) >= want, READY_TIMEOUT,
                   f"/status on node 1 to list voters {sorted(want)}",
                   on_timeout=lambda: f"last /status: {json.dumps(_safe(first.status))[:3000]}")
        for n in self.nodes:
            n.wait_knows_leader()
        return self

    def node(self, node_id: int) -> BerthNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    def leader(self, among: Optional[list[BerthNode]] = None, timeout: float = READY_TIMEOUT) -> BerthNode:
        """The node that /healthz says is leader, agreed on by all `among` nodes."""
        nodes = among or [n for n in self.nodes if n.alive()]

        def find():
            ids = set()
            for n in nodes:
                h = n.healthz()
                if not h or h.get("leaderId") is None:
                    return None
                ids.add(h["leaderId"])
            if len(ids) != 1:
                return None
            lid = ids.pop()
            ld = next((n for n in nodes if n.node_id == lid), None)
            if ld is None:
                return None
            h = ld.healthz()
            return ld if h and h.get("isLeader") else None

        return wait_until(find, timeout, f"nodes {[n.node_id for n in nodes]} to agree on a live leader",
                          on_timeout=lambda: "\n".join(f"{n}: {n.healthz()}" for n in nodes))

    def cleanup(self) -> None:
        for n in self.nodes:
            n.stop()
        for n in self.nodes:
            shutil.rmtree(n.workdir, ignore_errors=True)


def _safe(fn):
    try:
        return fn()
    except Exception as e:  # noqa: BLE001
        return repr(e)


# ---------------------------------------------------------------------------
# The AWS CLI
# ---------------------------------------------------------------------------


class CliResult(NamedTuple):
    rc: int
    json: Any
    out: str
    err: str

    def error(self) -> Optional["CliError"]:
        return parse_cli_error(self.err)


class CliError(NamedTuple):
    type: str
    operation: str
    message: str


_ERR_RE = re.compile(r"An error occurred \(([^)]+)\) when calling the (\w+) operation(?: \([^)]*\))?: (.*)")


def parse_cli_error(stderr: str) -> Optional[CliError]:
    m = _ERR_RE.search(stderr)
    return CliError(m.group(1), m.group(2), m.group(3).strip()) if m else None


_cli_home: Optional[Path] = None


def cli_home() -> Path:
    """An empty HOME shared by CLI invocations (no ~/.aws files)."""
    global _cli_home
    if _cli_home is None:
        _cli_home = Path(tempfile.mkdtemp(prefix="berth-cli-home-"))
    return _cli_home


def base_env(home: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_PAGER": "",
    }


def aws(*args: str, node: Optional[BerthNode] = None, endpoint: Optional[str] = None,
        expect_rc: Optional[int] = 0, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY,
        env: Optional[dict[str, str]] = None, home: Optional[Path] = None,
        timeout: float = 120, cwd: Optional[Path] = None) -> CliResult:
    """Run the real AWS CLI against `node` (or `endpoint`) with an isolated environment.

    `env`, when given, replaces the generated environment entirely (used to test
    profiles). Returns CliResult(rc, parsed JSON or None, stdout, stderr); asserts
    the exit code unless expect_rc is None.
    """
    if env is None:
        env = base_env(home or cli_home())
        env.update({
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_MAX_ATTEMPTS": "1",
        })
    argv = [str(AWS_BIN)]
    if node is None and endpoint:
        node = next((n for n in reversed(ALL_NODES) if endpoint.startswith(n.endpoint)), None)
    if node is not None:
        endpoint = endpoint or node.endpoint
        if "AWS_CA_BUNDLE" not in env and not node.insecure_http:
            env = {**env, "AWS_CA_BUNDLE": str(node.ca_bundle)}
    if endpoint:
        argv += ["--endpoint-url", endpoint]
    argv += ["--output", "json", *args]
    p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    parsed = None
    if p.stdout.strip():
        try:
            parsed = json.loads(p.stdout)
        except ValueError:
            parsed = None
    res = CliResult(p.returncode, parsed, p.stdout, p.stderr)
    if expect_rc is not None and p.returncode != expect_rc:
        raise AssertionError(
            f"`aws {' '.join(args)}` exited {p.returncode}, expected {expect_rc}\n"
            f"--- stdout ---\n{p.stdout}\n--- stderr ---\n{p.stderr}")
    return res


def expect_cli_error(res: CliResult, type_: str | tuple[str, ...], operation: str,
                     contains: Optional[str | list[str]] = None) -> CliError:
    """Assert the CLI failed the way a user sees a service error: exit 255 and the
    `An error occurred (<Type>) when calling the <Op> operation: <message>` line."""
    assert res.rc == 255, f"expected exit 255, got {res.rc}\nstdout={res.out}\nstderr={res.err}"
    err = parse_cli_error(res.err)
    assert err is not None, f"no 'An error occurred' line on stderr:\n{res.err}"
    types = (type_,) if isinstance(type_, str) else type_
    assert err.type in types, f"error type {err.type!r}, expected one of {types}: {err}"
    assert err.operation == operation, f"operation {err.operation!r}, expected {operation!r}"
    assert err.message, f"empty error message: {res.err}"
    for c in ([contains] if isinstance(contains, str) else (contains or [])):
        assert c in err.message, f"error message {err.message!r} does not mention {c!r}"
    return err


# ---------------------------------------------------------------------------
# boto3
# ---------------------------------------------------------------------------


def boto3_client(node: BerthNode, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY,
                 max_attempts: int = 1, read_timeout: float = 30):
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                                    region_name=REGION)
    return session.client("ecs", endpoint_url=node.endpoint,
                          verify=False if node.insecure_http else str(node.ca_bundle),
                          config=Config(retries={"max_attempts": max_attempts, "mode": "standard"},
                                        connect_timeout=5, read_timeout=read_timeout))


# ---------------------------------------------------------------------------
# Raw signed HTTP
# ---------------------------------------------------------------------------


class RawResponse(NamedTuple):
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None

    @property
    def error_type(self) -> Optional[str]:
        j = self.json
        if isinstance(j, dict) and "__type" in j:
            t = j["__type"]
            t = t.split(":", 1)[0]
            return t.rsplit("#", 1)[-1]
        return None


def sign_headers(port: int, target: str, body: bytes, access_key: str = ACCESS_KEY,
                 secret_key: str = SECRET_KEY, region: str = REGION,
                 when: Optional[_dt.datetime] = None, path: str = "/") -> dict[str, str]:
    """Headers exactly as botocore's SigV4Auth would produce them (scope service `ecs`)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    req = AWSRequest(method="POST", url=f"http://127.0.0.1:{port}{path}", data=body,
                     headers={"Content-Type": JSON_CT, "X-Amz-Target": target})
    signer = SigV4Auth(Credentials(access_key, secret_key), "ecs", region)
    if when is None:
        signer.add_auth(req)
    else:
        with mock.patch("botocore.auth.get_current_datetime", return_value=when):
            signer.add_auth(req)
    return {k: v for k, v in req.headers.items()}


class RawClient:
    """A keep-alive HTTP/1.1 connection to one node, for signed JSON 1.1 calls.
    Not thread-safe: use one per thread."""

    def __init__(self, node: BerthNode | int, timeout: float = 10):
        self.port = node if isinstance(node, int) else node.api_port
        self.timeout = timeout
        self.conn: Optional[http.client.HTTPConnection] = None

    def close(self) -> None:
        if self.conn:
            self.conn.close()
            self.conn = None

    def send(self, body: bytes, headers: dict[str, str], path: str = "/") -> RawResponse:
        if self.conn is None:
            self.conn = api_connection(self.port, self.timeout)
        try:
            self.conn.request("POST", path, body=body, headers=headers)
            resp = self.conn.getresponse()
            data = resp.read()
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
            if resp.will_close:
                self.close()
            return RawResponse(resp.status, hdrs, data)
        except Exception:
            self.close()
            raise

    def call(self, op: str, payload: Any = None, *, raw_body: Optional[bytes] = None, sign: bool = True,
             target: Optional[str] = None, **sign_kw) -> RawResponse:
        body = raw_body if raw_body is not None else json.dumps(payload if payload is not None else {}).encode()
        target = target or f"{TARGET_PREFIX}.{op}"
        if sign:
            headers = sign_headers(self.port, target, body, **sign_kw)
        else:
            headers = {"Content-Type": JSON_CT, "X-Amz-Target": target}
        headers["Host"] = f"127.0.0.1:{self.port}"
        return self.send(body, headers)


def call(node: BerthNode, op: str, payload: Any = None, **kw) -> RawResponse:
    c = RawClient(node)
    try:
        return c.call(op, payload, **kw)
    finally:
        c.close()


def ok(resp: RawResponse) -> Any:
    assert resp.status == 200, f"HTTP {resp.status}: {resp.body[:2000]!r}"
    return resp.json


# ---------------------------------------------------------------------------
# Fixtures data
# ---------------------------------------------------------------------------

# The tutorial definition (reference §7.2 / §11.3), exactly as the CLI sends it.
AUTH_TASKDEF = {
    "family": "auth",
    "containerDefinitions": [{
        "name": "auth", "image": "srirajan/auth", "cpu": 512, "memory": 512,
        "portMappings": [{"protocol": "tcp", "containerPort": 10080, "hostPort": 0}],
        "essential": True, "dockerLabels": {"service": "auth"},
    }],
}


def simple_taskdef(family: str, image: str = "busybox") -> dict:
    return {"family": family,
            "containerDefinitions": [{"name": "main", "image": image, "memory": 64, "essential": True}]}


# ---------------------------------------------------------------------------
# Agents: containerd, a registry, network namespaces, tasks
# ---------------------------------------------------------------------------
#
# The agent tests run the real `berth agent` against the machine's containerd
# (started by scripts/install-deps.sh), the distribution's CNI plugins and a
# `docker-registry` on loopback. Assertions go through the AWS CLI and the
# `berth` client commands; `ctr` is used for fault injection and cleanup only.

JOIN_TOKEN = "berth-test-join-token"
CONTAINERD_SOCK = Path("/run/containerd/containerd.sock")
CTR = shutil.which("ctr") or "/usr/bin/ctr"
DOCKER_REGISTRY = Path("/usr/bin/docker-registry")
TEST_REPO = "berth-test"
# Every agent of this session uses its own containerd namespace `<SESSION_NS>-<agent id>`.
SESSION_NS = f"berthtest-{os.getpid()}-{uuid.uuid4().hex[:6]}"
DYNAMIC_PORTS = range(49153, 65536)
# The attribute every AgentProcess adds, so a test can tell its container instances apart.
AGENT_ID_ATTRIBUTE = "berth-test-agent"


def require_containerd() -> None:
    """Skip only when asked to (BERTH_SKIP_CONTAINERD=1); otherwise a machine that
    cannot run the agent tests fails them loudly with what is missing."""
    import pytest

    if os.environ.get("BERTH_SKIP_CONTAINERD") == "1":
        pytest.skip("BERTH_SKIP_CONTAINERD=1: skipping tests that need root, containerd and CNI")
    if os.geteuid() != 0:
        pytest.fail("the agent tests need root (containerd, CNI, network namespaces); run them as root "
                    "or set BERTH_SKIP_CONTAINERD=1 to skip them", pytrace=False)
    if not CONTAINERD_SOCK.is_socket():
        pytest.fail(f"containerd is not running ({CONTAINERD_SOCK} is absent): run scripts/install-deps.sh, "
                    "which starts it, or set BERTH_SKIP_CONTAINERD=1", pytrace=False)
    r = ctr("version", check=False, timeout=10)
    if r.returncode != 0:
        pytest.fail(f"containerd does not answer on {CONTAINERD_SOCK}: {r.stderr.strip()} "
                    "(run scripts/install-deps.sh)", pytrace=False)


def run_cmd(*argv: str, check: bool = True, timeout: float = 30,
            input: Optional[str] = None) -> subprocess.CompletedProcess:
    """Run a helper command (ip, ctr, nsenter); with check, fail naming it and its stderr."""
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout,
                       input=input, stdin=None if input is not None else subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise AssertionError(f"`{' '.join(map(str, argv))}` exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def ctr(*args: str, namespace: Optional[str] = None, check: bool = True,
        timeout: float = 30) -> subprocess.CompletedProcess:
    argv = [CTR, "--address", str(CONTAINERD_SOCK)]
    if namespace:
        argv += ["--namespace", namespace]
    return run_cmd(*argv, *args, check=check, timeout=timeout)


def _ctr_ids(namespace: str, *what: str) -> list[str]:
    r = ctr(*what, "ls", "-q", namespace=namespace, check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()] if r.returncode == 0 else []


def cleanup_containerd_namespace(namespace: str) -> None:
    """Best effort: kill and delete every task, container, image and lease of a
    containerd namespace, then the namespace itself. Cleanup only, never an assertion."""
    for t in _ctr_ids(namespace, "tasks"):
        ctr("tasks", "kill", "--signal", "SIGKILL", t, namespace=namespace, check=False)
    for t in _ctr_ids(namespace, "tasks"):
        ctr("tasks", "rm", "--force", t, namespace=namespace, check=False)
    for c in _ctr_ids(namespace, "containers"):
        ctr("containers", "rm", c, namespace=namespace, check=False)
    for lease in _ctr_ids(namespace, "leases"):
        ctr("leases", "rm", lease, namespace=namespace, check=False)
    images = _ctr_ids(namespace, "images")
    if images:
        ctr("images", "rm", "--sync", *images, namespace=namespace, check=False)
    deadline = time.monotonic() + 10
    while True:
        r = ctr("namespaces", "rm", namespace, check=False)
        if r.returncode == 0 or "not found" in r.stderr or time.monotonic() > deadline:
            break
        # content and snapshots go away with containerd's garbage collection
        time.sleep(0.2)


def http_get(url: str, timeout: float = 3) -> tuple[int, str]:
    """GET `url`; (status, body). Raises OSError when nothing answers."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")
    except urllib.error.URLError as e:
        raise OSError(f"GET {url}: {e.reason}") from e


def http_answers(url: str, timeout: float = 2) -> bool:
    try:
        http_get(url, timeout)
        return True
    except (OSError, http.client.HTTPException):
        return False


def host_port_is_free(port: int) -> bool:
    """Whether a process on the host can take `port` again and be reached on it: the task
    that had it left no listener and no forwarding rule behind."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            srv.bind(("0.0.0.0", port))
        except OSError:
            return False
        srv.listen(1)
        srv.settimeout(2)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                conn, _ = srv.accept()
                conn.close()
                return True
        except OSError:
            return False


# -- registry ------------------------------------------------------------


class Registry:
    """A `docker-registry serve` on `host`:<free port> with its storage in a temp dir,
    optionally with basic auth (an htpasswd file with a bcrypt hash)."""

    def __init__(self, host: str = "127.0.0.1", auth: Optional[tuple[str, str]] = None,
                 workdir: Optional[Path] = None):
        self.host = host
        self.port = free_port()
        self.auth = auth
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="berth-registry-"))
        self.log_path = self.workdir / "registry.log"
        self.proc: Optional[subprocess.Popen] = None
        self._log_fh = None
        self.log_label = f"registry {self.addr}"
        ALL_REGISTRIES.append(self)

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def image(self, tag: str = "1", repo: str = TEST_REPO) -> str:
        """The image reference the test image was pushed as, e.g. 127.0.0.1:5123/berth-test:1."""
        return f"{self.addr}/{repo}:{tag}"

    def _config(self) -> str:
        cfg = (
            "version: 0.1\n"
            "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.workdir / 'storage'}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.addr}\n  secret: berth-test-secret\n"
        )
        if self.auth:
            import bcrypt

            user, password = self.auth
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=6, prefix=b"2a")).decode()
            (self.workdir / "htpasswd").write_text(f"{user}:{hashed}\n")
            cfg += f"auth:\n  htpasswd:\n    realm: berth-test\n    path: {self.workdir / 'htpasswd'}\n"
        return cfg

    def start(self, timeout: float = READY_TIMEOUT) -> "Registry":
        if not DOCKER_REGISTRY.exists():
            raise AssertionError(f"{DOCKER_REGISTRY} not found: run scripts/install-deps.sh (docker-registry)")
        (self.workdir / "storage").mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.yml"
        config.write_text(self._config())
        self._log_fh = open(self.log_path, "ab", buffering=0)
        self.proc = subprocess.Popen([str(DOCKER_REGISTRY), "serve", str(config)], stdout=self._log_fh,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.workdir)

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"docker-registry exited {self.proc.returncode}:\n{tail(self.log_text())}")
            status, _ = _http_get_json(self.port, "/v2/", host=self.host)
            return status in (200, 401)

        wait_until(up, timeout, f"docker-registry on {self.addr} to answer GET /v2/",
                   on_timeout=lambda: tail(self.log_text()))
        return self

    def push_test_image(self, tags: tuple[str, ...] = ("1", "latest"), repo: str = TEST_REPO,
                        cmd: Optional[list[str]] = None) -> None:
        import images

        for tag in tags:
            images.push_to_registry(self.addr, repo, tag, cmd=cmd, auth=self.auth)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._log_fh:
            self._log_fh.close()
            self._log_fh = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


# -- agent ---------------------------------------------------------------


class AgentProcess:
    """One `berth agent` process (optionally inside a network namespace) with its own
    data dir, containerd namespace and log file.

        berth agent --server <server's cluster (raft) host:port> --cluster <c>
                    --join-token <t> --data-dir <d> --namespace <containerd ns>
                    [--attribute k=v ...] [--availability-zone z] [--host-ip ip]
                    [--cni-bridge name --cni-subnet cidr] [--insecure-registry addr ...]
                    [--registry-credential NAME=user:password ...]

    Every agent also gets `--attribute berth-test-agent=<self.id>` so a test can find
    its container instance. In a network namespace it runs under
    `nsenter --net=/run/netns/<netns>` (not `ip netns exec`, which would also give it a
    private mount namespace, hiding the task network namespaces it mounts from runc).
    """

    def __init__(self, server: "BerthNode | str", cluster: str, *, name: str = "agent",
                 join_token: str = JOIN_TOKEN, workdir: Optional[Path] = None,
                 attributes: Optional[dict[str, str]] = None, availability_zone: Optional[str] = None,
                 host_ip: Optional[str] = None, namespace: Optional[str] = None,
                 cni_bridge: Optional[str] = None, cni_subnet: Optional[str] = None,
                 insecure_registries: tuple[str, ...] | list[str] = (),
                 registry_credentials: Optional[dict[str, str]] = None,
                 netns: Optional[str] = None, extra_args: Optional[list[str]] = None,
                 pin_ca: bool = True):
        """`pin_ca`: pass the server's CA hash as --ca-cert-hash (the documented join);
        without it the agent verifies the servers by the join token alone."""
        self.server_addr = server.raft_addr if isinstance(server, BerthNode) else server
        self.server_node = server if isinstance(server, BerthNode) else None
        self.pin_ca = pin_ca
        self.cluster = cluster
        self.id = unique(name)
        self.join_token = join_token
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"berth-{name}-"))
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "agent.log"
        self.attributes = dict(attributes or {})
        self.availability_zone = availability_zone
        self.host_ip = host_ip
        self.namespace = namespace or f"{SESSION_NS}-{self.id}"
        self.cni_bridge = cni_bridge
        self.cni_subnet = cni_subnet
        self.insecure_registries = list(insecure_registries)
        self.registry_credentials = dict(registry_credentials or {})
        self.netns = netns
        self.extra_args = list(extra_args or [])
        self.proc: Optional[subprocess.Popen] = None
        self._log_fh = None
        self.log_label = f"berth agent {self.id}" + (f" (netns {netns})" if netns else "")
        ALL_AGENTS.append(self)

    def __repr__(self) -> str:
        return f"<{self.log_label} ns={self.namespace}>"

    def args(self) -> list[str]:
        a = [
            str(BERTH_BIN), "agent",
            "--server", self.server_addr,
            "--cluster", self.cluster,
            "--join-token", self.join_token,
            "--data-dir", str(self.data_dir),
            "--namespace", self.namespace,
        ]
        if self.pin_ca and self.server_node is not None and "--ca-cert-hash" not in self.extra_args:
            a += ["--ca-cert-hash", self.server_node.ca_hash()]
        for k, v in {**self.attributes, AGENT_ID_ATTRIBUTE: self.id}.items():
            a += ["--attribute", f"{k}={v}"]
        if self.availability_zone:
            a += ["--availability-zone", self.availability_zone]
        if self.host_ip:
            a += ["--host-ip", self.host_ip]
        if self.cni_bridge:
            a += ["--cni-bridge", self.cni_bridge]
        if self.cni_subnet:
            a += ["--cni-subnet", self.cni_subnet]
        for r in self.insecure_registries:
            a += ["--insecure-registry", r]
        for name, cred in self.registry_credentials.items():
            a += ["--registry-credential", f"{name}={cred}"]
        a += self.extra_args
        if self.netns:
            a = ["nsenter", f"--net=/run/netns/{self.netns}", "--", *a]
        return a

    # -- lifecycle -----------------------------------------------------
    def start(self) -> "AgentProcess":
        if not BERTH_BIN.exists():
            raise AssertionError(f"berth binary not found at {BERTH_BIN} (set BERTH_BIN or run cargo build -p berth)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log_fh = open(self.log_path, "ab", buffering=0)
        self._log_fh.write(f"\n===== start: {' '.join(self.args())}\n".encode())
        self.proc = subprocess.Popen(self.args(), stdout=self._log_fh, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=server_env(), cwd=self.workdir)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def kill9(self) -> None:
        """SIGKILL, as a crash would (its containers keep running under their shims)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        if self._log_fh:
            self._log_fh.write(b"\n===== killed with SIGKILL by the test\n")
            self._log_fh.close()
            self._log_fh = None

    def stop(self, timeout: float = 15) -> Optional[int]:
        """SIGTERM and wait; returns the exit code (None if it was not running)."""
        rc = None
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                rc = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                if self._log_fh:
                    self._log_fh.write(f"\n===== did not exit within {timeout}s of SIGTERM; killed\n".encode())
        if self._log_fh:
            self._log_fh.close()
            self._log_fh = None
        return rc

    def restart(self) -> "AgentProcess":
        """Start again with the same data dir and flags (after kill9() or stop())."""
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        """Stop the agent, remove what it left in containerd, iptables and its CNI bridge,
        and its files. (Inside a network namespace, that namespace goes with the hosts.)"""
        self.stop()
        cleanup_containerd_namespace(self.namespace)
        if not self.netns:
            if self.cni_subnet:
                cleanup_cni_nat_rules(self.cni_subnet)
            if self.cni_bridge:
                run_cmd("ip", "link", "del", self.cni_bridge, check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- observation ---------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def logs(self) -> str:
        return self.log_text()

    def container_instance(self, node: BerthNode) -> Optional[dict]:
        """This agent's container instance as DescribeContainerInstances shows it (or None)."""
        arns = aws("ecs", "list-container-instances", "--cluster", self.cluster, node=node).json
        arns = arns.get("containerInstanceArns", [])
        if not arns:
            return None
        d = aws("ecs", "describe-container-instances", "--cluster", self.cluster,
                "--container-instances", *arns, node=node).json
        for ci in d.get("containerInstances", []):
            attrs = {a["name"]: a.get("value") for a in ci.get("attributes", [])}
            if attrs.get(AGENT_ID_ATTRIBUTE) == self.id:
                return ci
        return None

    def _not_dead(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self} exited with code {self.proc.returncode}.\n--- log ---\n{tail(self.log_text())}")

    def wait_connected(self, node: BerthNode, timeout: float = 30) -> dict:
        """Wait until the server shows this agent's container instance ACTIVE with
        agentConnected true; return it."""
        def ok():
            self._not_dead()
            ci = self.container_instance(node)
            return ci if ci and ci.get("agentConnected") is True and ci.get("status") == "ACTIVE" else None
        return wait_until(ok, timeout, f"{self} to register and show agentConnected=true", interval=0.3,
                          on_timeout=lambda: f"--- agent log ---\n{tail(self.log_text())}")

    def wait_disconnected(self, node: BerthNode, timeout: float = 30) -> dict:
        def ok():
            ci = self.container_instance(node)
            return ci if ci and ci.get("agentConnected") is False else None
        return wait_until(ok, timeout, f"the server to show {self} with agentConnected=false", interval=0.3)


def cleanup_cni_nat_rules(subnet: str) -> None:
    """Best effort, cleanup only: delete the nat rules and chains the CNI plugins
    (portmap, bridge ipMasq) made for addresses in `subnet` and that are still there
    after the agent stopped, so a later test's host port is not DNATed to a dead address."""
    import ipaddress

    net = ipaddress.ip_network(subnet, strict=False)
    saved = run_cmd("iptables-save", "-t", "nat", check=False).stdout.splitlines()
    raw = [line for line in saved if line.startswith("-A ")]
    rules = [line.split() for line in raw]

    def ours(words: list[str]) -> bool:
        for flag in ("--to-destination", "-s", "-d"):
            if flag in words:
                i = words.index(flag) + 1
                if i < len(words):
                    addr = words[i].split(":")[0].split("/")[0]
                    try:
                        if ipaddress.ip_address(addr) in net:
                            return True
                    except ValueError:
                        pass
        return False

    # per-container chains: CNI-DN-* holding a DNAT to one of our addresses; CNI-* that
    # POSTROUTING jumps to for one of our source addresses
    chains = {w[1] for w in rules if w[1].startswith("CNI-DN-") and "--to-destination" in w and ours(w)}
    chains |= {w[w.index("-j") + 1] for w in rules
               if w[1] == "POSTROUTING" and "-j" in w and ours(w) and w[w.index("-j") + 1].startswith("CNI-")}
    if not chains:
        return
    for line, w in zip(raw, rules):
        if "-j" in w and w[w.index("-j") + 1] in chains and w[1] not in chains:
            # iptables-save quotes like a shell, so the saved rule is deleted through sh
            run_cmd("sh", "-c", "iptables -t nat -D " + line[3:], check=False)
    for c in chains:
        run_cmd("iptables", "-t", "nat", "-F", c, check=False)
        run_cmd("iptables", "-t", "nat", "-X", c, check=False)


def remove_task_netns(task_ids: "set[str] | list[str]") -> None:
    """Best effort, cleanup only: delete network namespaces named after these tasks."""
    names = run_cmd("ip", "netns", "list", check=False).stdout.split()
    for n in names:
        if any(tid and tid in n for tid in task_ids):
            run_cmd("ip", "netns", "del", n, check=False)


# -- hosts: network namespaces as machines ---------------------------------


class NetnsHosts:
    """Two "machines" on one: network namespaces berth-h1 (10.99.0.11) and berth-h2
    (10.99.0.12), each with a veth to the root-namespace bridge berthtest-br
    (10.99.0.1/24) and a default route through it."""

    BRIDGE = "berthtest-br"
    GATEWAY = "10.99.0.1"
    PREFIX = 24
    HOSTS = (("berth-h1", "10.99.0.11"), ("berth-h2", "10.99.0.12"))

    @staticmethod
    def veth(ns: str) -> str:
        return f"bt-{ns}"[:15]  # root-side end of the namespace's veth

    def ip_of(self, ns: str) -> str:
        return dict(self.HOSTS)[ns]

    @property
    def names(self) -> list[str]:
        return [ns for ns, _ in self.HOSTS]

    def run(self, ns: str, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a command inside a host's network namespace."""
        return run_cmd("nsenter", f"--net=/run/netns/{ns}", "--", *argv, check=check, timeout=timeout)

    def create(self) -> "NetnsHosts":
        self.teardown()  # whatever a crashed earlier run left behind
        run_cmd("ip", "link", "add", self.BRIDGE, "type", "bridge")
        run_cmd("ip", "addr", "add", f"{self.GATEWAY}/{self.PREFIX}", "dev", self.BRIDGE)
        run_cmd("ip", "link", "set", self.BRIDGE, "up")
        for ns, addr in self.HOSTS:
            run_cmd("ip", "netns", "add", ns)
            run_cmd("ip", "link", "add", self.veth(ns), "type", "veth", "peer", "name", "eth0", "netns", ns)
            run_cmd("ip", "link", "set", self.veth(ns), "master", self.BRIDGE, "up")
            run_cmd("ip", "-n", ns, "link", "set", "lo", "up")
            run_cmd("ip", "-n", ns, "addr", "add", f"{addr}/{self.PREFIX}", "dev", "eth0")
            run_cmd("ip", "-n", ns, "link", "set", "eth0", "up")
            run_cmd("ip", "-n", ns, "route", "add", "default", "via", self.GATEWAY)
            # forwarding is per network namespace; the agent's CNI bridge needs it there
            self.run(ns, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
        return self

    def teardown(self) -> None:
        for ns, _ in self.HOSTS:
            run_cmd("ip", "netns", "del", ns, check=False)
            run_cmd("ip", "link", "del", self.veth(ns), check=False)
        run_cmd("ip", "link", "del", self.BRIDGE, check=False)


# -- containerd itself -------------------------------------------------------


def containerd_pids() -> list[int]:
    """The containerd daemon's pid(s) (not its shims)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() == "containerd":
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def restart_containerd(timeout: float = 30) -> None:
    """Restart containerd the way scripts/install-deps.sh starts it (systemd if it is
    PID 1, else a detached `containerd` logging to /var/log/berth-ci-containerd.log).
    Its shims, and so the running containers, survive."""
    systemd = Path("/proc/1/comm").read_text().strip() == "systemd" and shutil.which("systemctl")
    if systemd:
        run_cmd("systemctl", "restart", "containerd", timeout=timeout)
    else:
        old = containerd_pids()
        for pid in old:
            os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not any(Path(f"/proc/{p}").exists() for p in old), timeout,
                   f"containerd (pids {old}) to exit after SIGTERM")
        run_cmd("sh", "-c", "setsid nohup containerd >>/var/log/berth-ci-containerd.log 2>&1 </dev/null &")
    wait_until(lambda: ctr("version", check=False, timeout=5).returncode == 0, timeout,
               f"containerd to answer on {CONTAINERD_SOCK} again")


# -- berth client commands (logs, image import) ------------------------------


def berth_client_env(node: Optional[BerthNode] = None) -> dict[str, str]:
    """What `berth logs` & co. get: the same credentials and region the AWS CLI gets,
    and the endpoint as the standard AWS_ENDPOINT_URL(_ECS)."""
    env = base_env(cli_home())
    env.update({
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "RUST_BACKTRACE": "1",
    })
    if node is not None:
        env["AWS_ENDPOINT_URL"] = node.endpoint
        env["AWS_ENDPOINT_URL_ECS"] = node.endpoint
        if not node.insecure_http:
            env["AWS_CA_BUNDLE"] = str(node.ca_bundle)
    return env


def berth(*args: str, node: Optional[BerthNode] = None, expect_rc: Optional[int] = 0,
          timeout: float = 60, env: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess:
    """Run a `berth` client command (e.g. `logs`, `image import`); `env` adds variables."""
    p = subprocess.run([str(BERTH_BIN), *args], capture_output=True, text=True, timeout=timeout,
                       env={**berth_client_env(node), **(env or {})}, stdin=subprocess.DEVNULL)
    if expect_rc is not None and p.returncode != expect_rc:
        raise AssertionError(f"`berth {' '.join(args)}` exited {p.returncode}, expected {expect_rc}\n"
                             f"--- stdout ---\n{p.stdout}\n--- stderr ---\n{p.stderr}")
    return p


def berth_popen(*args: str, node: Optional[BerthNode] = None,
                env: Optional[dict[str, str]] = None) -> subprocess.Popen:
    """Start a long-running `berth` client command (e.g. `logs -f`), stdout piped as text."""
    return subprocess.Popen([str(BERTH_BIN), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**berth_client_env(node), **(env or {})}, stdin=subprocess.DEVNULL)


# -- servers and clusters for agents -----------------------------------------


def start_agent_server(host: str = "127.0.0.1", extra_args: Optional[list[str]] = None,
                       cluster: Optional[str] = None) -> tuple[BerthNode, str]:
    """A single `berth server` that accepts agents (--join-token JOIN_TOKEN) and a
    cluster created on it with the AWS CLI; returns (node, cluster name)."""
    node = BerthNode(1, join_token=JOIN_TOKEN, host=host, extra_args=extra_args).start()
    try:
        node.wait_leader()
        cluster = cluster or unique("agents")
        aws("ecs", "create-cluster", "--cluster-name", cluster, node=node)
    except BaseException:
        node.cleanup()
        raise
    return node, cluster


# -- tasks through the AWS CLI -------------------------------------------------


def task_id(task_arn: str) -> str:
    return task_arn.rsplit("/", 1)[-1]


def register_task_definition(node: BerthNode, taskdef: dict) -> dict:
    """RegisterTaskDefinition; returns the taskDefinition."""
    return aws("ecs", "register-task-definition", "--cli-input-json", json.dumps(taskdef),
               node=node).json["taskDefinition"]


def run_task_raw(node: BerthNode, cluster: str, task_definition: str, *, count: int = 1,
                 started_by: Optional[str] = None, network_configuration: Optional[dict] = None,
                 overrides: Optional[dict] = None, placement_strategy: Optional[list[dict]] = None,
                 expect_rc: Optional[int] = 0) -> CliResult:
    args = ["ecs", "run-task", "--cluster", cluster, "--task-definition", task_definition,
            "--count", str(count)]
    if started_by:
        args += ["--started-by", started_by]
    if placement_strategy:
        args += ["--placement-strategy", json.dumps(placement_strategy)]
    if network_configuration:
        args += ["--network-configuration", json.dumps(network_configuration)]
    if overrides:
        args += ["--overrides", json.dumps(overrides)]
    return aws(*args, node=node, expect_rc=expect_rc)


def run_task(node: BerthNode, cluster: str, task_definition: str, count: int = 1, **kw) -> list[dict]:
    """RunTask that must place every task; returns the tasks."""
    res = run_task_raw(node, cluster, task_definition, count=count, **kw).json
    assert not res.get("failures"), f"RunTask failures: {res['failures']}"
    assert len(res.get("tasks", [])) == count, f"RunTask returned {len(res.get('tasks', []))} tasks: {res}"
    return res["tasks"]


def describe_task(node: BerthNode, cluster: str, task_arn: str) -> dict:
    res = aws("ecs", "describe-tasks", "--cluster", cluster, "--tasks", task_arn, node=node).json
    assert not res.get("failures"), f"DescribeTasks failures for {task_arn}: {res['failures']}"
    (task,) = res["tasks"]
    return task


def stop_task(node: BerthNode, cluster: str, task_arn: str, reason: Optional[str] = None) -> dict:
    args = ["ecs", "stop-task", "--cluster", cluster, "--task", task_arn]
    if reason is not None:
        args += ["--reason", reason]
    return aws(*args, node=node).json["task"]


def wait_task(node: BerthNode, cluster: str, task_arn: str, cond: "str | Callable[[dict], Any]",
              timeout: float = 60, what: Optional[str] = None,
              agents: tuple["AgentProcess", ...] | list["AgentProcess"] = ()) -> dict:
    """Poll DescribeTasks until `cond(task)` holds (a string means lastStatus == it);
    return the task. On timeout, show the last task seen and the agents' log tails."""
    seen: dict = {}
    if isinstance(cond, str):
        status = cond
        cond = lambda t: t.get("lastStatus") == status  # noqa: E731
        what = what or f"task {task_id(task_arn)} to reach lastStatus {status}"

    def check():
        t = describe_task(node, cluster, task_arn)
        seen["task"] = t
        return t if cond(t) else None

    def report() -> str:
        out = f"last task seen: {json.dumps(seen.get('task'), indent=1, default=str)[:6000]}"
        for a in agents:
            out += f"\n--- {a.log_label} log ---\n{tail(a.log_text(), 60)}"
        return out

    return wait_until(check, timeout, what or f"a condition on task {task_id(task_arn)}", interval=0.3,
                      on_timeout=report)


def task_container(task: dict, name: str) -> dict:
    for c in task.get("containers", []):
        if c.get("name") == name:
            return c
    raise AssertionError(f"task {task.get('taskArn')} has no container {name!r}: "
                         f"{[c.get('name') for c in task.get('containers', [])]}")


def host_port(task: dict, container: str, container_port: Optional[int] = None) -> int:
    """The hostPort a container's (only / given) containerPort is bound to."""
    bindings = task_container(task, container).get("networkBindings") or []
    if container_port is not None:
        bindings = [b for b in bindings if b.get("containerPort") == container_port]
    assert len(bindings) == 1, f"expected one network binding for {container}:{container_port}, got {bindings}"
    return int(bindings[0]["hostPort"])


def list_tasks(node: BerthNode, cluster: str, *args: str) -> list[str]:
    return aws("ecs", "list-tasks", "--cluster", cluster, *args, node=node).json.get("taskArns", [])


def container_def(name: str, image: str, **kw: Any) -> dict:
    """A container definition with the tests' defaults: 64 MiB, essential, and a 2 s
    stopTimeout (SIGKILL soon after SIGTERM, so a stop never waits ECS's default 30 s)."""
    d = {"name": name, "image": image, "memory": 64, "essential": True, "stopTimeout": 2}
    d.update(kw)
    return d


class AgentEnv:
    """A server, a cluster on it and the agents of one test module, with the task
    operations the agent tests use (all through the AWS CLI)."""

    def __init__(self, node: BerthNode, cluster: str, agents: list[AgentProcess],
                 registry: Optional[Registry] = None):
        self.node = node
        self.cluster = cluster
        self.agents = agents
        self.registry = registry

    @property
    def agent(self) -> AgentProcess:
        return self.agents[0]

    def register(self, taskdef: dict) -> str:
        """Register (the family gets a unique suffix); returns family:revision."""
        td = register_task_definition(self.node, {**taskdef, "family": unique(taskdef.get("family", "t"))})
        return f"{td['family']}:{td['revision']}"

    def run(self, task_definition: str, count: int = 1, **kw) -> list[dict]:
        return run_task(self.node, self.cluster, task_definition, count=count, **kw)

    def run_one(self, task_definition: str, **kw) -> dict:
        return self.run(task_definition, 1, **kw)[0]

    def run_raw(self, task_definition: str, **kw) -> CliResult:
        return run_task_raw(self.node, self.cluster, task_definition, **kw)

    def describe(self, task_arn: str) -> dict:
        return describe_task(self.node, self.cluster, task_arn)

    def wait(self, task_arn: str, cond: "str | Callable[[dict], Any]", timeout: float = 60,
             what: Optional[str] = None) -> dict:
        return wait_task(self.node, self.cluster, task_arn, cond, timeout, what, agents=self.agents)

    def stop(self, task_arn: str, reason: Optional[str] = None) -> dict:
        return stop_task(self.node, self.cluster, task_arn, reason)

    def list_tasks(self, *args: str) -> list[str]:
        return list_tasks(self.node, self.cluster, *args)

    def stop_all(self, timeout: float = 30) -> None:
        """Best effort: stop every task of the cluster through the API and give the agents
        `timeout` seconds to tear them down (containers, CNI, network namespaces)."""
        try:
            arns = self.list_tasks()
            for arn in arns:
                aws("ecs", "stop-task", "--cluster", self.cluster, "--task", arn, node=self.node, expect_rc=None)
            if arns and any(a.alive() for a in self.agents):
                wait_until(lambda: not self.list_tasks(), timeout, "the agents to stop every task", interval=0.5)
        except Exception as e:  # noqa: BLE001 - cleanup goes on
            print(f"[berth tests] cleanup: not every task stopped through the API: {e}")

    def all_task_ids(self) -> list[str]:
        try:
            return [task_id(a) for a in self.list_tasks() + self.list_tasks("--desired-status", "STOPPED")]
        except Exception:  # noqa: BLE001
            return []

    def cleanup(self) -> None:
        """Tasks stopped through the API first (so the agents undo their networking), then
        the agents and whatever they left (containerd, iptables, network namespaces), then
        the server."""
        ids = self.all_task_ids()
        self.stop_all()
        ids = set(ids) | set(self.all_task_ids())
        for a in self.agents:
            a.cleanup()
        remove_task_netns(ids)
        self.node.cleanup()
