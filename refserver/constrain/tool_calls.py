"""The grammar of a MiniMax tool-call block: calls of offered tools with valid arguments.

A block is written as the chat template shows it::

    <minimax:tool_call>
    <invoke name="get_weather">
    <parameter name="city">Paris</parameter>
    </invoke>
    </minimax:tool_call>

Each value is what ``tools.arguments.type_arguments`` reads back: a string parameter is
raw text (held to its enum, const, pattern, minLength and maxLength), any other type is
JSON valid against the parameter's schema. Parameters follow the schema's order; the
required ones always appear, the others may be left out.

A tool with ``strict: true`` must use only keywords the grammar enforces (else a
ConstraintError names them); any other tool's unsupported keywords are left unchecked.
"""

from __future__ import annotations

from typing import Any

from llguidance import regex_to_lark

from refserver.constrain.lark import ConstraintError, json_value, literal
from refserver.tools.arguments import resolve_ref, schema_types
from refserver.tools.minimax import TOOL_CALL_END, TOOL_CALL_START

# Keywords that say nothing about a value.
_ANNOTATIONS = frozenset(
    ("description", "title", "default", "examples", "$comment", "deprecated", "readOnly",
     "writeOnly", "$schema", "$id")
)  # fmt: skip
_STRING_KEYWORDS = _ANNOTATIONS | {"type", "enum", "const", "pattern", "minLength", "maxLength"}
_PARAMETERS_KEYWORDS = _ANNOTATIONS | {
    "type", "properties", "required", "additionalProperties", "$defs", "definitions"
}  # fmt: skip
_DEFINITIONS = ("$defs", "definitions")


def call_rules(tools: tuple[dict[str, Any], ...], single: bool, marker) -> list[str]:
    """Lark rules whose rule ``calls`` is one block of one (`single`) or more invokes."""
    invokes = "invoke" if single else "invoke+"
    lines = [
        f'calls: {marker(TOOL_CALL_START)} "\\n" {invokes} {marker(TOOL_CALL_END)}',
        "invoke: " + " | ".join(f"invoke_{i}" for i in range(len(tools))),
    ]
    for index, tool in enumerate(tools):
        lines += _invoke_rules(f"invoke_{index}", tool["function"])
    return lines


def _invoke_rules(rule: str, function: dict[str, Any]) -> list[str]:
    name, strict = function["name"], function.get("strict") is True
    schema = function.get("parameters") or {}
    _check_keywords(schema, _PARAMETERS_KEYWORDS, f'the parameters of tool "{name}"', strict)
    _check_shapes(schema, f'the parameters of tool "{name}"')
    properties = schema.get("properties") or {}
    required = schema.get("required") or []  # names: _check_shapes saw to it
    definitions = {key: schema[key] for key in _DEFINITIONS if key in schema}
    lines, parts = [], []
    for index, param in enumerate([*properties, *(p for p in required if p not in properties)]):
        param_rule = f"{rule}_p{index}"
        where = f'parameter "{param}" of tool "{name}"'
        param_schema = properties.get(param)
        param_schema = param_schema if isinstance(param_schema, dict) else {}
        value, extra = _value(param_rule, {**param_schema, **definitions}, strict, where)
        opening = literal(f'<parameter name="{param}">')
        lines += [f'{param_rule}: {opening} {value} "\\n"', *extra]
        parts.append(param_rule if param in required else f"{param_rule}?")
    head, tail = literal(f'<invoke name="{name}">\n'), literal("</invoke>\n")
    return [f"{rule}: {head} {' '.join(parts)} {tail}", *lines]


def _value(
    rule: str, schema: dict[str, Any], strict: bool, where: str, seen: frozenset[str] = frozenset()
) -> tuple[str, list[str]]:
    """The value of a parameter with its closing tag, and the rules it needs. `schema`
    carries the parameters' definitions, for its ``$ref``s (`seen`: those followed to
    it; one seen again is a schema that contains itself, left to the JSON compiler)."""
    _check_shapes(schema, where)
    definitions = {key: schema[key] for key in _DEFINITIONS if key in schema}
    if strict and "$ref" in schema and set(schema) - _ANNOTATIONS - set(_DEFINITIONS) - {"$ref"}:
        raise ConstraintError(f"{where} has keywords beside its $ref")
    schema, seen = resolve_ref(schema, schema, seen)
    if schema.get("$ref") in seen:  # a cycle: only JSON can hold what contains itself
        return f'{json_value(schema, strict)} "</parameter>"', []
    choices = [schema[key] for key in ("anyOf", "oneOf") if key in schema]
    if "type" not in schema and len(choices) == 1 and _are_schemas(choices[0]):
        # Each alternative on its own: a string one is raw text, the others JSON (as
        # pydantic's Optional[str] is {"anyOf": [{"type": "string"}, {"type": "null"}]}).
        beside = set(schema) - _ANNOTATIONS - set(_DEFINITIONS) - {"anyOf", "oneOf"}
        _check_keywords({key: schema[key] for key in beside}, set(), where, strict)
        if strict and "oneOf" in schema and not _disjoint(choices[0], schema):
            raise ConstraintError(f"{where} uses oneOf with alternatives of the same type")
        values, extra = [], []
        for index, choice in enumerate(choices[0]):
            choice_rule, choice_schema = f"{rule}_{index}", {**choice, **definitions}
            value, rules = _value(choice_rule, choice_schema, strict, where, seen)
            values.append(value)
            extra += rules
        return f"({' | '.join(values)})", extra
    types = schema_types(schema, schema, seen)
    if not types or types == {"string"}:
        return _raw_string(rule, schema, strict, where)
    if "string" not in types:
        return f'{json_value(schema, strict)} "</parameter>"', []
    others = {**schema, "type": sorted(types - {"string"})}
    string, extra = _raw_string(rule, {**schema, "type": "string"}, strict, where)
    return f'({json_value(others, strict)} "</parameter>" | {string})', extra


def _disjoint(choices: list[dict[str, Any]], root: dict[str, Any]) -> bool:
    """Whether no two alternatives allow a value of the same JSON type (so that the
    grammar's "any of them" is oneOf's "exactly one")."""
    types = [schema_types(choice, root) for choice in choices]
    if not all(types):
        return False  # an alternative with no type allows every value
    types = [t | {"integer"} if "number" in t else t for t in types]  # integers are numbers
    return all(types[i].isdisjoint(types[j]) for i in range(len(types)) for j in range(i))


def _are_schemas(choices: Any) -> bool:
    return isinstance(choices, list) and bool(choices) and all(isinstance(c, dict) for c in choices)


def _raw_string(
    rule: str, schema: dict[str, Any], strict: bool, where: str
) -> tuple[str, list[str]]:
    """Raw text up to the first ``</parameter>``, held to the string keywords."""
    _check_keywords(schema, _STRING_KEYWORDS | set(_DEFINITIONS), where, strict)
    values = [*schema.get("enum", ()), *([schema["const"]] if "const" in schema else [])]
    if values:
        choices = " | ".join(literal(v) for v in values if isinstance(v, str))
        return f'({choices}) "</parameter>"', []
    token = f"{rule.upper()}_TEXT"
    return f"{rule}_text", [
        f'{rule}_text[lazy]: {token} "</parameter>"',
        f"{token}: {_string_regex(schema)}",
    ]


def _string_regex(schema: dict[str, Any]) -> str:
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    length = f"/(?s:.{{{low},{'' if high is None else high}}})/"
    pattern = schema.get("pattern")
    if not isinstance(pattern, str):
        return length
    # JSON Schema patterns search the text (\\d means ASCII digits); a lexeme matches it whole.
    head = pattern[1:] if pattern.startswith("^") else "(?s:.*)" + pattern
    body = head[:-1] if head.endswith("$") and not head.endswith("\\$") else head + "(?s:.*)"
    regex = "/" + regex_to_lark(body, "dw") + "/"
    return regex if "minLength" not in schema and high is None else f"{regex} & {length}"


# The JSON-Schema keywords this grammar reads, and the shape each must have.
_SHAPES: dict[str, tuple[type, str]] = {
    "properties": (dict, "an object of schemas"),
    "required": (list, "a list of names"),
    "enum": (list, "a list of values"),
    "anyOf": (list, "a list of schemas"),
    "oneOf": (list, "a list of schemas"),
    "allOf": (list, "a list of schemas"),
    "$defs": (dict, "an object of schemas"),
    "definitions": (dict, "an object of schemas"),
    "pattern": (str, "a regular expression"),
}


def _check_shapes(schema: dict[str, Any], where: str) -> None:
    """A ConstraintError (a 400) for a keyword that is not what JSON Schema says it is:
    the grammar could not read it, and guessing would enforce something else."""
    for key, (shape, what) in _SHAPES.items():
        if key in schema and not isinstance(schema[key], shape):
            raise ConstraintError(f'{where}: "{key}" must be {what}, got {schema[key]!r:.60}')
    names = schema.get("required", [])
    if not all(isinstance(name, str) for name in names):
        raise ConstraintError(f'{where}: "required" must be a list of names')
    for key in ("anyOf", "oneOf", "allOf"):
        if not all(isinstance(choice, dict | bool) for choice in schema.get(key, [])):
            raise ConstraintError(f'{where}: "{key}" must be a list of schemas')
    for key in ("properties", "$defs", "definitions"):
        if not all(isinstance(value, dict | bool) for value in schema.get(key, {}).values()):
            raise ConstraintError(f'{where}: "{key}" must be an object of schemas')


def _check_keywords(schema: dict[str, Any], known: set[str], where: str, strict: bool) -> None:
    unknown = sorted(set(schema) - known)
    if strict and unknown:
        raise ConstraintError(
            f"{where} uses {', '.join(unknown)}, which constrained decoding cannot enforce"
        )
