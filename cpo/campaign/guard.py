"""What stops a campaign's emails from being sent to the model: the budget, refused credentials, Ctrl-C.

The first reason to stop is the one reported; from then on no new email starts, while calls in flight
finish (budget) or are cancelled after a grace period (Ctrl-C, through the `StopSignal`). Any other
error fails only the email it happened in, so one bad answer never costs the rest of the campaign.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import openai

from cpo.core.cancel import StopSignal
from cpo.core.errors import BudgetExceeded, ConfigError, Interrupted
from cpo.net.faults import one_line

StopReason = Literal["budget", "auth", "config", "interrupted", "review"]
Outcome = Literal["failed", "skipped"]


class Guard:
    """Shared by every email task of one run: a bound on emails in flight and the reason to stop, if any."""

    def __init__(self, concurrency: int = 4) -> None:
        self.concurrency = concurrency
        self.stopped_by: StopReason | None = None
        self.stop_message: str | None = None
        self.signal = StopSignal()
        self._slots: asyncio.Semaphore | None = None

    @property
    def dispatching(self) -> bool:
        return self.stopped_by is None

    @property
    def slots(self) -> asyncio.Semaphore:
        """Created on first use, inside the event loop that runs the emails."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        return self._slots

    def halt(self, reason: StopReason, message: str | None = None) -> None:
        """Start no new email; the first reason to stop is the one reported."""
        if self.stopped_by is None:
            self.stopped_by, self.stop_message = reason, message

    def outcome(self, exc: Exception) -> Outcome:
        """What an email's error means for the run: it stops the run (the email is skipped) or fails one email."""
        if isinstance(exc, BudgetExceeded):
            self.halt("budget", str(exc))
        elif isinstance(exc, ConfigError):  # e.g. the model that answered has no price: the budget cannot hold
            self.halt("config", str(exc))
        elif isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            self.halt("auth", f"the endpoint refused the credentials: {one_line(exc)}")
            self.signal.stop()
        elif not isinstance(exc, Interrupted):
            return "failed"
        return "skipped"
