"""JSON Schemas of every event, and the check that a model still honours its published schema.

`python -m oms_contracts.schemas` rewrites contracts/schemas/ from the models. The contract test fails when a model
drifts from the checked-in schema, and says whether the drift is compatible (regenerate) or breaking (make a new
type version instead).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from .topics import ALL_EVENTS

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def event_schema(event: type) -> dict[str, Any]:
    schema = event.model_json_schema(mode="validation", by_alias=True)
    return {"$schema": _DIALECT, "$id": f"urn:oms:event:{event.TYPE}", **schema}


def current_schemas() -> dict[str, dict[str, Any]]:
    return {event.TYPE: event_schema(event) for event in ALL_EVENTS}


def checked_in_schemas(directory: Path = SCHEMA_DIR) -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))}


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for type_, schema in current_schemas().items():
        path = directory / f"{type_}.json"
        path.write_text(render(schema))
        written.append(path)
    return written


# What must not change under a field that readers and writers already rely on.
_SHAPE_KEYS = ("type", "const", "format", "pattern", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
# Length limits may be relaxed, never tightened or added: what validated against the old schema must still validate.
_UPPER_LIMITS = ("maxLength", "maxItems")
_LOWER_LIMITS = ("minLength", "minItems")


def incompatibilities(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Changes from `old` to `new` that break a producer or consumer written against `old`.

    Compatible: a new optional field, a relaxed length limit, a new enum value.
    Breaking: a removed or renamed field, a new required field, a field no longer required, a changed type,
    format, pattern, or bound, a tightened length limit, a removed enum value.
    """
    problems: list[str] = []
    _compare(old, new, old, new, "", problems)
    return problems


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        node = root.get("$defs", {}).get(name, {})
    return node


def _variants(node: dict[str, Any], root: dict[str, Any]) -> list[dict[str, Any]]:
    node = _resolve(node, root)
    for key in ("anyOf", "oneOf"):
        if key in node:
            return [_resolve(v, root) for v in node[key]]
    return [node]


def _kind(variant: dict[str, Any]) -> str:
    return json.dumps({k: variant.get(k) for k in _SHAPE_KEYS if k in variant})


def _compare(old: dict, new: dict, old_root: dict, new_root: dict, path: str, problems: list[str]) -> None:
    old_variants, new_variants = _variants(old, old_root), _variants(new, new_root)
    if len(old_variants) != 1 or len(new_variants) != 1:
        old_kinds = sorted(_kind(v) for v in old_variants)
        new_kinds = sorted(_kind(v) for v in new_variants)
        if old_kinds != new_kinds:
            problems.append(f"{path or '/'}: the alternatives changed from {old_kinds} to {new_kinds}")
            return
        # Pair the alternatives by kind, so that e.g. the string of a nullable string is compared with its successor.
        for o, n in zip(sorted(old_variants, key=_kind), sorted(new_variants, key=_kind), strict=True):
            _compare(o, n, old_root, new_root, path, problems)
        return
    o, n = old_variants[0], new_variants[0]
    for key in _SHAPE_KEYS:
        if o.get(key) != n.get(key):
            problems.append(f"{path or '/'}: {key} changed from {o.get(key)!r} to {n.get(key)!r}")
    for key in _UPPER_LIMITS:
        if key in n and n[key] < o.get(key, math.inf):
            problems.append(f"{path or '/'}: {key} tightened from {o.get(key)!r} to {n[key]!r}")
    for key in _LOWER_LIMITS:
        if n.get(key, 0) > o.get(key, 0):
            problems.append(f"{path or '/'}: {key} tightened from {o.get(key)!r} to {n[key]!r}")
    if "enum" in o and not set(o["enum"]) <= set(n.get("enum", o["enum"])):
        removed = sorted(set(o["enum"]) - set(n.get("enum", [])))
        problems.append(f"{path or '/'}: enum values removed: {removed}")
    old_props, new_props = o.get("properties", {}), n.get("properties", {})
    for name in old_props:
        if name not in new_props:
            problems.append(f"{path}/{name}: field removed or renamed")
    old_required, new_required = set(o.get("required", [])), set(n.get("required", []))
    for name in sorted(new_required - old_required):
        problems.append(f"{path}/{name}: field became required")
    for name in sorted(old_required - new_required):
        if name in new_props:
            problems.append(f"{path}/{name}: field is no longer required")
    for name, old_prop in old_props.items():
        if name in new_props:
            _compare(old_prop, new_props[name], old_root, new_root, f"{path}/{name}", problems)
    if "items" in o and "items" in n:
        _compare(o["items"], n["items"], old_root, new_root, f"{path}[]", problems)


if __name__ == "__main__":  # pragma: no cover
    for written in write(Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMA_DIR):
        print(written)
