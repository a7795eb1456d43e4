"""Validate a front door's request body into its pydantic model, errors named by field."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from shared.errors import InvalidInput

M = TypeVar("M", bound=BaseModel)
_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none", "literal"}


def field_path(loc: tuple) -> str:
    """Return a dotted field path, without the type tags pydantic adds inside unions."""
    parts: list[str] = []
    for part in loc:
        if isinstance(part, str) and ("[" in part or part.lower() in _TYPE_TAGS):
            break
        parts.append(str(part))
    return ".".join(parts)


def parse_model(cls: type[M], body: Any) -> M:
    """Validate body as cls.

    :raises InvalidInput: naming the first bad field ("Unrecognized request argument" for
        fields the model does not know, as OpenAI words it).
    """
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object")
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = field_path(err["loc"]) or None
        if err["type"] == "extra_forbidden":
            raise InvalidInput(
                f"Unrecognized request argument supplied: {param}",
                param=param,
                code="unrecognized_argument",
            ) from None
        message = err["msg"].removeprefix("Value error, ")
        raise InvalidInput(f"{param}: {message}" if param else message, param=param) from None


def unsupported(param: str, message: str) -> InvalidInput:
    """Return the error for a known parameter conveyor does not support (or not that value)."""
    return InvalidInput(f"{param}: {message}", param=param, code="unsupported_parameter")
