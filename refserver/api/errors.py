"""OpenAI error objects: every failure reaches the client as one of these."""

from __future__ import annotations

from typing import Any

# Error "type" by HTTP status, as OpenAI-compatible clients expect them.
_TYPE_BY_STATUS = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
}
# And as Anthropic clients expect them (its "overloaded_error" is 529; ours is a 503).
_ANTHROPIC_TYPE_BY_STATUS = {
    **_TYPE_BY_STATUS,
    404: "not_found_error",
    413: "request_too_large",
    503: "overloaded_error",
    529: "overloaded_error",
}


class ApiError(Exception):
    """A failure with its HTTP status and the fields of the OpenAI error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        anthropic_message: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}
        # Anthropic's own wording, where clients match it (Claude Code reads the numbers
        # of a context overflow to retry with a smaller max_tokens).
        self.anthropic_message = anthropic_message

    def body(self) -> dict[str, Any]:
        """The JSON body: {"error": {"message", "type", "param", "code"}}."""
        return error_body(self.status, self.message, param=self.param, code=self.code)

    def anthropic_body(self) -> dict[str, Any]:
        """The JSON body on Anthropic routes: {"type": "error", "error": {...}}."""
        return anthropic_error_body(self.status, self.anthropic_message or self.message)


def error_type(status: int) -> str:
    """The OpenAI error type for an HTTP status."""
    if status in _TYPE_BY_STATUS:
        return _TYPE_BY_STATUS[status]
    return "server_error" if status >= 500 else "invalid_request_error"


def error_body(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """An OpenAI error object."""
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    """An Anthropic error object."""
    if status in _ANTHROPIC_TYPE_BY_STATUS:
        kind = _ANTHROPIC_TYPE_BY_STATUS[status]
    else:
        kind = "api_error" if status >= 500 else "invalid_request_error"
    return {"type": "error", "error": {"type": kind, "message": message}}


def invalid_request(
    message: str, param: str | None = None, code: str = "invalid_value"
) -> ApiError:
    """A 400 for a request the client must change."""
    return ApiError(400, message, param=param, code=code)
