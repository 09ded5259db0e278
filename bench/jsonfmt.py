"""JSON for bench/results: indented like `json.dumps(indent=2)`, but a list of plain values stays on one line, so a
time series of 600 points is one line of the file rather than 600. A figure that could not be measured (NaN,
infinity: e.g. a percentile of no samples) is written as null, so every file stays valid JSON."""

from __future__ import annotations

import json
import math
from typing import Any


def dumps(obj: Any, level: int = 0) -> str:
    pad, end = "  " * (level + 1), "  " * level
    if isinstance(obj, dict) and obj:
        items = [f"{pad}{json.dumps(str(k))}: {dumps(v, level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + end + "}"
    if isinstance(obj, list | tuple) and any(isinstance(v, dict | list | tuple) for v in obj):
        return "[\n" + ",\n".join(pad + dumps(v, level + 1) for v in obj) + "\n" + end + "]"
    if isinstance(obj, float) and not math.isfinite(obj):
        return "null"
    if isinstance(obj, list | tuple):
        return json.dumps([None if isinstance(v, float) and not math.isfinite(v) else v for v in obj])
    return json.dumps(obj)
