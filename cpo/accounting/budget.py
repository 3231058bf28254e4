"""A hard USD cap shared by concurrent calls: reserve each call's worst case before it is sent, settle after.

A call whose reservation does not fit beside the calls in flight waits for them to settle; it is
refused only when the settled spend plus its own reservation would pass the cap, so no call that
would fit is dropped. Calls of unknown cost (timed out, cancelled) keep their reservation as spent.
Whenever the provider bills no more than the reservation, the spend never exceeds the cap.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Literal
from uuid import UUID

from cpo.core.deadlines import deadline_error, time_left
from cpo.core.errors import BudgetExceeded, UnpricedBudget

Decision = Literal["reserve", "wait"]
Reservation = Callable[[], Decimal | None]


class Budget:
    """Thread-safe; waits block a thread (`reserve`) or suspend a coroutine (`areserve`).

    A reservation of None is a probe: the price of the model is not known until it answers, so the
    call runs alone and every other call waits for it. Reservations are given as functions, evaluated
    again each time a waiting call wakes, so calls that waited behind a probe are priced once it answered.
    """

    def __init__(self, max_usd: Decimal) -> None:
        if max_usd < 0:
            raise ValueError("max_usd must be >= 0")
        self.max_usd = max_usd
        self.settled = Decimal(0)
        self.refused = 0
        self._held: dict[UUID, Decimal | None] = {}
        self._broken: UnpricedBudget | None = None
        self._cond = threading.Condition()
        self._async_waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()

    def _decide(self, amount: Decimal | None) -> Decision:
        """Under the lock: reserve now, wait for calls in flight, or raise (refused / unenforceable)."""
        if self._broken is not None:
            raise self._broken
        if amount is None:
            return "reserve" if not self._held else "wait"
        if self.settled + amount > self.max_usd:
            self.refused += 1
            raise BudgetExceeded(self.settled, self.max_usd, amount)
        if any(v is None for v in self._held.values()):
            return "wait"
        in_flight = sum((v for v in self._held.values() if v is not None), Decimal(0))
        return "reserve" if self.settled + in_flight + amount <= self.max_usd else "wait"

    def reserve(self, run_id: UUID, worst_case: Reservation, *, wait: bool = True) -> None:
        """Hold a call's worst case before it is sent, blocking while calls in flight might make room."""
        with self._cond:
            while self._decide(amount := worst_case()) == "wait":
                if not wait:
                    self.refused += 1
                    raise BudgetExceeded(self.settled, self.max_usd, amount)
                left = time_left()
                if left is not None and left <= 0:
                    raise deadline_error("while waiting for budget room")
                self._cond.wait(timeout=None if left is None else left)
            self._held[run_id] = amount

    async def areserve(self, run_id: UUID, worst_case: Reservation) -> None:
        """`reserve` for coroutines: waits without blocking the event loop."""
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._decide(amount := worst_case()) == "reserve":
                    self._held[run_id] = amount
                    return
                future: asyncio.Future[None] = loop.create_future()
                waiter = (loop, future)
                self._async_waiters.add(waiter)
            try:
                left = time_left()
                if left is not None and left <= 0:
                    raise deadline_error("while waiting for budget room")
                await asyncio.wait_for(future, timeout=left)
            except TimeoutError:
                raise deadline_error("while waiting for budget room") from None
            finally:
                with self._cond:
                    self._async_waiters.discard(waiter)

    def settle(self, run_id: UUID, cost: Decimal | None, *, unknown: bool = False) -> None:
        """The call ended: count what it cost, or keep its reservation as spent when the cost is unknown."""
        with self._cond:
            held = self._held.pop(run_id, None)
            if unknown:
                self.settled += held or Decimal(0)
            elif cost is not None:
                self.settled += cost
            self._wake()

    def release(self, run_id: UUID) -> None:
        """The call was never sent: give its reservation back."""
        with self._cond:
            self._held.pop(run_id, None)
            self._wake()

    def break_with(self, error: UnpricedBudget) -> None:
        """The cap cannot be enforced (no price for the model that answered): refuse every later call."""
        with self._cond:
            self._broken = error
            self._wake()

    def _wake(self) -> None:
        self._cond.notify_all()
        for loop, future in list(self._async_waiters):
            loop.call_soon_threadsafe(_set_done, future)

    def snapshot(self) -> dict[str, str | int]:
        """JSON-safe state: cap, spend settled or held for unknown-cost calls, calls in flight, refusals."""
        with self._cond:
            return {
                "max_usd": str(self.max_usd),
                "settled_usd": str(self.settled),
                "in_flight": len(self._held),
                "refused_calls": self.refused,
            }


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
