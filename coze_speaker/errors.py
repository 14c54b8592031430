"""One base class for every error a user can see, and one place that turns an error into
the fields of a `failed` event.

Like httpx's hierarchy: catch :class:`SpeakerError` for anything this package raises on
purpose; each carries the message, a short machine code, the field at fault and Coze's logid
when there is one.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Union


class SpeakerError(Exception):
    """An error with what a user needs: message, code (str or Coze's int), field, logid."""

    code: Union[int, str, None] = None
    field: Optional[str] = None
    logid: Optional[str] = None

    def event_fields(self) -> Dict[str, Any]:
        """The error as the `error` object of an event."""
        fields: Dict[str, Any] = {"message": str(self), "code": self.code}
        if self.field is not None:
            fields["field"] = self.field
        if self.logid is not None:
            fields["logid"] = self.logid
        return fields


def error_fields(exc: BaseException) -> Dict[str, Any]:
    """Event fields for any exception: ours say what they are; anything else is `internal`."""
    if isinstance(exc, SpeakerError):
        return exc.event_fields()
    return {"message": "internal error", "code": "internal"}
