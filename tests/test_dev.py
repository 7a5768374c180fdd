"""`berth dev`: one process, a `default` cluster, and an AWS CLI profile named
`berth` written next to the user's own profiles without disturbing them."""

from __future__ import annotations

import configparser
import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from berth_harness import (ALL_NODES, BERTH_BIN, READY_TIMEOUT, aws, base_env, cluster_arn, free_port, tail,
                           wait_until)

CONFIG = """# my own settings -- keep this comment
[default]
region = eu-west-1

[profile other]
region = ap-southeast-2
output = text
"""

CREDENTIALS = """# personal keys, do not touch
[other]
aws_access_key_id = AKIDOTHERPROFILE
aws_secret_access_key = otherprofilesecret
"""


class DevProcess:
    """`berth dev` with its own HOME, data dir and ports (quacks like BerthNode
    for conftest's log printing)."""

    node_id = "dev"

    def __init__(self, home: Path, workdir: Path, same_as: "DevProcess | None" = None,
                 extra_args: "list[str] | None" = None):
        self.home = home
        self.extra_args = list(extra_args or [])
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.log_path = workdir / "berth-dev.log"
        self.api_port = same_as.api_port if same_as else free_port()
        self.raft_port = same_as.raft_port if same_as else free_port()
        self.proc = None
        self.insecure_http = "--api-insecure-http" in self.extra_args
        ALL_NODES.append(self)

    @property
    def ca_bundle(self) -> Path:
        return self.data_dir / "server" / "tls" / "ca.pem"

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    def start(self) -> float:
        """Start and wait for readiness; returns the seconds it took."""
        env = base_env(self.home)
        env["RUST_BACKTRACE"] = "1"
        env.update({k: v for k, v in os.environ.items() if k.startswith("RUST_")})
        fh = open(self.log_path, "ab")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [str(BERTH_BIN), "dev", "--data-dir", str(self.data_dir),
             "--api-addr", f"127.0.0.1:{self.api_port}", "--raft-addr", f"127.0.0.1:{self.raft_port}",
             *self.extra_args],
            stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=self.workdir)
        fh.close()

        def ready():
            # What a user waits for: the API answers as leader, and the CLI
            # profile it announces has been written.
            if self.proc.poll() is not None:
                raise AssertionError(f"berth dev exited with {self.proc.returncode}:\n{tail(self.log_text())}")
            import json

            from berth_harness import api_connection
            try:
                conn = api_connection(self.api_port, 2)
            except OSError:
                return False
            try:
                conn.request("GET", "/healthz")
                r = conn.getresponse()
                if json.loads(r.read()).get("isLeader") is not True:
                    return False
            finally:
                conn.close()
            return has_berth_profile(self.home)

        def explain():
            return f"--- berth dev output ---\n{tail(self.log_text())}"

        wait_until(ready, READY_TIMEOUT, "berth dev to become ready (/healthz isLeader and profile `berth` written)",
                   on_timeout=explain)
        return time.monotonic() - t0

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def read_ini(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None, strict=False)
    cp.read(path)
    return cp


def has_berth_profile(home: Path) -> bool:
    try:
        creds = read_ini(home / ".aws" / "credentials")
        cfg = read_ini(home / ".aws" / "config")
    except configparser.Error:
        return False  # mid-write is impossible with rename, but be safe
    return (creds.has_option("berth", "aws_access_key_id")
            or cfg.has_option("profile berth", "aws_access_key_id")) and cfg.has_section("profile berth")


def berth_key_id(home: Path) -> str:
    creds = read_ini(home / ".aws" / "credentials")
    if creds.has_option("berth", "aws_access_key_id"):
        return creds.get("berth", "aws_access_key_id")
    cfg = read_ini(home / ".aws" / "config")
    assert cfg.has_option("profile berth", "aws_access_key_id"), \
        "no [berth] credentials in ~/.aws/credentials nor in ~/.aws/config [profile berth]"
    return cfg.get("profile berth", "aws_access_key_id")


def user_env(home: Path) -> dict[str, str]:
    """What a user's shell would have: no AWS_* variables at all."""
    env = base_env(home)
    for k in list(env):
        if k.startswith("AWS_") and k not in ("AWS_EC2_METADATA_DISABLED", "AWS_PAGER"):
            del env[k]
    return env


@pytest.fixture
def dev_env():
    workdir = Path(tempfile.mkdtemp(prefix="berth-dev-"))
    home = workdir / "home"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "config").write_text(CONFIG)
    (home / ".aws" / "credentials").write_text(CREDENTIALS)
    procs: list[DevProcess] = []

    def make(same_as: DevProcess | None = None, extra_args: list[str] | None = None) -> DevProcess:
        p = DevProcess(home, workdir, same_as, extra_args)
        procs.append(p)
        return p

    yield home, make
    for p in procs:
        p.stop()
    import shutil
    shutil.rmtree(workdir, ignore_errors=True)


def assert_user_content_kept(home: Path):
    config = (home / ".aws" / "config").read_text()
    creds = (home / ".aws" / "credentials").read_text()
    assert "# my own settings -- keep this comment" in config
    assert "# personal keys, do not touch" in creds
    cfg = read_ini(home / ".aws" / "config")
    assert cfg.get("default", "region") == "eu-west-1"
    assert cfg.get("profile other", "region") == "ap-southeast-2"
    assert cfg.get("profile other", "output") == "text"
    cr = read_ini(home / ".aws" / "credentials")
    assert cr.get("other", "aws_access_key_id") == "AKIDOTHERPROFILE"
    assert cr.get("other", "aws_secret_access_key") == "otherprofilesecret"


def test_dev_writes_profile_and_serves_default_cluster(dev_env):
    home, make = dev_env
    dev = make()
    took = dev.start()
    print(f"\nberth dev ready after {took:.2f}s")

    key_id = berth_key_id(home)
    assert key_id and key_id != "AKIDOTHERPROFILE"
    assert key_id in dev.log_text(), "berth dev did not print the access key it configured"
    assert_user_content_kept(home)

    env = user_env(home)
    res = aws("--profile", "berth", "ecs", "list-clusters", env=env)
    assert cluster_arn("default") in res.json["clusterArns"]
    c = aws("--profile", "berth", "ecs", "describe-clusters", env=env).json["clusters"]
    assert [(x["clusterName"], x["status"]) for x in c] == [("default", "ACTIVE")]

    # The user's own default profile is not redirected to berth.
    assert "endpoint_url" not in read_ini(home / ".aws" / "config")["default"]

    config_before = (home / ".aws" / "config").read_text()
    creds_before = (home / ".aws" / "credentials").read_text()
    dev.stop()

    # A second start on the same data dir reuses the key; the profile is unchanged.
    again = make(same_as=dev)
    took2 = again.start()
    print(f"berth dev (second start) ready after {took2:.2f}s")
    assert (home / ".aws" / "config").read_text() == config_before
    assert (home / ".aws" / "credentials").read_text() == creds_before
    assert berth_key_id(home) == key_id
    res = aws("--profile", "berth", "ecs", "list-clusters", env=env)
    assert cluster_arn("default") in res.json["clusterArns"]
    assert os.environ.get("HOME") != str(home)


@pytest.mark.timeout(180)
def test_dev_runs_containers_out_of_the_box(dev_env, containerd):
    """The README's first command gives a one-machine cluster that runs real containers:
    `berth dev`'s built-in agent is the `default` cluster's container instance, and a user
    with nothing but the `berth` profile runs a task, reaches it and reads its logs."""
    import json as _json
    import re as _re
    import urllib.request

    import berth_harness as h
    import images

    home, make = dev_env
    ns = f"{h.SESSION_NS}-dev"
    dev = make(extra_args=["--namespace", ns, "--cni-bridge", "berthdev0", "--cni-subnet", "10.98.9.0/24"])
    try:
        dev.start()
        env = user_env(home)
        archive = Path(dev.workdir) / "web.tar"
        images.build_oci_archive(archive, name="localhost/devweb:1")
        out = subprocess.run([str(BERTH_BIN), "image", "import", "--namespace", ns, str(archive)],
                             capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 0 and "localhost/devweb:1" in out.stdout, out.stderr

        def instance():
            arns = aws("ecs", "list-container-instances", "--profile", "berth", env=env).json
            return arns["containerInstanceArns"] or None

        wait_until(instance, 30, "the built-in agent to be the default cluster's container instance")
        td = {"family": "devweb", "containerDefinitions": [{
            "name": "web", "image": "localhost/devweb:1", "memory": 32, "stopTimeout": 2,
            "environment": [{"name": "PORT", "value": "80"}],
            "portMappings": [{"containerPort": 80, "hostPort": 0}]}]}
        tdfile = Path(dev.workdir) / "td.json"
        tdfile.write_text(_json.dumps(td))
        aws("ecs", "register-task-definition", "--profile", "berth", "--cli-input-json", f"file://{tdfile}", env=env)
        arn = aws("ecs", "run-task", "--profile", "berth", "--task-definition", "devweb", env=env).json["tasks"][0]["taskArn"]

        def running():
            t = aws("ecs", "describe-tasks", "--profile", "berth", "--tasks", arn, env=env).json["tasks"][0]
            if t["lastStatus"] == "STOPPED":
                raise AssertionError(f"task stopped: {t.get('stoppedReason')}")
            return t if t["lastStatus"] == "RUNNING" else None

        task = wait_until(running, 60, "the task to be RUNNING")
        port = task["containers"][0]["networkBindings"][0]["hostPort"]
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
        assert images.page_names(body, arn.rsplit("/", 1)[1], "web"), body
        # `berth logs` with nothing but the profile `berth dev` wrote.
        logs = subprocess.run([str(BERTH_BIN), "logs", arn.rsplit("/", 1)[1]], capture_output=True, text=True,
                              env=env, timeout=30)
        assert logs.returncode == 0, logs.stderr
        aws("ecs", "stop-task", "--profile", "berth", "--task", arn, env=env)
        wait_until(lambda: aws("ecs", "describe-tasks", "--profile", "berth", "--tasks", arn,
                               env=env).json["tasks"][0]["lastStatus"] == "STOPPED", 60, "the task to stop")
        assert not _re.search(r"\bERROR\b", dev.log_text()), tail(dev.log_text())
    finally:
        dev.stop()
        h.cleanup_containerd_namespace(ns)


def test_dev_includes_the_load_balancer(dev_env):
    """`aws elbv2` works against `berth dev`, and its listeners open on loopback."""
    import urllib.error
    import urllib.request

    home, make = dev_env
    dev = make()
    dev.start()
    env = user_env(home)
    lb = aws("--profile", "berth", "elbv2", "create-load-balancer", "--name", "dev", env=env).json
    port = free_port()
    aws("--profile", "berth", "elbv2", "create-listener", "--load-balancer-arn",
        lb["LoadBalancers"][0]["LoadBalancerArn"], "--protocol", "HTTP", "--port", str(port),
        "--default-actions",
        "Type=fixed-response,FixedResponseConfig={StatusCode=200,ContentType=text/plain,MessageBody=hello}",
        env=env)

    def answers():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                return r.status == 200 and r.read() == b"hello"
        except (OSError, urllib.error.URLError):
            return False
    wait_until(answers, 10, "the dev load balancer's listener to answer")
