"""Payload models built from task signatures (qw_core.registry.payload_model): what a payload must look like."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field
from qw_core.registry import InvalidPayload, TaskSpec, describe_errors, payload_model


class Item(BaseModel):
    sku: str
    qty: int = Field(default=1, ge=1)


def reserve(order_id: str, items: list[Item], note: str | None = None, priority: Annotated[int, Field(le=9)] = 0):
    return None


def spec_of(fn: Any, kind: str = "inventory") -> TaskSpec:
    return TaskSpec(kind, fn, payload_model(fn, kind))


def test_the_schema_follows_the_signature():
    schema = spec_of(reserve).json_schema()
    assert schema["title"] == "InventoryPayload"
    assert schema["required"] == ["order_id", "items"] and schema["additionalProperties"] is False
    assert schema["properties"]["priority"] == {"default": 0, "maximum": 9, "title": "Priority", "type": "integer"}
    assert schema["properties"]["items"]["items"] == {"$ref": "#/$defs/Item"}


def test_valid_payloads_become_typed_arguments_and_json_for_the_wire():
    spec = spec_of(reserve)
    model = spec.validate({"order_id": "o1", "items": [{"sku": "A"}]})
    assert dict(model)["items"] == [Item(sku="A", qty=1)]
    assert spec.to_args({"order_id": "o1", "items": [Item(sku="B", qty=2)]}) == {
        "order_id": "o1", "items": [{"sku": "B", "qty": 2}], "note": None, "priority": 0,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("payload", "names"),
    [
        ({"items": []}, "order_id: Field required"),
        ({"order_id": "o", "items": [{"qty": 0}]}, "items.0.sku: Field required; items.0.qty: Input should be"),
        ({"order_id": "o", "items": [], "coupon": "x"}, "coupon: Extra inputs are not permitted"),
        ({"order_id": 5, "items": "no"}, "order_id: Input should be a valid string; items: Input should be"),
    ],
)
def test_invalid_payloads_name_each_bad_field(payload, names):
    with pytest.raises(InvalidPayload) as info:
        spec_of(reserve).validate(payload)
    assert names in str(info.value) and info.value.kind == "inventory" and info.value.errors


def test_unannotated_parameters_take_any_json():
    def loose(a, b=2):
        return None

    assert spec_of(loose).to_args({"a": {"x": [1]}}) == {"a": {"x": [1]}, "b": 2}


@pytest.mark.parametrize("sig", ["*args", "**kwargs", "a, /"])
def test_parameters_json_cannot_name_are_refused_when_the_task_is_defined(sig):
    ns: dict[str, Any] = {}
    exec(f"def fn({sig}): pass", ns)  # noqa: S102 - a signature under test
    with pytest.raises(TypeError, match="plain named parameter"):
        payload_model(ns["fn"], "k")


def test_string_annotations_resolve_in_the_functions_module():
    ns: dict[str, Any] = {"Item": Item}
    exec("from __future__ import annotations\ndef fn(items: list[Item]): pass", ns)  # noqa: S102
    assert spec_of(ns["fn"]).to_args({"items": [{"sku": "A"}]}) == {"items": [{"sku": "A", "qty": 1}]}


def test_many_errors_are_summarised():
    errors = [{"loc": ("f", i), "msg": "bad"} for i in range(8)]
    assert describe_errors(errors).endswith("f.4: bad (+3 more)")
