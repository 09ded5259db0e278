"""The operator on the real control plane, under the shipped RBAC, asked by a QueueWorker to do what its author
could not do alone (issue 15, confused deputy): run worker pods as another ServiceAccount, or take over a
Deployment of the right name that someone else made. It refuses both, says why (an Event, and for the
Deployment the Ready condition TargetNotOwned), creates nothing and changes nothing."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.e2e.harness import Env, deployment, queueworker
from tests.e2e.test_operator import TEMPLATE
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e


def test_a_template_running_as_another_service_account_is_refused(env: Env, operator: Any) -> None:
    template = copy.deepcopy(TEMPLATE)
    template["spec"]["serviceAccountName"] = "queueworker-operator"
    env.queue("sa")
    env.apply(queueworker("sa", env, "sa", template=template))
    refused = wait_for("the TemplateRefused Event", lambda: env.events("TemplateRefused"), 30)
    assert "'queueworker-operator'" in refused[0] and "QW_TEMPLATE_SERVICE_ACCOUNTS" in refused[0], refused
    assert env.replicas("sa-worker") is None  # no Deployment was created
    # Then the author fixes the template: the operator creates the Deployment as usual.
    env.apply(queueworker("sa", env, "sa", template=TEMPLATE))
    wait_for("the Deployment once the template is allowed", lambda: env.replicas("sa-worker") == 0, 30)


def test_a_deployment_of_the_same_name_not_made_by_the_operator_is_never_adopted(env: Env, operator: Any) -> None:
    # Given someone's own Deployment named like a QueueWorker's worker Deployment
    theirs = deployment("victim-worker", 1)
    env.apply(theirs)
    env.queue("victim")
    env.publish("victim", 50)  # enough to scale a Deployment the QueueWorker controlled up to 5
    # When a template-form QueueWorker of that name appears
    env.apply(queueworker("victim", env, "victim", template=TEMPLATE))
    # Then the operator says why it leaves it alone, and does
    wait_for(
        "Ready=False TargetNotOwned",
        lambda: any(
            c["type"] == "Ready" and c["reason"] == "TargetNotOwned"
            for c in env.qw("victim").get("status", {}).get("conditions", [])
        ),
        30,
    )
    assert "never adopts" in wait_for("the TargetNotOwned Event", lambda: env.events("TargetNotOwned"), 10)[0]
    live = env.apps.read_namespaced_deployment("victim-worker", env.namespace)
    assert live.spec.replicas == 1  # not scaled although 50 messages wait
    assert live.spec.template.metadata.labels == {"app": "victim-worker"}  # its template not rewritten
    assert not live.metadata.owner_references  # not adopted
