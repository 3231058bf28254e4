"""Which failures are worth another attempt, and how long to wait before it.

cpo owns retries (the openai SDK's are off) so that every attempt is visible to callbacks, bounded
by the wall clock, counted, and budgeted. Only transient failures are retried: timeouts, connection
errors, 408, 409, 429 and 5xx. A `retry-after` longer than the wait cap ends the call instead of
retrying early; nothing waits past the enclosing deadline.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

import httpx2
import openai

INITIAL_BACKOFF_S = 0.5
MAX_BACKOFF_S = 8.0
UNSUPPORTED_FORMAT_HINTS = ("response_format", "response format", "json_schema", "tool_choice", "tools", "function")


def is_transient(exc: BaseException) -> bool:
    """Worth another attempt: timeouts, connection errors, 408, 409, 429 and 5xx. Never 4xx or our own errors,
    and never a 500 that refuses the structured-output format (llama.cpp's answer to json_schema): asking
    again gets the same refusal, so the chain switches method at once instead."""
    if isinstance(exc, openai.APITimeoutError | openai.APIConnectionError):
        return True
    if not isinstance(exc, openai.APIStatusError):
        return False
    return exc.status_code in (408, 409, 429) or (exc.status_code >= 500 and not is_format_refusal(exc))


def may_have_been_billed(exc: BaseException) -> bool:
    """True when the request may have reached the model but no answer (and no usage) came back.

    A timeout or a connection dropped after sending leaves the cost unknown; a refused connection
    or an HTTP error status does not bill.
    """
    if not isinstance(exc, openai.APIConnectionError):  # APITimeoutError is one too
        return False
    never_sent = httpx2.ConnectError | httpx2.ConnectTimeout | httpx2.PoolTimeout | httpx2.WriteTimeout
    return not isinstance(exc.__cause__, never_sent)


def is_content_filter(exc: BaseException) -> bool:
    """Azure's 400 `content_filter`: the prompt was filtered; not a refusal of the request's format."""
    return isinstance(exc, openai.BadRequestError) and (
        getattr(exc, "code", None) == "content_filter" or "content_filter" in str(getattr(exc, "body", "") or "")
    )


def refuses_format(exc: BaseException) -> bool:
    """The server refused the structured-output method itself (not a fault, not a content filter).

    A 400 or 422 that is not a content filter, or a 500 whose body names the response format or tools
    (llama.cpp's server answers `json_schema` with HTTP 500 "response_format type must be one of ...").
    """
    if isinstance(exc, openai.BadRequestError | openai.UnprocessableEntityError):
        return not is_content_filter(exc)
    if isinstance(exc, openai.InternalServerError) and exc.status_code == 500:
        text = f"{getattr(exc, 'message', '')} {getattr(exc, 'body', '')}".lower()
        return any(hint in text for hint in UNSUPPORTED_FORMAT_HINTS)
    return False


def is_format_refusal(exc: BaseException) -> bool:
    """A refusal that names the structured-output format: the server declined the method, billed nothing.

    Stricter than `refuses_format` (which decides whether to try the next method): the cost tracker
    counts only these apart from failed calls, so a 400 for any other reason stays a failed call.
    """
    if not refuses_format(exc):
        return False
    text = f"{getattr(exc, 'message', '')} {getattr(exc, 'body', '')}".lower()
    return any(hint in text for hint in UNSUPPORTED_FORMAT_HINTS)


def retry_after_s(exc: BaseException) -> float | None:
    """The server's `retry-after-ms` / `retry-after` (seconds or an HTTP date), if it sent one."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / scale)
        except ValueError:
            parsed = email.utils.parsedate_tz(value)
            if parsed is not None:
                return max(0.0, email.utils.mktime_tz(parsed) - time.time())
    return None


@dataclass(frozen=True)
class RetryDecision:
    """Retry after `wait_s`, or give up with `reason` (None when the failure was simply not transient)."""

    retry: bool
    wait_s: float = 0.0
    reason: str | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """`max_retries` extra attempts for transient failures, waits capped at `max_wait_s`."""

    max_retries: int = 3
    max_wait_s: float = 30.0

    def decide(self, exc: BaseException, retries_taken: int, time_left_s: float | None = None) -> RetryDecision:
        if not is_transient(exc):
            return RetryDecision(False)
        if retries_taken >= self.max_retries:
            return RetryDecision(False, reason=f"gave up after {retries_taken + 1} attempts")
        hinted = retry_after_s(exc)
        if hinted is not None and hinted > self.max_wait_s:
            cap = f"CPO_RETRY_MAX_WAIT={self.max_wait_s:g} s"
            return RetryDecision(False, reason=f"the server asked to retry after {hinted:g} s, more than {cap}")
        wait = hinted if hinted is not None else self.backoff_s(retries_taken)
        if time_left_s is not None and wait >= time_left_s:
            return RetryDecision(False, reason=f"no time left before the deadline for a retry in {wait:.1f} s")
        return RetryDecision(True, wait)

    def backoff_s(self, retries_taken: int) -> float:
        """0.5 s, 1 s, 2 s ... (at most 8 s and the cap), minus up to 25% jitter."""
        base: float = min(INITIAL_BACKOFF_S * 2.0 ** min(retries_taken, 30), MAX_BACKOFF_S, self.max_wait_s)
        return base * (1 - 0.25 * random.random())
