"""How long to wait before another attempt, and whether to make one at all (which faults are transient:
`cpo.net.faults`).

cpo owns retries (the openai SDK's are off) so that every attempt is visible to callbacks, bounded
by the wall clock, counted, and budgeted. Only transient failures are retried: timeouts, connection
errors, 408, 409, 429 and 5xx. A `retry-after` longer than the wait cap ends the call instead of
retrying early; nothing waits past the enclosing deadline.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from cpo.net.faults import is_transient, retry_after_s

INITIAL_BACKOFF_S = 0.5
MAX_BACKOFF_S = 8.0


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

    def decide(
        self, exc: BaseException, retries_taken: int, time_left_s: float | None = None, *, elsewhere: bool = False
    ) -> RetryDecision:
        """`elsewhere`: another deployment of a pool can take the retry now, so the failing one's `retry-after`
        and the backoff are not this call's to wait (`cpo.llm.pool`)."""
        if not is_transient(exc):
            return RetryDecision(False)
        if retries_taken >= self.max_retries:
            return RetryDecision(False, reason=f"gave up after {retries_taken + 1} attempts")
        if elsewhere:
            return RetryDecision(True, 0.0)
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
