"""The binary itself: version, agent placeholder, config validation, config file plus
environment, SIGTERM shutdown, JSON logs."""
import json
import signal
import subprocess

from berth_harness import (
    ACCESS_KEY, BERTH_BIN, SECRET_KEY, BerthNode, aws, free_port, server_env, wait_until,
)


def run(*args, env=None, timeout=30):
    return subprocess.run([str(BERTH_BIN), *args], capture_output=True, text=True,
                          env=env or server_env(), timeout=timeout, stdin=subprocess.DEVNULL)


def test_version():
    r = run("version")
    assert r.returncode == 0
    assert r.stdout.startswith("berth ")


def test_agent_names_the_settings_it_needs():
    r = run("agent")
    assert r.returncode == 2
    assert "--server" in r.stderr and "--join-token" in r.stderr, r.stderr


def test_agent_without_containerd_says_where_it_looked(tmp_path):
    sock = tmp_path / "no-containerd.sock"
    r = run("agent", "--server", "127.0.0.1:1", "--join-token", "t" * 20,
            "--data-dir", str(tmp_path / "data"), "--containerd-socket", str(sock))
    assert r.returncode != 0
    assert "containerd" in r.stderr and str(sock) in r.stderr, r.stderr


def test_validate_accepts_a_good_file_and_lists_every_mistake_of_a_bad_one(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('node-id = 3\ndata-dir = "/tmp/x"\naccess-keys = ["AK:SK"]\n')
    r = run("validate", "--config", str(good))
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout

    bad = tmp_path / "bad.toml"
    bad.write_text('node-id = 0\napi-addr = "nowhere"\naccount-id = "42"\nauth = "maybe"\n')
    r = run("validate", "--config", str(bad))
    assert r.returncode == 1
    for needle in ("node-id", "api-addr 'nowhere'", "account-id '42'", "auth 'maybe'"):
        assert needle in r.stderr, (needle, r.stderr)

    typo = tmp_path / "typo.toml"
    typo.write_text("node-idd = 2\n")
    r = run("validate", "--config", str(typo))
    assert r.returncode == 1
    assert "node-idd" in r.stderr


def test_server_refuses_to_start_without_keys_and_says_why(tmp_path):
    r = run("server", "--data-dir", str(tmp_path / "d"), "--api-addr", f"127.0.0.1:{free_port()}",
            "--raft-addr", f"127.0.0.1:{free_port()}")
    assert r.returncode == 1
    assert "no access key is configured" in r.stderr


def test_config_file_and_environment_then_sigterm_keeps_the_data(tmp_path):
    api, raft = free_port(), free_port()
    cfg = tmp_path / "server.toml"
    cfg.write_text(
        f'node-id = 7\ndata-dir = "{tmp_path / "data"}"\napi-addr = "127.0.0.1:{api}"\n'
        f'raft-addr = "127.0.0.1:{raft}"\nregion = "eu-west-1"\naccount-id = "000000000042"\n'
    )
    # The key comes from the environment, the rest from the file; logs as JSON.
    env = server_env(BERTH_ACCESS_KEYS=f"{ACCESS_KEY}:{SECRET_KEY}", BERTH_LOG_FORMAT="json")
    log = open(tmp_path / "log", "wb")
    proc = subprocess.Popen([str(BERTH_BIN), "server", "--config", str(cfg)], stdout=log,
                            stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    try:
        node = BerthNode(node_id=7)
        node.api_port = api
        node.data_dir = tmp_path / "data"
        node.proc = proc
        node.wait_leader()
        res = aws("ecs", "create-cluster", "--cluster-name", "fromfile", node=node)
        assert res.rc == 0, res.stderr
        assert res.json["cluster"]["clusterArn"] == "arn:aws:ecs:eu-west-1:000000000042:cluster/fromfile"

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, "SIGTERM must stop the server cleanly (exit 0)"
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    lines = [l for l in (tmp_path / "log").read_text().splitlines() if l.strip()]
    parsed = [json.loads(l) for l in lines]  # every log line is JSON
    assert any(p.get("fields", {}).get("message") == "stopped cleanly" for p in parsed), lines[-5:]

    # Started again on the same data dir, the cluster is still there.
    log = open(tmp_path / "log2", "wb")
    proc = subprocess.Popen([str(BERTH_BIN), "server", "--config", str(cfg)], stdout=log,
                            stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    try:
        node.proc = proc
        node.wait_leader()
        res = aws("ecs", "describe-clusters", "--clusters", "fromfile", node=node)
        assert res.rc == 0, res.stderr
        assert [c["status"] for c in res.json["clusters"]] == ["ACTIVE"]
    finally:
        proc.kill()
        proc.wait(timeout=10)
        log.close()
