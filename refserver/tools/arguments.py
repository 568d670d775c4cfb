"""Type raw tool-call argument strings by the request's JSON schema.

Models write every argument as text; clients expect JSON typed by the tool's schema.
String parameters stay verbatim, except that declared path parameters (strings, or arrays
of strings) are normalized, see ``paths``; other types are parsed, and a value that does
not parse is kept as the original string, so no text is ever lost. A parameter the schema
does not declare gets a best effort, with no path normalization: JSON objects, arrays,
numbers and booleans are parsed, anything else stays a string.
"""

from __future__ import annotations

import json
import math
from typing import Any

from refserver.tools.paths import is_path_param, normalize_path

# The order in which a value is tried against the types a schema allows; "string",
# when allowed, is the fallback after all of these fail.
_TYPE_ORDER = ("null", "boolean", "integer", "number", "object", "array")
_FAILED = object()  # A value that did not parse as the type tried.
_JSON_TYPE_OF = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
    type(None): "null",
}


def tool_parameters(tools: list[dict] | None, name: str) -> dict | None:
    """The ``parameters`` schema of the tool called ``name`` in an OpenAI tools list."""
    for tool in tools or ():
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and function.get("name") == name:
            parameters = function.get("parameters")
            return parameters if isinstance(parameters, dict) else None
    return None


def type_arguments(raw: dict[str, str], parameters: dict | None) -> dict[str, Any]:
    """Type each raw argument by its property in the ``parameters`` JSON schema."""
    root = parameters or {}
    properties = root.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    return {
        name: _type_value(name, value, properties.get(name), root) for name, value in raw.items()
    }


def _type_value(name: str, value: str, schema: Any, root: dict) -> Any:
    if not isinstance(schema, dict):
        return _best_effort(value)
    schema, seen = resolve_ref(schema, root)
    types = schema_types(schema, root, seen)
    if not types:
        return _best_effort(value)
    for type_name in _TYPE_ORDER:
        if type_name in types and (parsed := _parse_as(type_name, value)) is not _FAILED:
            return _normalize_paths(name, schema, parsed)
    if "string" in types:
        return _normalize_paths(name, schema, value)
    return value


def _normalize_paths(name: str, schema: dict, value: Any) -> Any:
    """Normalize a path string, or each string of a list of paths, if the parameter holds paths."""
    if not is_path_param(name, schema):
        return value
    if isinstance(value, str):
        return normalize_path(value)
    if isinstance(value, list):
        return [normalize_path(item) if isinstance(item, str) else item for item in value]
    return value


def resolve_ref(
    schema: dict, root: dict, seen: frozenset[str] = frozenset()
) -> tuple[dict, frozenset[str]]:
    """`schema` with a local ``$ref`` (``#/$defs/X``, ``#/definitions/X`` of `root`, as
    pydantic writes nested models) replaced by its target, its other keywords kept; and
    the references followed to get there, `seen` included. A reference already seen
    (a schema that contains itself) is left as it is."""
    followed = set(seen)
    while isinstance(ref := schema.get("$ref"), str) and ref not in followed:
        target = _ref_target(ref, root)
        if target is None:
            break
        followed.add(ref)
        schema = {**target, **{key: v for key, v in schema.items() if key != "$ref"}}
    return schema, frozenset(followed)


def _ref_target(ref: str, root: dict) -> dict | None:
    for section in ("$defs", "definitions"):
        prefix = f"#/{section}/"
        if ref.startswith(prefix):
            name = ref[len(prefix) :].replace("~1", "/").replace("~0", "~")
            definitions = root.get(section)
            target = definitions.get(name) if isinstance(definitions, dict) else None
            return target if isinstance(target, dict) else None
    return None


def schema_types(
    schema: dict, root: dict | None = None, seen: frozenset[str] = frozenset()
) -> set[str]:
    """All JSON types a schema allows: ``type`` (str or list), ``enum``/``const``,
    anyOf/oneOf/allOf, following local ``$ref``s into `root` (by default `schema`), each
    once on a path (`seen`: those followed to `schema`)."""
    root = schema if root is None else root
    schema, seen = resolve_ref(schema, root, seen)
    declared = schema.get("type")
    types = {declared} if isinstance(declared, str) else set()
    if isinstance(declared, list):
        types.update(t for t in declared if isinstance(t, str))
    values = list(_listed(schema.get("enum")))
    if "const" in schema:
        values.append(schema["const"])
    types.update(_JSON_TYPE_OF[type(v)] for v in values if type(v) in _JSON_TYPE_OF)
    for key in ("anyOf", "oneOf", "allOf"):
        for choice in _listed(schema.get(key)):
            if isinstance(choice, dict):
                types |= schema_types(choice, root, seen)
    return types


def _listed(value: Any) -> list:
    """A keyword that must be a list, or nothing when a client sent something else (a
    reply's arguments are read by what the schema says, never failed by it)."""
    return value if isinstance(value, list) else []


def _parse_as(type_name: str, value: str) -> Any:
    """``value`` as the JSON type ``type_name``, or ``_FAILED``."""
    text = value.strip()
    if type_name == "null":
        return None if text == "null" else _FAILED
    if type_name == "boolean":
        return {"true": True, "false": False}.get(text.lower(), _FAILED)
    parsed = _json_or_failed(text)
    if type_name == "integer" and isinstance(parsed, float) and parsed.is_integer():
        return int(parsed)
    expected = {"integer": int, "number": (int, float), "object": dict, "array": list}[type_name]
    if isinstance(parsed, bool) or not isinstance(parsed, expected):
        return _FAILED
    return parsed


def _best_effort(value: str) -> Any:
    parsed = _json_or_failed(value.strip())
    if isinstance(parsed, dict | list | bool | int | float):
        return parsed
    return value


def _json_or_failed(text: str) -> Any:
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        return _FAILED
    if isinstance(parsed, float) and not math.isfinite(parsed):
        return _FAILED  # NaN and Infinity would not survive json.dumps as valid JSON.
    return parsed
