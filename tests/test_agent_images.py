"""Where images come from: an OCI archive imported with `berth image import` (no
registry at all), and a registry that wants a password, given to the agent as a
named credential that task definitions refer to with
`repositoryCredentials.credentialsParameter`."""

from __future__ import annotations

import json

import pytest

import berth_harness as h
import images

IMPORTED = "localhost/berth-test:imported"
GOOD_CRED = "regcred"
BAD_CRED = "badcred"


@pytest.fixture(scope="module")
def env(containerd, auth_registry):
    user, password = auth_registry.auth
    node, cluster = h.start_agent_server()
    agent = h.AgentProcess(node, cluster, name="images", cni_bridge="berthe2e2", cni_subnet="10.98.2.0/24",
                           insecure_registries=[auth_registry.addr],
                           registry_credentials={GOOD_CRED: f"{user}:{password}",
                                                 BAD_CRED: f"{user}:not-{password}"})
    env = h.AgentEnv(node, cluster, [agent], auth_registry)
    try:
        agent.start()
        agent.wait_connected(node, timeout=60)
        yield env
    finally:
        env.cleanup()


def web(image: str, **kw) -> dict:
    return h.container_def("web", image, environment=[{"name": "PORT", "value": "80"}],
                           portMappings=[{"containerPort": 80, "hostPort": 0, "protocol": "tcp"}], **kw)


def assert_serves(task: dict) -> None:
    port = h.host_port(task, "web")
    status, body = h.wait_until(lambda: h.http_get(f"http://127.0.0.1:{port}/"), 15,
                                f"http://127.0.0.1:{port}/ to answer")
    assert status == 200 and images.page_names(body, h.task_id(task["taskArn"]), "web"), body


@pytest.mark.timeout(60)
def test_the_auth_registry_serves_the_test_image_only_with_the_password(auth_registry):
    """The test infrastructure itself: what was pushed is what a client reads back."""
    img = images.build_image()
    client = images.RegistryClient(auth_registry.addr, auth=auth_registry.auth)
    media_type, manifest, digest = client.get_manifest(h.TEST_REPO, "1")
    assert media_type == images.MT_MANIFEST
    assert images.sha256(manifest) == digest == img.manifest_digest
    for d in [json.loads(manifest)["config"], *json.loads(manifest)["layers"]]:
        assert images.sha256(client.get_blob(h.TEST_REPO, d["digest"])) == d["digest"]
    anonymous = images.RegistryClient(auth_registry.addr)
    assert anonymous.request("GET", f"/v2/{h.TEST_REPO}/manifests/1")[0] == 401


@pytest.mark.timeout(120)
def test_an_imported_image_runs_without_any_registry(env, tmp_path):
    archive = tmp_path / "berth-test.tar"
    images.build_oci_archive(archive, name=IMPORTED)
    r = h.berth("image", "import", str(archive), "--namespace", env.agent.namespace, timeout=120)
    assert IMPORTED in r.stdout + r.stderr, f"`berth image import` did not name the image:\n{r.stdout}\n{r.stderr}"

    td = env.register({"family": "imported", "containerDefinitions": [web(IMPORTED)]})
    arn = env.run_one(td)["taskArn"]
    task = env.wait(arn, "RUNNING", timeout=60)
    assert_serves(task)
    env.stop(arn)
    env.wait(arn, "STOPPED", timeout=60)


@pytest.mark.timeout(120)
def test_repository_credentials_pull_from_a_registry_that_wants_a_password(env):
    td = env.register({"family": "private", "containerDefinitions": [
        web(env.registry.image("1"), repositoryCredentials={"credentialsParameter": GOOD_CRED}),
    ]})
    arn = env.run_one(td)["taskArn"]
    task = env.wait(arn, "RUNNING", timeout=60)
    assert_serves(task)
    env.stop(arn)
    env.wait(arn, "STOPPED", timeout=60)


@pytest.mark.timeout(120)
def test_a_wrong_password_fails_the_pull_and_says_authentication(env):
    td = env.register({"family": "wrongpw", "containerDefinitions": [
        web(env.registry.image("latest"), repositoryCredentials={"credentialsParameter": BAD_CRED}),
    ]})
    arn = env.run_one(td)["taskArn"]
    task = env.wait(arn, "STOPPED", timeout=60)
    assert task["stopCode"] == "TaskFailedToStart", task
    why = " | ".join([task.get("stoppedReason") or ""] + [c.get("reason") or "" for c in task["containers"]])
    assert "CannotPullContainerError" in why, why
    assert "authenticat" in why.lower() or "unauthorized" in why.lower(), \
        f"the pull failure does not say it was refused for authentication: {why!r}"
    assert env.agent.container_instance(env.node)["agentConnected"] is True
