"""The chart's optional RabbitMQ Cluster Operator mode (rabbitmq.cluster.create), rendered by the real `helm template`:
a 3-node RabbitmqCluster with the prometheus plugin and a 1 s quorum tick, and every service wired to the Secret and
Services the Cluster Operator creates for it. Names and keys as in rabbitmq/cluster-operator v2.22.3:
internal/resource/default_user_secret.go (Secret "<name>-default-user": username, password, host, port, ...),
service.go (Service "<name>": amqp 5672, management 15672, prometheus 15692), headless_service.go ("<name>-nodes")."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.conftest import _need
from tests.support.chart import (
    CHART,
    MINIMAL,
    RABBITMQ_CLUSTER_API,
    helm,
    helm_binary,
    needs_cluster_operator,
    pod_specs,
    render,
    template_args,
)

SCENARIO = CHART / "ci" / "rabbitmq-cluster-values.yaml"
CLUSTER = "qw-queueworker-rabbitmq"
SECRET = f"{CLUSTER}-default-user"
CREDENTIALS = {"RABBITMQ_USERNAME": "username", "RABBITMQ_PASSWORD": "password",
               "RABBITMQ_HOST": "host", "RABBITMQ_PORT": "port"}  # fmt: skip
AMQP_URL = "amqp://$(RABBITMQ_USERNAME):$(RABBITMQ_PASSWORD)@$(RABBITMQ_HOST):$(RABBITMQ_PORT)/%2F"


@pytest.fixture(scope="module", autouse=True)
def _helm_present() -> None:
    if helm_binary() is None:
        _need("helm", FileNotFoundError("helm not built: make cluster-bin"))


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    assert needs_cluster_operator(SCENARIO)
    return render(SCENARIO)


def _containers(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """kind/name -> the first container, for the pods that talk to RabbitMQ (not the `helm test` pod nor the
    uninstall hook's Job; the janitor's CronJob does: it publishes its changes to qw.events)."""
    skip = ("Pod/", "Job/")
    return {name: pod["containers"][0] for name, pod in pod_specs(objects) if not name.startswith(skip)}


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def test_the_rabbitmqcluster_has_3_nodes_the_prometheus_plugin_and_a_1s_quorum_tick(objects) -> None:
    [cluster] = [o for o in objects if o["kind"] == "RabbitmqCluster"]
    assert cluster["apiVersion"] == "rabbitmq.com/v1beta1"
    assert cluster["metadata"]["name"] == CLUSTER
    assert cluster["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"  # its volumes hold the queues
    spec = cluster["spec"]
    assert spec["replicas"] == 3
    assert "rabbitmq_prometheus" in spec["rabbitmq"]["additionalPlugins"]
    advanced = spec["rabbitmq"]["advancedConfig"]
    assert re.search(r"\{rabbit,\s*\[\s*\{quorum_tick_interval,\s*1000\}\s*\]\}", advanced), advanced
    assert advanced.strip().startswith("[") and advanced.strip().endswith("]."), "one Erlang term, ending in '.'"
    assert spec["persistence"] == {"storageClassName": "fast-ssd", "storage": "20Gi"}
    assert spec["resources"]["requests"]["memory"] == spec["resources"]["limits"]["memory"]
    assert "image" not in spec, "the Cluster Operator's default image unless rabbitmq.cluster.image is set"


def test_every_service_reads_the_broker_credentials_from_the_cluster_operators_secret(objects) -> None:
    containers = _containers(objects)
    assert {n.split("/")[0] for n in containers} == {"Deployment", "QueueWorker", "CronJob"}
    assert len(containers) == 5, sorted(containers)  # api, operator, image and email workers, the janitor
    for name, container in containers.items():
        env = _env(container)
        for var, key in CREDENTIALS.items():
            assert env[var]["valueFrom"] == {"secretKeyRef": {"name": SECRET, "key": key}}, f"{name}: {var}"
        assert env["QW_RABBITMQ_URL"] == {"name": "QW_RABBITMQ_URL", "value": AMQP_URL}, name
    [operator] = [c for n, c in containers.items() if n.endswith("-operator")]
    env = _env(operator)
    assert env["QW_RABBITMQ_MANAGEMENT_URL"]["value"] == (
        "http://$(RABBITMQ_USERNAME):$(RABBITMQ_PASSWORD)@$(RABBITMQ_HOST):15672"
    )
    # Every node's endpoint through the headless Service: one node reports only the queues it hosts.
    assert env["QW_RABBITMQ_PROMETHEUS_URL"]["value"] == f"http://{CLUSTER}-nodes.qw.svc:15692"


def test_every_variable_reference_names_a_variable_defined_above_it(objects) -> None:
    # The kubelet expands $(VAR) only from variables earlier in the list; a later one stays literal text.
    for name, container in _containers(objects).items():
        defined: set[str] = set()
        for env in container["env"]:
            for ref in re.findall(r"\$\((\w+)\)", env.get("value", "")):
                assert ref in defined, f"{name}: {env['name']} refers to {ref} before it is defined"
            defined.add(env["name"])


def test_no_literal_credential_and_no_bring_your_own_secret_in_cluster_mode(objects) -> None:
    text = str(objects)
    assert "queueworker-rabbitmq" not in re.sub(rf"{CLUSTER}[-\w]*", "", text), "the own-broker Secret is not used"
    assert not any(o["kind"] == "Secret" for o in objects)
    for name, container in _containers(objects).items():
        for env in container["env"]:
            value = env.get("value", "")
            m = re.match(r"^\w+://([^@/]*)@", value)
            assert m is None or re.fullmatch(r"\$\(\w+\):\$\(\w+\)", m.group(1)), f"{name}: {env}"


def test_bring_your_own_broker_stays_the_default() -> None:
    objects = render(MINIMAL)
    assert not any(o["kind"] == "RabbitmqCluster" for o in objects)
    for name, container in _containers(objects).items():
        env = _env(container)
        assert env["QW_RABBITMQ_URL"]["valueFrom"]["secretKeyRef"]["name"] == "queueworker-rabbitmq", name
        assert not set(CREDENTIALS) & set(env), name


def test_without_the_cluster_operators_crd_the_render_fails_saying_what_is_missing() -> None:
    args = [a for a in template_args(SCENARIO) if a not in ("--api-versions", RABBITMQ_CLUSTER_API)]
    out = helm(*args, check=False)
    assert out.returncode != 0
    assert "rabbitmq.cluster.create needs the RabbitMQ Cluster Operator" in out.stderr, out.stderr
    assert "--api-versions rabbitmq.com/v1beta1/RabbitmqCluster" in out.stderr


def test_the_name_vhost_image_and_prometheus_url_can_be_set() -> None:
    objects = render(
        SCENARIO,
        sets=(
            "rabbitmq.cluster.name=broker",
            "rabbitmq.vhost=qw/tasks",
            "rabbitmq.cluster.image=rabbitmq:4.1.4",
            "rabbitmq.prometheusUrl=http://metrics.example:15692",
        ),  # fmt: skip
    )
    [cluster] = [o for o in objects if o["kind"] == "RabbitmqCluster"]
    assert (cluster["metadata"]["name"], cluster["spec"]["image"]) == ("broker", "rabbitmq:4.1.4")
    for name, container in _containers(objects).items():
        env = _env(container)
        assert env["RABBITMQ_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "broker-default-user", name
        assert env["QW_RABBITMQ_URL"]["value"].endswith("@$(RABBITMQ_HOST):$(RABBITMQ_PORT)/qw%2Ftasks"), name
        if name.endswith("-operator"):
            assert env["QW_RABBITMQ_PROMETHEUS_URL"]["value"] == "http://metrics.example:15692"
    workers = [o for o in objects if o["kind"] == "QueueWorker"]
    assert {w["spec"]["vhost"] for w in workers} == {"qw/tasks"}


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("rabbitmq.cluster.create=yes", "/rabbitmq/cluster/create"),
        ("rabbitmq.cluster.replicas=0", "/rabbitmq/cluster/replicas"),
        ("rabbitmq.cluster.name=Broker_1", "/rabbitmq/cluster/name"),
        ("rabbitmq.cluster.persistence.storage=lots", "/rabbitmq/cluster/persistence/storage"),
        ("rabbitmq.cluster.size=3", "additional properties 'size' not allowed"),
    ],
)
def test_the_schema_rejects_wrong_cluster_values(setting: str, complaint: str) -> None:
    out = helm(*template_args(MINIMAL, sets=(setting,), api_versions=(RABBITMQ_CLUSTER_API,)), check=False)
    assert out.returncode != 0, f"{setting} was accepted"
    assert "values don't meet the specifications of the schema" in out.stderr
    assert complaint in out.stderr, out.stderr
