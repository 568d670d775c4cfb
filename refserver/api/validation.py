"""Apply a request model to a JSON body; its first error becomes a 400 naming the field."""

from __future__ import annotations

import re
from typing import Any, TypeVar

from pydantic import ValidationError

from refserver.api.errors import ApiError, invalid_request
from refserver.api.shared.schemas import StrictModel

# pydantic's "a valid dictionary or instance of Message": clients send JSON, not instances.
_INSTANCE_OF = re.compile(r" or instance of \w+")

RequestModel = TypeVar("RequestModel", bound=StrictModel)


def parse_request(model: type[RequestModel], body: dict[str, Any]) -> RequestModel:
    """Validate a JSON object as `model`, or raise a 400 naming the offending field."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _as_api_error(exc) from None
    except RecursionError:
        raise invalid_request("the request is nested too deeply") from None


def _as_api_error(exc: ValidationError) -> ApiError:
    # In a union every member reports: the deepest location is the most specific, and a
    # wrong value says more than a wrong type (prompt=[-1] is a bad token id, not a bad str).
    error = max(
        exc.errors(include_url=False),
        key=lambda e: (len(e["loc"]), not e["type"].endswith("_type")),
    )
    param = _param_name(error["loc"])
    message = _INSTANCE_OF.sub("", str(error["msg"]).removeprefix("Value error, "))
    if error["type"] == "missing":
        return invalid_request(f"missing required field {param}", param, code="missing_field")
    where = f"invalid value for {param}" if param else "invalid request"
    return invalid_request(f"{where}: {message}", param)


def _param_name(loc: tuple[int | str, ...]) -> str | None:
    """("messages", 0, "content", "list[TextPart]", 1) -> "messages[0].content[1]"."""
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        elif part.isidentifier() and not part[0].isupper() and part not in _TYPE_TAGS:
            name += f".{part}" if name else part
    return name or None


# Names pydantic puts in an error location for a union member, not a field.
_TYPE_TAGS = frozenset(("str", "int", "float", "bool", "dict", "list", "none"))
