"""The QueueWorker CRD (and kopf's peering CRDs), built as dicts: the single source of manifests/crd.yaml.

python -m qw_operator.crd > manifests/crd.yaml      (tests/unit/test_operator_crd.py checks they match)
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

GROUP = "queueworker.dev"
VERSION = "v1alpha1"
KIND = "QueueWorker"
PLURAL = "queueworkers"
PAUSED_ANNOTATION = f"{GROUP}/paused"

Schema = dict[str, Any]


def _int(desc: str, minimum: int | None = 0, default: int | None = None) -> Schema:
    return _number("integer", desc, minimum, default)


def _num(desc: str, minimum: float | None = 0, default: float | None = None) -> Schema:
    return _number("number", desc, minimum, default)


def _number(type_: str, desc: str, minimum: float | None, default: float | None) -> Schema:
    s: Schema = {"type": type_, "description": desc}
    if minimum is not None:
        s["minimum"] = minimum
    if default is not None:
        s["default"] = default
    return s


def _str(desc: str, **extra: Any) -> Schema:
    return {"type": "string", "description": desc, **extra}


def _obj(desc: str, props: dict[str, Schema], required: list[str] | None = None, **extra: Any) -> Schema:
    s: Schema = {"type": "object", "description": desc, "properties": props, **extra}
    if required:
        s["required"] = required
    return s


SCALING = _obj(
    "How queue metrics become a replica count.",
    {
        "mode": _str(
            "QueueLength: replicas = backlog / messagesPerReplica. DrainTime: replicas = (publish rate + backlog /"
            " targetDrainSeconds) / measured acks per replica per second; QueueLength until that rate is measured.",
            enum=["QueueLength", "DrainTime"],
            default="QueueLength",
        ),
        "messagesPerReplica": _int("Backlog one replica is expected to handle (QueueLength mode).", 1, 20),
        "countUnacked": {
            "type": "boolean",
            "default": True,
            "description": "Backlog = ready + unacknowledged (true) or ready only (false).",
        },
        "targetDrainSeconds": _int("DrainTime mode: drain the current backlog within this many seconds.", 1, 60),
        "activationThreshold": _int("Messages needed to go from 0 to 1 replica (0: any message).", 0, 0),
        "cooldownSeconds": _int("Seconds without activity (no ready, unacked or published messages) before 0.", 0, 300),
        "scaleDownStabilizationSeconds": _int(
            "Scale down to the highest recommendation of this many past seconds (HPA-style), never below.", 0, 300
        ),
        "maxStepUp": _int("Most replicas added per tick (unset: no limit).", 1),
        "maxStepDown": _int("Most replicas removed per tick (unset: no limit).", 1),
        "tolerance": _num("No change while desired/current is within 1 +- tolerance.", 0, 0.1),
    },
    default={},
)

SPEC = _obj(
    "What to scale, on which queue, and how.",
    {
        "queue": _str("RabbitMQ queue whose depth drives the replicas.", minLength=1),
        "vhost": _str("RabbitMQ virtual host of the queue.", default="/"),
        "broker": _str(
            "Name of a broker configured in the operator (QW_BROKERS / QW_RABBITMQ_MANAGEMENT_URL); the operator holds"
            " the management URL and credentials, so no Secret is referenced here.",
            default="default",
        ),
        "template": {
            "type": "object",
            "description": "Pod template (a PodTemplateSpec) of a Deployment <name>-worker that the operator creates"
            " and owns. Exactly one of template and scaleTargetRef.",
            "x-kubernetes-preserve-unknown-fields": True,
        },
        "scaleTargetRef": _obj(
            "An existing Deployment in this namespace to scale. Exactly one of template and scaleTargetRef.",
            {"name": _str("Name of the Deployment.", minLength=1)},
            ["name"],
        ),
        "minReplicas": _int("Fewest replicas; 0 allows scale to zero after cooldownSeconds.", 0, 0),
        "maxReplicas": _int("Most replicas.", 1),
        "pollingInterval": _int("Seconds between scaling decisions.", 1, 5),
        "scaling": SCALING,
        "fallback": _obj(
            "Replicas to run when the queue metrics cannot be read failureThreshold times in a row (unset: hold).",
            {
                "failureThreshold": _int("Consecutive failed reads before the fallback applies.", 1, 3),
                "replicas": _int("Replicas while the metrics are unavailable.", 0),
            },
            ["replicas"],
        ),
    },
    ["queue", "maxReplicas"],
    **{
        "x-kubernetes-validations": [
            {
                "rule": "has(self.template) != has(self.scaleTargetRef)",
                "message": "exactly one of spec.template or spec.scaleTargetRef must be set",
            },
            {"rule": "self.minReplicas <= self.maxReplicas", "message": "spec.minReplicas must be <= spec.maxReplicas"},
            {
                "rule": "!has(self.fallback) || self.fallback.replicas <= self.maxReplicas",
                "message": "spec.fallback.replicas must be <= spec.maxReplicas",
            },
        ]
    },
)

CONDITION = _obj(
    "A standard condition: Ready, Active, BrokerReachable, MetricsAvailable or ScalingLimited.",
    {
        "type": _str("Condition type."),
        "status": _str("True, False or Unknown.", enum=["True", "False", "Unknown"]),
        "reason": _str("CamelCase reason."),
        "message": _str("Human-readable details."),
        "lastTransitionTime": _str("When the status last changed.", format="date-time"),
        "observedGeneration": _int("metadata.generation the condition was set for."),
    },
    ["type", "status"],
)

STATUS = _obj(
    "What the operator saw and did.",
    {
        "replicas": _int("The Deployment's observed replicas (its status.replicas: pods that exist, ready or not)."),
        "readyReplicas": _int("The Deployment's ready replicas (its status.readyReplicas)."),
        "desiredReplicas": _int("What the policy asked for at the last tick (the Deployment's spec.replicas)."),
        "queue": _obj(
            "Queue metrics from the last successful read.",
            {
                "ready": _int("Messages ready."),
                "unacked": _int("Messages delivered, not yet acknowledged."),
                "consumers": _int("Consumers on the queue."),
                "publishRate": _num("Messages published per second (absent while no source has a rate)."),
                "ackRate": _num("Messages acknowledged per second (absent while no source has a rate)."),
                "depthSource": _str(
                    "Where ready/unacked/consumers came from: the broker's Prometheus endpoint or its management API.",
                    enum=["Prometheus", "ManagementAPI"],
                ),
                "rateSource": _str(
                    "Where the rates came from: Prometheus per-queue counters (RabbitMQ 4.x) or the management API.",
                    enum=["Prometheus", "ManagementAPI"],
                ),
                "lastPublishTime": _str(
                    "When the operator last saw the publish counter grow: the rate's age. A rate older than twice "
                    "the polling interval (at least 2 s) is not counted as activity.",
                    format="date-time",
                ),
            },
        ),
        "lastScaleTime": _str("When replicas were last changed.", format="date-time"),
        "lastScaleReason": _str("Why replicas were last changed."),
        "reason": _str("The last decision's reason."),
        "observedGeneration": _int("metadata.generation last acted on."),
        "consecutiveFailures": _int("Consecutive failed metric reads."),
        "conditions": {
            "type": "array",
            "description": "Ready, Active, BrokerReachable, MetricsAvailable (depth known, whence), ScalingLimited.",
            "items": CONDITION,
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
        "history": _obj(
            "Policy state kept across operator restarts (stabilization window, last activity, measured capacity).",
            {
                "recommendations": {
                    "type": "array",
                    "description": "Change points of the recommendation within the stabilization window.",
                    "items": _obj(
                        "From `time` on, `replicas` was recommended.",
                        {"time": _num("Epoch seconds."), "replicas": _int("Recommended replicas.")},
                    ),
                },
                "lastActiveTime": _num("Epoch seconds of the last activity on the queue."),
                "perReplicaAckRate": _num("Measured acks per second per replica."),
            },
        ),
    },
)


def queueworker_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "plural": PLURAL, "singular": "queueworker", "shortNames": ["qw"]},
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Queue", "type": "string", "jsonPath": ".spec.queue"},
                        {"name": "Ready", "type": "integer", "jsonPath": ".status.queue.ready"},
                        {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
                        {"name": "Desired", "type": "integer", "jsonPath": ".status.desiredReplicas"},
                        {
                            "name": "Ready-Replicas",
                            "type": "integer",
                            "jsonPath": ".status.readyReplicas",
                            "priority": 1,
                        },  # fmt: skip
                        {
                            "name": "Depth-From",
                            "type": "string",
                            "jsonPath": ".status.queue.depthSource",
                            "priority": 1,
                        },  # fmt: skip
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": _obj(
                            "Scales a worker Deployment by the depth of a RabbitMQ queue.",
                            {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": SPEC,
                                "status": STATUS,
                            },
                            ["spec"],
                        )
                    },
                }
            ],
        },
    }


def peering_crds() -> list[dict[str, Any]]:
    """kopf's peering CRDs (as in kopf's docs/peering.rst): operators see each other through these objects."""
    out = []
    for scope, kind, plural in (
        ("Cluster", "ClusterKopfPeering", "clusterkopfpeerings"),
        ("Namespaced", "KopfPeering", "kopfpeerings"),
    ):
        out.append(
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": f"{plural}.kopf.dev"},
                "spec": {
                    "scope": scope,
                    "group": "kopf.dev",
                    "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                    "versions": [
                        {
                            "name": "v1",
                            "served": True,
                            "storage": True,
                            "schema": {
                                "openAPIV3Schema": {
                                    "type": "object",
                                    "properties": {
                                        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                                    },
                                }
                            },
                        }
                    ],
                },
            }
        )
    return out


HEADER = "# Generated by `python -m qw_operator.crd` from operator/qw_operator/crd.py; do not edit by hand.\n"


def render() -> str:
    docs = [queueworker_crd(), *peering_crds()]
    return HEADER + "---\n".join(yaml.safe_dump(d, sort_keys=False, width=120) for d in docs)


if __name__ == "__main__":
    sys.stdout.write(render())
