"""Render the Helm chart with the real `helm` binary (built with the test control plane, .cluster/bin) and walk
what it produced: objects, pod specs (also the QueueWorkers' pod templates) and RBAC rules."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from manifests import HELM_ENV, helm_binary  # scripts/manifests.py (on sys.path: tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "queueworker"
MANIFESTS = ROOT / "manifests"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
MINIMAL = CHART / "ci" / "minimal-values.yaml"


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    binary = helm_binary()
    if binary is None:
        raise FileNotFoundError("helm not found: `make cluster-bin` builds it into .cluster/bin")
    proc = subprocess.run([binary, *args], capture_output=True, text=True, env={**os.environ, **HELM_ENV}, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return proc


RABBITMQ_CLUSTER_API = "rabbitmq.com/v1beta1/RabbitmqCluster"


def needs_cluster_operator(values: Path) -> bool:
    """A scenario with rabbitmq.cluster.create renders only where the RabbitMQ Cluster Operator's CRD is served:
    `helm template` needs --api-versions for it, and `helm lint` (which cannot be given any) refuses it."""
    doc = yaml.safe_load(values.read_text()) or {}
    return bool(doc.get("rabbitmq", {}).get("cluster", {}).get("create"))


LINTABLE_CI_VALUES = [v for v in CI_VALUES if not needs_cluster_operator(v)]


def template_args(
    *values: Path,
    sets: tuple[str, ...] = (),
    release: str = "qw",
    namespace: str = "qw",
    api_versions: tuple[str, ...] = (),
) -> list[str]:
    """`helm template` of these values; a scenario that needs the Cluster Operator's CRD says it is served."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    for v in values:
        args += ["-f", str(v)]
    for s in sets:
        args += ["--set", s]
    if any(needs_cluster_operator(v) for v in values):
        api_versions = (*api_versions, RABBITMQ_CLUSTER_API)
    for api in dict.fromkeys(api_versions):
        args += ["--api-versions", api]
    return args


def render(
    *values: Path,
    sets: tuple[str, ...] = (),
    release: str = "qw",
    namespace: str = "qw",
    api_versions: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    args = template_args(*values, sets=sets, release=release, namespace=namespace, api_versions=api_versions)
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d]


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every pod the objects will create, including QueueWorker templates."""
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] == "Pod":
            yield name, obj["spec"]
        elif obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "QueueWorker"):
            yield name, obj["spec"]["template"]["spec"]
        elif obj["kind"] == "CronJob":
            yield name, obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def rule_triples(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """RBAC rules as (apiGroup, resource, verb) triples, so equal permissions compare equal however grouped."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }


def operator_rules(objects: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """The operator's permissions: every Role but the uninstall hook's (a Helm hook, gone after it ran)."""
    roles = [
        o
        for o in objects
        if o["kind"] in ("Role", "ClusterRole") and "helm.sh/hook" not in o["metadata"].get("annotations", {})
    ]
    return rule_triples([r for role in roles for r in role.get("rules", [])])
