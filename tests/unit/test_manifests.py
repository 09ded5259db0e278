"""The plain manifests start as written: every container in manifests/ (operator, API, the example worker
templates) is given, from its env and the Secrets the README tells you to create, settings its entry point accepts
in prod. Before this test the operator crash-looped (QW_ENV=prod refused the AMQP default it never uses) and the
example worker had no broker URL at all."""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from qw_core.settings import ApiSettings, OperatorSettings, WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
# What a user puts in the Secrets kustomization.yaml and operator.yaml name (never the guest account).
SECRETS = {
    ("queueworker-rabbitmq", "amqp-url"): "amqp://qw:s3cret-long-pass@rabbitmq:5672/%2F",
    ("queueworker-rabbitmq", "management-url"): "http://qw:s3cret-long-pass@rabbitmq:15672",
    ("queueworker-database", "database-url"): "postgresql://qw:pw@postgres:5432/qw",
    ("shop-database", "url"): "postgresql://shop:pw@postgres:5432/shop",  # examples/shop/manifests
}
SHOP_MANIFESTS = sorted((ROOT / "examples/shop/manifests").glob("*.yaml"))
SETTINGS = {"qw_api": ApiSettings, "qw_workers": WorkerSettings, "qw_operator": OperatorSettings}
ENTRY = {"api": "qw_api", "worker": "qw_workers", "operator": "qw_operator"}


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in [*sorted((ROOT / "manifests").glob("*.yaml")), *sorted((ROOT / "manifests/examples").glob("*.yaml")),
                 *SHOP_MANIFESTS]:  # fmt: skip
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            spec = doc.get("spec") or {}
            template = spec.get("template") if doc["kind"] in ("Deployment", "QueueWorker") else None
            if template:
                out.append((f"{path.relative_to(ROOT)}:{doc['metadata']['name']}", template["spec"]))
    return out


def env_of(container: dict[str, Any]) -> dict[str, str]:
    env = {}
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        ref = (item.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            key = (ref["name"], ref["key"])
            assert key in SECRETS, f"{item['name']} reads Secret {key}, which no README or manifest comment names"
            env[item["name"]] = SECRETS[key]
    return env


@pytest.mark.parametrize(("where", "pod"), pod_specs(), ids=[w for w, _ in pod_specs()])
def test_every_container_validates_its_settings_in_prod(
    where: str, pod: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for c in pod["containers"]:
        entry = ENTRY[c["name"]]
        for k in [k for k in os.environ if k.startswith("QW_")]:
            monkeypatch.delenv(k)
        # The images set QW_ENV=prod (Containerfile); a manifest may say it again.
        for k, v in {"QW_ENV": "prod", **env_of(c)}.items():
            monkeypatch.setenv(k, v)
        try:
            SETTINGS[entry]()
        except ValidationError as exc:
            pytest.fail(f"{where}: {c['name']} would exit at start-up: {exc}")


def test_the_manifests_have_the_three_entry_points() -> None:
    names = {c["name"] for _, pod in pod_specs() for c in pod["containers"]}
    assert names == {"api", "worker", "operator"}


def test_the_shop_manifests_run_each_of_its_kinds_from_its_module() -> None:
    """examples/shop/manifests: one QueueWorker per kind of shop.tasks, its queue, the kind as the worker's
    argument and the module as QW_APP (the worker imports it to find the kind)."""
    # Read from the source: importing shop.tasks here would register its kinds in this process's registry, where
    # the SDK suites' own `inventory` (tests/support/sdk_tasks.py) must register later in the same session.
    tree = ast.parse((ROOT / "examples/shop/tasks.py").read_text())
    kinds = {
        kw.value.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "task"
        for kw in node.keywords
        if kw.arg == "kind" and isinstance(kw.value, ast.Constant)
    }
    seen = set()
    for path in SHOP_MANIFESTS:
        doc = yaml.safe_load(path.read_text())
        [container] = doc["spec"]["template"]["spec"]["containers"]
        [kind] = container["args"]
        assert doc["spec"]["queue"] == f"qw.{kind}" and path.stem == kind
        assert {"name": "QW_APP", "value": "shop.tasks"} in container["env"]
        seen.add(kind)
    assert seen == kinds == {"confirmation", "inventory", "analytics"}
