"""pytest fixtures for berth's integration tests (see berth_harness.py)."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import berth_harness as h  # noqa: E402


def pytest_report_header(config):
    return [f"berth binary: {h.BERTH_BIN}", f"aws cli: {h.AWS_BIN}"]


@pytest.fixture(scope="session", autouse=True)
def _check_tools():
    assert h.AWS_BIN.exists(), f"AWS CLI not found at {h.AWS_BIN}: run scripts/install-deps.sh (or set AWS_BIN)"
    if not h.BERTH_BIN.exists():
        pytest.fail(f"berth binary not found at {h.BERTH_BIN}: run `cargo build -p berth` (or set BERTH_BIN)")
    yield


def _single_server():
    node = h.BerthNode(1).start()
    try:
        node.wait_leader()
        yield node
    finally:
        node.cleanup()


@pytest.fixture(scope="module")
def server():
    """One single-node `berth server`, shared by the tests of a module.
    Tests on it use unique names so they do not depend on each other."""
    yield from _single_server()


@pytest.fixture
def fresh_server():
    """A single-node `berth server` of the test's own (empty state)."""
    yield from _single_server()


@pytest.fixture
def ecs(server):
    return h.boto3_client(server)


@pytest.fixture
def cluster3():
    c = h.BerthCluster(3)
    try:
        c.start()
        yield c
    finally:
        c.cleanup()


# ---------------------------------------------------------------------------
# Agents: containerd, registries, network namespaces (tests/test_agent_*.py)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def containerd():
    """Root and a running containerd, or a loud failure (skip only with BERTH_SKIP_CONTAINERD=1)."""
    h.require_containerd()
    yield h.CONTAINERD_SOCK


def _registry(auth=None, host="127.0.0.1"):
    reg = h.Registry(host=host, auth=auth).start()
    try:
        reg.push_test_image()
        yield reg
    finally:
        reg.cleanup()


@pytest.fixture(scope="session")
def registry(containerd):
    """A docker-registry on 127.0.0.1:<free port> (plain HTTP, no auth) holding the test
    image (tests/images.py) as `<addr>/berth-test:1` and `<addr>/berth-test:latest`;
    `registry.image("1")` is the reference."""
    yield from _registry()


REGISTRY_USER = "berth"
REGISTRY_PASSWORD = "s3cret-" + uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def auth_registry(containerd):
    """Like `registry`, but requiring basic auth: `auth_registry.auth` is (user, password)."""
    yield from _registry(auth=(REGISTRY_USER, REGISTRY_PASSWORD))


@pytest.fixture(scope="module")
def hosts(containerd):
    """Network namespaces berth-h1 (10.99.0.11) and berth-h2 (10.99.0.12) bridged to
    10.99.0.1 in the root namespace; torn down after the module."""
    hs = h.NetnsHosts().create()
    try:
        yield hs
    finally:
        hs.teardown()


# ---------------------------------------------------------------------------
# Print the server logs written during a failing test.
# ---------------------------------------------------------------------------

_LOG_OFFSETS = "_berth_log_offsets"


def _logged():
    """Every process whose log a failing test should show: servers, agents, registries."""
    return [*h.ALL_NODES, *h.ALL_AGENTS, *h.ALL_REGISTRIES]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    offsets = {}
    for n in _logged():
        try:
            offsets[id(n)] = n.log_path.stat().st_size
        except OSError:
            offsets[id(n)] = 0
    setattr(item, _LOG_OFFSETS, offsets)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed:
        return
    offsets = getattr(item, _LOG_OFFSETS, {})
    limit = int(os.environ.get("BERTH_LOG_LINES", "200"))
    for n in _logged():
        try:
            with open(n.log_path, "rb") as fh:
                fh.seek(offsets.get(id(n), 0))
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            continue
        if text.strip():
            label = getattr(n, "log_label", None) or f"berth node {n.node_id}"
            rep.sections.append((f"{label} log ({n.log_path}, last {limit} lines of this test)",
                                 h.tail(text, limit)))
