"""The one translation of a pydantic ValidationError into InvalidInput, for every front door
and every job input: the same mistake reads the same wherever it is made."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from shared.errors import InvalidInput

M = TypeVar("M", bound=BaseModel)
# The tags pydantic puts in an error's location inside unions ("str", "list[str]"...).
_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none", "literal"}


def field_path(loc: tuple, prefix: str = "") -> str:
    """Return a dotted field path, without the type tags pydantic adds inside unions."""
    parts: list[str] = [prefix] if prefix else []
    for part in loc:
        if isinstance(part, str) and ("[" in part or part.lower() in _TYPE_TAGS):
            break
        parts.append(str(part))
    return ".".join(parts)


def invalid_input(exc: ValidationError, prefix: str = "") -> InvalidInput:
    """Return the InvalidInput naming the first bad field of a failed validation.

    Fields a model does not know read "Unrecognized request argument supplied: <field>"
    (OpenAI's words, code unrecognized_argument); any other mistake "<field>: <why>".
    """
    err = exc.errors()[0]
    param = field_path(err["loc"], prefix) or None
    if err["type"] == "extra_forbidden":
        return InvalidInput(
            f"Unrecognized request argument supplied: {param}",
            param=param,
            code="unrecognized_argument",
        )
    message = err["msg"].removeprefix("Value error, ")
    return InvalidInput(f"{param}: {message}" if param else message, param=param)


def validate(cls: type[M], body: Any, prefix: str = "") -> M:
    """Validate a JSON object as cls.

    :raises InvalidInput: body is not an object, or naming its first bad field.
    """
    if not isinstance(body, dict):
        what = f"{prefix} must be" if prefix else "request body must be"
        raise InvalidInput(f"{what} a JSON object", param=prefix or None)
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        raise invalid_input(exc, prefix) from None
