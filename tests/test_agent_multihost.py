"""Two machines: agents in the network namespaces berth-h1 (10.99.0.11) and berth-h2
(10.99.0.12), a server and a registry on 10.99.0.1 in the root namespace. Tasks
are placed on both and are reached on each machine's own address."""

from __future__ import annotations

import pytest

import berth_harness as h
import images

AZ = {"berth-h1": "az-a", "berth-h2": "az-b"}
CNI = {"berth-h1": ("berthe2e-c1", "10.98.11.0/24"), "berth-h2": ("berthe2e-c2", "10.98.12.0/24")}


@pytest.fixture(scope="module")
def env(hosts):
    # Agents inside the namespaces reach the root namespace at the bridge address only.
    reg = h.Registry(host=hosts.GATEWAY).start()
    env = None
    try:
        reg.push_test_image()
        node, cluster = h.start_agent_server(host=hosts.GATEWAY)
        env = h.AgentEnv(node, cluster, [], reg)
        for ns in hosts.names:
            bridge, subnet = CNI[ns]
            env.agents.append(h.AgentProcess(node, cluster, name=ns, netns=ns, host_ip=hosts.ip_of(ns),
                                             availability_zone=AZ[ns], cni_bridge=bridge, cni_subnet=subnet,
                                             insecure_registries=[reg.addr]).start())
        for a in env.agents:
            a.wait_connected(node, timeout=60)
        yield env
    finally:
        if env is not None:
            env.cleanup()
        reg.cleanup()


def agent_of(env: h.AgentEnv, container_instance_arn: str) -> h.AgentProcess:
    for a in env.agents:
        ci = a.container_instance(env.node)
        if ci and ci["containerInstanceArn"] == container_instance_arn:
            return a
    raise AssertionError(f"no agent of this test owns {container_instance_arn}")


@pytest.mark.timeout(120)
def test_both_machines_register(env, hosts):
    arns = h.aws("ecs", "list-container-instances", "--cluster", env.cluster, node=env.node).json
    assert len(arns["containerInstanceArns"]) == 2, arns
    for a in env.agents:
        ci = a.container_instance(env.node)
        assert ci["agentConnected"] is True and ci["status"] == "ACTIVE", ci
        attrs = {x["name"]: x.get("value") for x in ci["attributes"]}
        assert attrs["ecs.availability-zone"] == AZ[a.netns], attrs


@pytest.mark.timeout(150)
def test_tasks_spread_over_both_machines_and_answer_on_each_hosts_address(env, hosts):
    td = env.register({"family": "spread", "containerDefinitions": [
        h.container_def("web", env.registry.image("1"), environment=[{"name": "PORT", "value": "80"}],
                        portMappings=[{"containerPort": 80, "hostPort": 0, "protocol": "tcp"}]),
    ]})
    tasks = env.run(td, count=2, placement_strategy=[{"type": "spread", "field": "instanceId"}])
    running = [env.wait(t["taskArn"], "RUNNING", timeout=90) for t in tasks]
    instances = {t["containerInstanceArn"] for t in running}
    assert len(instances) == 2, f"both tasks were placed on {instances}"

    for t in running:
        agent = agent_of(env, t["containerInstanceArn"])
        ip = hosts.ip_of(agent.netns)
        port = h.host_port(t, "web")
        status, body = h.wait_until(lambda: h.http_get(f"http://{ip}:{port}/"), 15,
                                    f"http://{ip}:{port}/ (task on {agent.netns}) to answer")
        assert status == 200 and images.page_names(body, h.task_id(t["taskArn"]), "web"), body

    for t in running:
        env.stop(t["taskArn"])
    for t in running:
        env.wait(t["taskArn"], "STOPPED", timeout=60)


@pytest.mark.timeout(60)
def test_list_container_instances_filters_by_availability_zone(env):
    res = h.aws("ecs", "list-container-instances", "--cluster", env.cluster,
                "--filter", "attribute:ecs.availability-zone == az-b", node=env.node).json
    (arn,) = res["containerInstanceArns"]
    assert agent_of(env, arn).netns == "berth-h2"
