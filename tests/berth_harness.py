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


def _http_get_json(port: int, path: str, timeout: float = 2.0) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
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
    for n in ALL_NODES:
        p = getattr(n, "proc", None)
        if p is not None and p.poll() is None:
            p.kill()
    if _cli_home is not None:
        shutil.rmtree(_cli_home, ignore_errors=True)


atexit.register(_kill_leftovers)


class BerthNode:
    """One `berth server` process with its own data dir and log file."""

    def __init__(self, node_id: int = 1, join: Optional[str] = None, workdir: Optional[Path] = None,
                 extra_args: Optional[list[str]] = None, access_keys: Optional[list[str]] = None):
        self.node_id = node_id
        self.api_port = free_port()
        self.raft_port = free_port()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"berth-node{node_id}-"))
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "berth.log"
        self.join = join
        self.extra_args = list(extra_args or [])
        self.access_keys = access_keys or [f"{ACCESS_KEY}:{SECRET_KEY}"]
        self.proc: Optional[subprocess.Popen] = None
        self._log_fh = None
        ALL_NODES.append(self)

    # -- addresses -----------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def raft_addr(self) -> str:
        return f"127.0.0.1:{self.raft_port}"

    def __repr__(self) -> str:
        return f"<berth node {self.node_id} api={self.api_port} raft={self.raft_port}>"

    # -- lifecycle -----------------------------------------------------
    def args(self) -> list[str]:
        a = [
            str(BERTH_BIN), "server",
            "--node-id", str(self.node_id),
            "--data-dir", str(self.data_dir),
            "--api-addr", f"127.0.0.1:{self.api_port}",
            "--raft-addr", self.raft_addr,
            "--region", REGION,
            "--account-id", ACCOUNT,
        ]
        for k in self.access_keys:
            a += ["--access-key", k]
        if self.join:
            a += ["--join", self.join]
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
            _, body = _http_get_json(self.api_port, "/healthz")
        except OSError:
            return None
        return body if isinstance(body, dict) else None

    def status(self) -> Any:
        _, body = _http_get_json(self.api_port, "/status")
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
        first = BerthNode(1)
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
    if node is not None:
        endpoint = node.endpoint
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
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
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
