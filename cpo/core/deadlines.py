"""Deadlines of work in progress: an email (every attempt, repair and wait inside it) must end by its deadline.

A `deadline_scope` sets the deadline for everything that runs inside it in this context (thread or
task); the bounded transports (`cpo.net.transport`), the retry loop and the budget's waits all read it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from cpo.core.errors import DeadlineExceeded

# When the work this context is doing must end (time.monotonic()), e.g. an email's deadline.
_work_deadline: ContextVar[float | None] = ContextVar("cpo_work_deadline", default=None)
# How long that deadline was when it was set, for messages.
_work_limit: ContextVar[float | None] = ContextVar("cpo_work_limit", default=None)


@contextmanager
def deadline_scope(seconds: float) -> Iterator[float]:
    """Everything inside (model calls, retries, waits) must end within `seconds`; nests to the sooner."""
    deadline = time.monotonic() + seconds
    outer = _work_deadline.get()
    if outer is not None and outer <= deadline:
        yield outer
        return
    token, limit = _work_deadline.set(deadline), _work_limit.set(seconds)
    try:
        yield deadline
    finally:
        _work_deadline.reset(token)
        _work_limit.reset(limit)


def work_deadline() -> float | None:
    """The enclosing deadline (time.monotonic()), if any."""
    return _work_deadline.get()


def deadline_error(doing: str) -> DeadlineExceeded:
    """The error for work that ran out of time, naming the deadline in force."""
    return DeadlineExceeded(_work_limit.get(), doing)


def time_left() -> float | None:
    """Seconds left before the enclosing deadline, or None when there is none."""
    deadline = _work_deadline.get()
    return None if deadline is None else deadline - time.monotonic()
