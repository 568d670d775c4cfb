"""Pieces of llguidance's Lark dialect shared by the reply and tool-call grammars."""

from __future__ import annotations

import json
from typing import Any

# Bounded whitespace between a JSON value's tokens: a budget of tokens is never spent on
# blanks (a random model would write them forever).
JSON_WHITESPACE = r"[ \n\t]{0,12}"


class ConstraintError(ValueError):
    """A schema or tool the grammar cannot enforce; the message says which part."""


def literal(text: str) -> str:
    """`text` as a Lark string literal."""
    return json.dumps(text, ensure_ascii=False)


def json_value(schema: dict[str, Any], strict: bool) -> str:
    """A JSON value valid against `schema`. Not strict: keywords llguidance does not
    implement are ignored; strict: they make the grammar fail to compile (a 400)."""
    options = {"whitespace_pattern": JSON_WHITESPACE, "lenient": not strict}
    return "%json " + json.dumps({**schema, "x-guidance": options}, ensure_ascii=False)
