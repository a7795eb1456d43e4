"""Validate a front door's request body into its pydantic model, errors named by field."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

from shared.errors import InvalidInput
from shared.validation import validate

M = TypeVar("M", bound=BaseModel)


def parse_model(cls: type[M], body: Any) -> M:
    """Validate body as cls.

    :raises InvalidInput: naming the first bad field ("Unrecognized request argument" for
        fields the model does not know, as OpenAI words it).
    """
    return validate(cls, body)


def unsupported(param: str, message: str) -> InvalidInput:
    """Return the error for a known parameter conveyor does not support (or not that value)."""
    return InvalidInput(f"{param}: {message}", param=param, code="unsupported_parameter")
