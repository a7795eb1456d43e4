"""The base of answers that leave some keys out unless they were set."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, model_serializer


class Reply(BaseModel):
    """An answer body; the keys in OPTIONAL are sent only when set (the servers we speak for
    leave them out rather than send null)."""

    OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _leave_out_unset(self, handler):
        data = handler(self)
        for name in self.OPTIONAL - self.model_fields_set:
            data.pop(name, None)
        return data

    def wire(self) -> dict[str, Any]:
        """Return the JSON body."""
        return self.model_dump(mode="json")
