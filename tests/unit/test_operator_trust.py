"""What the operator refuses to do for a QueueWorker's author (issue 15, confused deputy): run pods as a
ServiceAccount the administrator did not allow, and take over or rewrite a Deployment it does not control."""

from __future__ import annotations

from typing import Any

import pytest
from qw_operator.observe import Reading
from qw_operator.scaler import TemplateRefused, check_template, not_owned_reason
from qw_operator.status import build_status

ALLOWED = {"default", "workers"}


def template(**pod: Any) -> dict[str, Any]:
    return {"spec": {"containers": [{"name": "w", "image": "x"}], **pod}}


@pytest.mark.parametrize(
    "pod", [{}, {"serviceAccountName": ""}, {"serviceAccountName": "default"}, {"serviceAccountName": "workers"}]
)
def test_a_template_may_run_as_an_allowed_account_or_none(pod: dict[str, Any]) -> None:
    check_template(template(**pod), ALLOWED)


@pytest.mark.parametrize("pod", [{"serviceAccountName": "queueworker-operator"}, {"serviceAccount": "admin"}])
def test_a_template_naming_another_account_is_refused_with_what_to_do(pod: dict[str, Any]) -> None:
    with pytest.raises(TemplateRefused) as err:
        check_template(template(**pod), ALLOWED)
    message = str(err.value)
    assert "QW_TEMPLATE_SERVICE_ACCOUNTS" in message and "scaleTargetRef" in message
    assert next(iter(pod.values())) in message


def test_no_allowed_account_refuses_every_template() -> None:
    with pytest.raises(TemplateRefused):
        check_template(template(), set())


def test_only_a_deployment_this_queueworker_controls_is_its_own() -> None:
    assert not_owned_reason("uid-1", "uid-1") is None
    assert "never adopts" in str(not_owned_reason(None, "uid-1"))
    assert "another object" in str(not_owned_reason("uid-2", "uid-1"))


def test_a_deployment_not_owned_is_reported_as_such_not_as_missing() -> None:
    status = build_status(
        None,
        Reading(None, True),
        None,
        current=None,
        observed=None,
        target="victim-worker",
        paused=False,
        generation=1,
        now=0.0,
        target_problem="exists and is controlled by another object",
    )
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "TargetNotOwned")
    assert ready["message"] == "Deployment victim-worker exists and is controlled by another object"
