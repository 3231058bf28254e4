"""What an endpoint's failure means: transient or not, maybe billed or not, a refusal of the output format,
how long the server asked to wait, and the failure in one line for people.

cpo owns retries (the openai SDK's are off); `cpo.net.retries` decides on these facts.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

import httpx2
import openai

from cpo.core.errors import first_line
from cpo.net.pacing import QuotaWaitTooLong

UNSUPPORTED_FORMAT_HINTS = ("response_format", "response format", "json_schema", "tool_choice", "tools", "function")


class TryElsewhere(Exception):
    """One deployment of several refused the request for its own reasons (its key, a network rule, a missing
    deployment): another deployment can answer it. Raised from the refusal, which stays its cause."""


def is_transient(exc: BaseException) -> bool:
    """Worth another attempt: timeouts, connection errors, 408, 409, 429 and 5xx. Never 4xx or our own errors,
    and never a 500 that refuses the structured-output format (llama.cpp's answer to json_schema): asking
    again gets the same refusal, so the chain switches method at once instead."""
    if isinstance(exc, TryElsewhere):
        return True
    if any(isinstance(cause, QuotaWaitTooLong) for cause in causes(exc)):
        return False  # the quota allows it only after the deadline: another attempt would be refused too
    if isinstance(exc, openai.APITimeoutError | openai.APIConnectionError):
        return True
    if not isinstance(exc, openai.APIStatusError):
        return False
    return exc.status_code in (408, 409, 429) or (exc.status_code >= 500 and not is_format_refusal(exc))


# Transport errors raised before a single byte of the request left: no connection was made (refused, DNS
# failure, connect or TLS timeout) or none was free. A write timeout or a reset is not one: part of it left.
NEVER_SENT = (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout)


def causes(exc: BaseException) -> list[BaseException]:
    """`exc` and the errors it was raised from (`raise ... from`), outermost first.

    langchain-openai re-raises the openai SDK's error, which was raised from httpx2's: the transport
    error that says what happened is two causes down.
    """
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__
    return chain


def never_sent(exc: BaseException) -> bool:
    """The request provably never left this machine, so nothing can have been billed."""
    return any(isinstance(cause, NEVER_SENT) for cause in causes(exc))


def may_have_been_billed(exc: BaseException) -> bool:
    """True when the request may have reached the model but no answer (and no usage) came back.

    A timeout or a connection dropped after sending leaves the cost unknown; a refused connection
    (any error raised from one of `NEVER_SENT`) or an HTTP error status does not bill.
    """
    if not isinstance(exc, openai.APIConnectionError):  # APITimeoutError is one too
        return False
    return not never_sent(exc)


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
    return None if headers is None else retry_after_from(headers)


def retry_after_from(headers: Any) -> float | None:
    """`retry-after-ms` / `retry-after` (seconds or an HTTP date) from a response's headers, in seconds."""
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


def one_line(exc: BaseException) -> str:
    """An error as one line; connection errors name the host they tried, a wait for quota says so."""
    quota = next((c for c in causes(exc) if isinstance(c, QuotaWaitTooLong)), None)
    if quota is not None:  # the SDK calls it "Request timed out.", but no request was sent
        return first_line(quota)
    text = first_line(exc)
    if isinstance(exc, openai.APIConnectionError) and not isinstance(exc, openai.APITimeoutError):
        url = getattr(getattr(exc, "request", None), "url", None)
        where = f"{url.scheme}://{url.host}:{url.port}" if url is not None and url.port else str(url or "")
        said = [cause for cause in causes(exc)[1:] if str(cause).strip()]  # the innermost says most
        reason = first_line(said[-1]) if said else text
        return f"cannot reach {where}: {reason}"
    notes = "; ".join(getattr(exc, "__notes__", []) or [])
    shown = f"{type(exc).__name__}: {text}" if isinstance(exc, openai.OpenAIError) else text
    return f"{shown} ({notes})" if notes else shown


def brief(exc: BaseException, limit: int = 120) -> str:
    """'APITimeoutError: Request timed out.': the error's type and its first line, for log lines."""
    return f"{type(exc).__name__}: {first_line(exc, limit)}" if str(exc).strip() else type(exc).__name__
