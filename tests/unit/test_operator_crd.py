"""manifests/crd.yaml is generated from qw_operator.crd; RBAC stays minimal; the owned Deployment builder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from qw_operator.crd import queueworker_crd, render
from qw_operator.scaler import NAME_LABEL, owned_deployment, target_name

ROOT = Path(__file__).resolve().parents[2]


def test_manifest_matches_the_generator() -> None:
    assert (ROOT / "manifests/crd.yaml").read_text() == render(), "run: python -m qw_operator.crd > manifests/crd.yaml"


def _walk(schema: dict[str, Any], path: str = "") -> list[str]:
    missing = [] if "description" in schema or path.count(".") < 2 else [path]
    for name, sub in (schema.get("properties") or {}).items():
        missing += _walk(sub, f"{path}.{name}")
    if "items" in schema:
        missing += _walk(schema["items"], path + "[]")
    return missing


def test_every_spec_and_status_field_is_described_for_kubectl_explain() -> None:
    root = queueworker_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _walk(root["properties"]["spec"], ".spec") == []
    assert _walk(root["properties"]["status"], ".status") == []


def test_crd_shape() -> None:
    crd = queueworker_crd()
    v = crd["spec"]["versions"][0]
    assert crd["metadata"]["name"] == "queueworkers.queueworker.dev"
    assert crd["spec"]["names"]["shortNames"] == ["qw"]
    assert v["subresources"] == {"status": {}}
    assert [c["name"] for c in v["additionalPrinterColumns"]] == [
        "Queue",
        "Ready",
        "Replicas",
        "Desired",
        "Ready-Replicas",
        "Depth-From",
        "Age",
    ]
    rules = v["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"]
    assert any("has(self.template) != has(self.scaleTargetRef)" == r["rule"] for r in rules)


def test_rbac_is_minimal_and_commented() -> None:
    text = (ROOT / "manifests/rbac.yaml").read_text()
    docs = [d for d in yaml.safe_load_all(text) if d]
    kinds = {d["kind"] for d in docs}
    assert kinds == {"ServiceAccount", "Role", "RoleBinding"}  # nothing cluster-scoped
    role = next(d for d in docs if d["kind"] == "Role")
    for rule in role["rules"]:
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"]
        assert "secrets" not in rule["resources"]
    # every rule is preceded by a "framework" or "application" comment
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("- apiGroups:"):
            j = i - 1
            while lines[j - 1].strip().startswith("#"):
                j -= 1  # the first line of the comment block above the rule
            assert lines[j].strip().startswith(("# framework", "# application")), line


def test_owned_deployment_is_a_dict_with_owner_and_selector() -> None:
    tpl = {"metadata": {"labels": {"app": "w"}}, "spec": {"containers": [{"name": "w", "image": "img"}]}}
    d = owned_deployment("images", "ns", "uid-1", tpl, 2)
    assert d["metadata"]["name"] == "images-worker" and d["metadata"]["namespace"] == "ns"
    assert d["metadata"]["ownerReferences"][0] == {
        "apiVersion": "queueworker.dev/v1alpha1",
        "kind": "QueueWorker",
        "name": "images",
        "uid": "uid-1",
        "controller": True,
    }
    assert d["spec"]["replicas"] == 2
    assert d["spec"]["selector"]["matchLabels"] == {NAME_LABEL: "images"}
    assert d["spec"]["template"]["metadata"]["labels"] == {"app": "w", NAME_LABEL: "images"}
    assert tpl["metadata"]["labels"] == {"app": "w"}  # the CR's template is not mutated


def test_target_name() -> None:
    assert target_name("a", {"template": {}}) == "a-worker"
    assert target_name("a", {"scaleTargetRef": {"name": "existing"}}) == "existing"
