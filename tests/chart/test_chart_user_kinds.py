"""The chart's list of kinds of your own (`workers.userKinds`), rendered by the real `helm template`: one QueueWorker
per entry next to the built-in ones, from the user's image with their module as QW_APP, userKindDefaults filled in
where an entry says nothing, secrets only by reference; wrong entries refused by the schema or the template.
(Restricted pods, no literal secrets and `helm lint --strict` cover ci/user-kinds-values.yaml with every scenario.)"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.conftest import _need
from tests.support.chart import CHART, MINIMAL, ROOT, helm, helm_binary, render, template_args

SHOP_VALUES = ROOT / "examples" / "shop" / "values.yaml"


@pytest.fixture(scope="module", autouse=True)
def _helm_present() -> None:
    if helm_binary() is None:
        _need("helm", FileNotFoundError("helm not built: make cluster-bin"))


def workers(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["spec"]["queue"].removeprefix("qw."): o for o in objects if o["kind"] == "QueueWorker"}


def env(qw: dict[str, Any]) -> dict[str, Any]:
    [container] = qw["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_the_shops_kinds_run_next_to_ours_from_its_image_and_module() -> None:
    qws = workers(render(MINIMAL, SHOP_VALUES))
    assert set(qws) == {"image", "email", "confirmation", "inventory", "analytics"}
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["workers"]["userKindDefaults"]
    inventory = qws["inventory"]
    [container] = inventory["spec"]["template"]["spec"]["containers"]
    assert inventory["metadata"]["name"] == "qw-queueworker-inventory"
    assert container["image"] == "registry.example.com/shop-workers:1.0.0"
    assert container["imagePullPolicy"] == "IfNotPresent" and container["args"] == ["inventory"]
    assert "command" not in container  # the image's entry point: python -m qw_workers
    assert env(inventory)["QW_APP"] == "shop.tasks" and env(inventory)["PYTHONPATH"] == "/app/examples"
    assert env(inventory)["SHOP_DATABASE_URL"] == {"secretKeyRef": {"name": "shop-database", "key": "url"}}
    # Its own minReplicas; everything else from userKindDefaults.
    assert inventory["spec"]["minReplicas"] == 1 and inventory["spec"]["maxReplicas"] == defaults["maxReplicas"]
    assert inventory["spec"]["scaling"]["messagesPerReplica"] == defaults["messagesPerReplica"]
    assert (
        env(inventory)["QW_PREFETCH"] == str(defaults["prefetch"]) and container["resources"] == defaults["resources"]
    )
    assert qws["analytics"]["spec"]["scaling"]["messagesPerReplica"] == 200
    assert env(qws["confirmation"])["QW_SMTP_HOST"] == "smtp.example.com"
    # The broker and the task store are queueworker's, as for the built-in kinds; the built-in kinds are unchanged.
    assert env(inventory)["QW_RABBITMQ_URL"] == env(qws["email"])["QW_RABBITMQ_URL"]
    assert env(inventory)["QW_DATABASE_URL"] == env(qws["email"])["QW_DATABASE_URL"]
    assert "QW_APP" not in env(qws["email"]) and workers(render(MINIMAL))["email"] == qws["email"]


def test_the_ci_scenario_is_the_shops_values() -> None:
    """ci/user-kinds-values.yaml (linted and checked with every scenario) renders what the shop's values do."""
    assert render(CHART / "ci" / "user-kinds-values.yaml") == render(MINIMAL, SHOP_VALUES)


ONE = "workers.userKinds[0]"
BASE = (f"{ONE}.name=orders", f"{ONE}.image.repository=r.example.com/w", f"{ONE}.image.tag=v1", f"{ONE}.app=shop.tasks")


def test_a_name_with_an_underscore_makes_a_valid_resource_name() -> None:
    qws = workers(render(MINIMAL, sets=(*BASE, f"{ONE}.name=order_lines")))
    assert qws["order_lines"]["metadata"]["name"] == "qw-queueworker-order-lines"
    assert qws["order_lines"]["spec"]["template"]["spec"]["containers"][0]["args"] == ["order_lines"]


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        (f"{ONE}.name=email", "/workers/userKinds/0/name"),  # a built-in kind
        (f"{ONE}.name=Orders", "/workers/userKinds/0/name"),
        (f"{ONE}.app=shop/tasks.py", "/workers/userKinds/0/app"),
        (f"{ONE}.image.tag=", "/workers/userKinds/0/image/tag"),  # no silent :latest or chart version
        (f"{ONE}.env.QW_APP=other", "/workers/userKinds/0/env"),  # QW_APP is `app`
        (f"{ONE}.maxReplicas=0", "/workers/userKinds/0/maxReplicas"),
        (f"{ONE}.replicas=3", "additional properties 'replicas' not allowed"),
        (f"{ONE}.secretEnv[0].name=X", "/workers/userKinds/0/secretEnv/0"),  # no secretName, key
    ],
)
def test_the_schema_refuses_a_wrong_entry_naming_it(setting: str, complaint: str) -> None:
    out = helm(*template_args(MINIMAL, sets=(*BASE, setting)), check=False)
    assert out.returncode != 0, f"{setting} was accepted"
    assert complaint in out.stderr, out.stderr


def test_an_entry_without_its_image_or_module_is_refused() -> None:
    out = helm(*template_args(MINIMAL, sets=(f"{ONE}.name=orders", f"{ONE}.app=shop.tasks")), check=False)
    assert out.returncode != 0 and "/workers/userKinds/0" in out.stderr and "image" in out.stderr, out.stderr


def test_a_kind_listed_twice_is_refused_by_name() -> None:
    twice = (*BASE, *(s.replace("[0]", "[1]") for s in BASE))
    out = helm(*template_args(MINIMAL, sets=twice), check=False)
    assert out.returncode != 0 and '"orders" is listed twice' in out.stderr, out.stderr


def test_a_kinds_cooldown_and_scale_down_window_are_values_with_the_crds_defaults() -> None:
    """A kind that runs rarely should go back to 0 soon after its queue empties: set it per entry, not by patching."""
    sets = ("workers.userKinds[0].cooldownSeconds=10", "workers.userKinds[0].scaleDownStabilizationSeconds=15")
    qws = workers(render(MINIMAL, SHOP_VALUES, sets=sets))
    first = yaml.safe_load(SHOP_VALUES.read_text())["workers"]["userKinds"][0]["name"]
    assert qws[first]["spec"]["scaling"]["cooldownSeconds"] == 10
    assert qws[first]["spec"]["scaling"]["scaleDownStabilizationSeconds"] == 15
    others = [qw for kind, qw in qws.items() if kind not in (first, "image", "email")]
    assert others and all(qw["spec"]["scaling"]["cooldownSeconds"] == 300 for qw in others)  # userKindDefaults
    assert "cooldownSeconds" not in qws["email"]["spec"]["scaling"]  # built-in kinds: the CRD's default, as before
