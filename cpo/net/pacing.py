"""Quota-aware pacing: requests and tokens per minute, budgeted before a request is sent.

An Azure deployment enforces requests per minute and tokens per minute (a request's tokens counted as its
prompt plus its `max_tokens`, when it arrives). Firing requests and
retrying the 429s wastes the retries and ends in failed emails; LangChain's `InMemoryRateLimiter` counts
requests only. `QuotaPacer` keeps two buckets, one of requests and one of tokens: a twentieth of the quota
may go at once and the rest refills evenly, so that no window ever holds more than 95% of it. Each request
reserves its place in both before it is sent, so concurrent callers are spaced evenly instead of
stampeding; what the server says corrects the estimate: `x-ratelimit-remaining-requests` / `-tokens` lower
the buckets when the server has counted more than cpo did, and a 429's `retry-after-ms` holds every caller
until then and lowers the quota believed to what the server answered in the last window (a quota set higher
than the deployment's is learnt down at the first 429; five windows later it recovers, with a time constant
of ten). The waits themselves
are the caller's (a blocking sleep or an awaited one): the plan here never waits.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx2

BURST_SHARE = 1 / 20  # a window's share sent at once; the rest evenly, so no window holds more than SAFETY
SAFETY = 0.95  # of the quota: arrival times jitter, and a request that lands early is refused
SLOWER, FLOOR = 0.8, 0.1  # a 429 with no answer in the window: a fifth less; never under a tenth of the quota
COOLDOWN_WINDOWS = 5.0  # after a 429 the quota believed stays put for 5 windows, then returns to the
RECOVERY_WINDOWS = 10.0  # configured one with a time constant of 10 more (on a log scale),
TYPICAL_REQUEST_TOKENS = 1000.0  # a request's size before any was seen (only the ratio between deployments matters)
HEADROOM = 0.5  # while the server's remaining count says at least half the quota believed is unused
Listener = Callable[[bool], None]
_listeners: list[Listener] = []
log = logging.getLogger(__name__)


class QuotaWaitTooLong(httpx2.PoolTimeout):
    """Waiting for quota would pass the work's deadline, or the request is larger than the whole token quota:
    it is not sent (so never billed), and asking again cannot help (`cpo.net.faults.is_transient` says so)."""


def listen(listener: Listener) -> Callable[[], None]:
    """Call `listener(True)` when any request starts waiting for quota, `(False)` when none waits; returns
    the function that stops listening. The progress line of `cpo run` says "waiting for quota" with it."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener) if listener in _listeners else None


@dataclass
class _Bucket:
    """One quota (requests or tokens per window), paced: units refill at `rate` a second up to `capacity`, and
    `level` may go below 0 (places reserved ahead). `quota` is what the deployment is believed to allow per
    window: the configured figure, lowered by 429s and recovering from them; `answered` are the units of the
    requests answered in the last window, the evidence of what it does allow."""

    configured: float
    window_s: float
    quota: float = 0.0
    rate: float = 0.0
    capacity: float = 0.0
    level: float = 0.0
    at: float = 0.0
    answered: deque[tuple[float, float]] = field(default_factory=deque)
    remaining: float | None = None  # the server's last x-ratelimit-remaining-* for this quota
    recovered_at: float = 0.0  # when the quota believed last moved toward the configured one (or a 429)

    def believe(self, quota: float, now: float) -> None:
        """Pace to `quota` per window: a burst of BURST_SHARE of it, then evenly, so that no window of the
        deployment's ever holds more than SAFETY of it (burst + rate x window <= SAFETY x quota)."""
        self.refill(now)
        self.quota = max(FLOOR * self.configured, min(self.configured, quota))
        self.capacity = max(1.0, BURST_SHARE * self.quota)
        self.rate = max(SAFETY * self.quota - self.capacity, FLOOR * self.configured) / self.window_s
        self.level = min(self.level, self.capacity)

    def refill(self, now: float) -> None:
        if now <= self.at:  # held by a 429 until `at`: nothing refills before then
            return
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now

    def take(self, amount: float, now: float) -> float:
        """Reserve `amount`; seconds until the reservation is covered (a request larger than the bucket
        waits for all of it; during a hold, the spacing starts when the hold ends)."""
        self.level -= amount
        return max(0.0, self.at - now) + max(0.0, -self.level / self.rate)

    def admitted(self, sent_at: float) -> float:
        """Units of the answered requests sent in the window before `sent_at`: what the server let through
        when it refused the request sent then (sending times are close to its arrival times; answer times
        are not)."""
        return sum(units for at, units in self.answered if sent_at - self.window_s < at <= sent_at)

    def prune(self, now: float) -> None:
        while self.answered and self.answered[0][0] <= now - 2 * self.window_s:
            self.answered.popleft()


class QuotaPacer:
    """One deployment's quota, shared by every request to it (sync or async, any thread)."""

    def __init__(
        self,
        rpm: int | None = None,
        tpm: int | None = None,
        *,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not rpm and not tpm:
            raise ValueError("a quota needs requests or tokens per window")
        self.rpm, self.tpm, self.window_s, self._clock = rpm, tpm, window_s, clock
        now = clock()
        self._requests = self._bucket(rpm, now)
        self._tokens = self._bucket(tpm, now)
        self._not_before = now
        self._last_429 = now - COOLDOWN_WINDOWS * window_s
        self._lock = threading.Lock()
        self.waiting = 0
        self.waited_s = 0.0
        self.held = 0  # 429s that held every caller
        self.typical_tokens = 0.0  # a running mean of the requests' tokens, for `requests_per_s`

    def _bucket(self, per_window: int | None, now: float) -> _Bucket | None:
        if not per_window:
            return None
        bucket = _Bucket(configured=float(per_window), window_s=self.window_s, at=now)
        bucket.believe(float(per_window), now)
        bucket.level = bucket.capacity
        return bucket

    def _pairs(self, tokens: float) -> list[tuple[_Bucket, float]]:
        return [(b, amount) for b, amount in ((self._requests, 1.0), (self._tokens, tokens)) if b is not None]

    def now(self) -> float:
        """The pacer's clock (monotonic): when a request is sent, for `answered` and `hold`."""
        return self._clock()

    def plan(self, tokens: int, deadline: float | None = None) -> float:
        """Reserve a request of `tokens` (prompt + max_tokens) and return the seconds to wait before sending
        it; raise `QuotaWaitTooLong` (reserving nothing) if that wait would pass `deadline` (monotonic)."""
        if self._tokens is not None and tokens > SAFETY * self._tokens.configured:
            raise QuotaWaitTooLong(
                f"this request needs {tokens:,} tokens (prompt + max_tokens), more than the token quota allows in a "
                f"window (CPO_TPM={self._tokens.configured:,.0f}): it is not sent"
            )
        with self._lock:
            now = self._clock()
            self.typical_tokens = tokens if not self.typical_tokens else 0.9 * self.typical_tokens + 0.1 * tokens
            taken = []
            wait = max(0.0, self._not_before - now)
            for bucket, amount in self._pairs(float(tokens)):
                bucket.refill(now)
                wait = max(wait, bucket.take(amount, now))
                taken.append((bucket, amount))
            if deadline is not None and now + wait > deadline:
                for bucket, amount in taken:
                    bucket.level += amount
                raise QuotaWaitTooLong(
                    f"waiting for the quota (CPO_RPM/CPO_TPM) would take {wait:.1f} s, past the deadline: not sent"
                )
            return wait

    def release(self, tokens: int) -> None:
        """Give back a reservation that will not be used (its caller was cancelled while it waited)."""
        with self._lock:
            for bucket, amount in self._pairs(float(tokens)):
                bucket.level = min(bucket.capacity, bucket.level + amount)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Take the server's count: remaining requests and tokens lower what cpo thinks is left."""
        with self._lock:
            now = self._clock()
            for bucket, name in ((self._requests, "requests"), (self._tokens, "tokens")):
                value = headers.get(f"x-ratelimit-remaining-{name}")
                if bucket is None or value is None:
                    continue
                try:
                    remaining = float(value)
                except ValueError:
                    continue
                if not math.isfinite(remaining):
                    continue
                remaining = max(0.0, remaining)
                bucket.refill(now)
                bucket.level = min(bucket.level, remaining)
                bucket.remaining = remaining

    def hold(self, seconds: float, sent_at: float | None = None) -> None:
        """A 429 said when to come back: no request to this deployment before then, and the quota believed is
        lowered to what the server answered of the requests sent in the window before the refused one (a
        fifth less when it answered none)."""
        with self._lock:
            now = self._clock()
            self._not_before = max(self._not_before, now + seconds)
            self._last_429 = now
            self.held += 1
            for bucket in self._buckets():
                admitted = bucket.admitted(now if sent_at is None else sent_at)
                bucket.believe(min(bucket.quota, admitted) if admitted else bucket.quota * SLOWER, now)
                bucket.level = min(bucket.level, 0.0)  # requests queued in the hold are spaced after it
                bucket.at = max(bucket.at, self._not_before)
                bucket.recovered_at = now

    def answered(self, tokens: int = 0, sent_at: float | None = None) -> None:
        """An answer that was not a 429 (for a request of `tokens`): counted as evidence of the quota, and the
        quota believed recovers toward the configured one (after a cooldown since the last 429, on a log scale
        with a time constant of RECOVERY_WINDOWS windows), unless the server's remaining count says the window
        is mostly used."""
        with self._lock:
            now = self._clock()
            cooled = self._last_429 + COOLDOWN_WINDOWS * self.window_s
            for bucket, amount in self._pairs(float(tokens)):
                bucket.prune(now)
                bucket.answered.append((now if sent_at is None else sent_at, amount))
                # Recover only when the server does not say the window is mostly used already; each step
                # covers only the time since this bucket's last one.
                busy = bucket.remaining is not None and bucket.remaining < HEADROOM * bucket.quota
                share = min(1.0, max(0.0, now - max(bucket.recovered_at, cooled)) / (RECOVERY_WINDOWS * self.window_s))
                if share > 0 and bucket.quota < bucket.configured and not busy:
                    bucket.believe(bucket.quota * (bucket.configured / bucket.quota) ** share, now)
                    bucket.recovered_at = now

    def room_in(self, requests: int, tokens: int) -> float | None:
        """Seconds until `requests` requests of `tokens` each could all be sent at once without waiting (nothing
        is reserved); None when the quota never lets that many go at once. For timing a server, not pacing."""
        with self._lock:
            now = self._clock()
            wait = max(0.0, self._not_before - now)
            for bucket, needed in ((self._requests, float(requests)), (self._tokens, float(requests * tokens))):
                if bucket is None:
                    continue
                if needed > bucket.capacity:
                    return None
                bucket.refill(now)
                wait = max(wait, max(0.0, bucket.at - now) + max(0.0, (needed - bucket.level) / bucket.rate))
            return wait

    def held_for(self) -> float:
        """Seconds a 429's hold still keeps every request to this deployment waiting (0 when none does)."""
        with self._lock:
            return max(0.0, self._not_before - self._clock())

    def requests_per_s(self) -> float:
        """The requests a second this quota sustains as now believed, for requests of the usual size: how a
        deployment pool shares work between deployments with different quotas."""
        with self._lock:
            size = self.typical_tokens or TYPICAL_REQUEST_TOKENS
            rates = [
                bucket.quota / self.window_s / amount
                for bucket, amount in ((self._requests, 1.0), (self._tokens, size))
                if bucket is not None
            ]
            return min(rates)

    def _buckets(self) -> list[_Bucket]:
        return [b for b in (self._requests, self._tokens) if b is not None]

    @property
    def pace(self) -> float:
        """The share of the configured quota believed now (1.0 at the start; lower after 429s)."""
        return min(b.quota / b.configured for b in self._buckets())

    def _waiting(self, delta: int, waited: float = 0.0) -> None:
        with self._lock:
            before = self.waiting
            self.waiting += delta
            self.waited_s += waited
            now = self.waiting
        if (before == 0) != (now == 0):
            for listener in list(_listeners):
                try:
                    listener(now > 0)
                except Exception:  # a progress line must never fail a request
                    log.exception("a quota listener failed")

    def acquire(self, tokens: int, deadline: float | None = None) -> float:
        """Wait (blocking) until the quota allows the request; the seconds waited."""
        wait = self.plan(tokens, deadline)
        if wait > 0:
            self._waiting(+1)
            try:
                time.sleep(wait)
            except BaseException:  # Ctrl-C while waiting: its place goes to the next request
                self.release(tokens)
                raise
            finally:
                self._waiting(-1, wait)
        return wait

    async def aacquire(self, tokens: int, deadline: float | None = None) -> float:
        """Wait (awaited) until the quota allows the request; the seconds waited."""
        wait = self.plan(tokens, deadline)
        if wait > 0:
            self._waiting(+1)
            try:
                await asyncio.sleep(wait)
            except BaseException:  # cancelled while waiting: its place goes to the next request
                self.release(tokens)
                raise
            finally:
                self._waiting(-1, wait)
        return wait


def request_tokens(body: bytes) -> int:
    """What a quota counts for a chat request before it is answered: its prompt (messages, and the tools or
    schema it sends) plus the most it may answer (`max_tokens` / `max_completion_tokens`)."""
    import json

    from cpo.net.tokens import count_text_tokens, count_tokens

    try:
        request = json.loads(body or b"null")
    except ValueError:
        return 0
    if not isinstance(request, dict):
        return 0
    model = str(request.get("model") or "gpt-4o-mini")
    messages = [m for m in request.get("messages") or [] if isinstance(m, dict)]
    tokens = count_tokens(messages, model) if messages else 0
    extras = [request[k] for k in ("tools", "response_format", "functions") if request.get(k)]
    if extras:
        tokens += count_text_tokens(json.dumps(extras), model)
    answer = request.get("max_completion_tokens") or request.get("max_tokens") or 0
    return tokens + (int(answer) if isinstance(answer, int | float) else 0)
