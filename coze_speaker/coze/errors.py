"""The errors of a Coze call: what failed, Coze's code and logid, and whether to try again."""

from __future__ import annotations

from typing import Optional, Union

from ..errors import SpeakerError

#: The message of a request given up at the caller's deadline: not Coze's fault, not retried,
#: and never a sign that Coze is down.
STALE = "the announcement expired before Coze's audio arrived"


class CozeError(SpeakerError):
    """A failed Coze call, carrying everything a user needs to act or to ask support.

    ``code`` is Coze's code when the answer was an error envelope, a word of ours for a local
    verdict (``timeout``, ``rate_limited``), else None; ``retryable`` says whether trying
    again later can succeed; ``retry_after`` is the answer's Retry-After in seconds.
    """

    def __init__(
        self,
        msg: str,
        *,
        status: Optional[int] = None,
        code: Union[int, str, None] = None,
        logid: Optional[str] = None,
        retryable: bool = False,
        retry_after: Optional[float] = None,
    ) -> None:
        self.msg = msg
        self.status = status
        self.code = code
        self.logid = logid
        self.retryable = retryable
        self.retry_after = retry_after
        super().__init__(str(self))

    def __str__(self) -> str:
        if isinstance(self.code, int):
            head = f"Coze error {self.code}: {self.msg}"
        elif self.status is not None:
            head = f"Coze request failed: {self.msg}"
        else:  # nothing was answered: a local refusal or an unreachable server, said plainly
            head = self.msg
        extra = []
        if self.status is not None:
            extra.append(f"HTTP {self.status}")
        if self.logid:
            extra.append(f"logid {self.logid}")
        return f"{head} ({', '.join(extra)})" if extra else head


class CozeValidationError(CozeError, ValueError):
    """A request that Coze would refuse, caught locally so no call is spent on it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.code = "invalid"

    def __str__(self) -> str:
        return self.msg
