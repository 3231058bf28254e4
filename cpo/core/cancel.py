"""Stopping work in flight (Ctrl-C) without losing what was already paid for.

A runner sets a `StopSignal` for the tasks it starts; the email chain sends each model call through
`StopSignal.run`, as a child task. `stop()` cancels those calls only: the email's own task sees the
cancelled call, keeps any draft it already paid for (marked invalid, "interrupted") and returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")

current_stop: ContextVar[StopSignal | None] = ContextVar("cpo_stop_signal", default=None)


class StopSignal:
    """Set once by the runner; cancels the model calls registered through `run`."""

    def __init__(self) -> None:
        self.requested = False
        self._calls: set[asyncio.Task[Any]] = set()

    def stop(self) -> int:
        """Refuse new calls and cancel those in flight; returns how many were cancelled."""
        self.requested = True
        calls = [task for task in self._calls if not task.done()]
        for task in calls:
            task.cancel()
        return len(calls)

    async def run(self, call: Coroutine[Any, Any, T]) -> T:
        """Await `call` as a child task that `stop()` can cancel without cancelling the caller."""
        if self.requested:
            call.close()
            raise asyncio.CancelledError("stop requested")
        task = asyncio.ensure_future(call)
        self._calls.add(task)
        try:
            return await task
        finally:
            self._calls.discard(task)

    def stopped_this(self) -> bool:
        """In an `except CancelledError`: was it this signal, not a cancellation of the caller itself?"""
        current = asyncio.current_task()
        return self.requested and (current is None or current.cancelling() == 0)
