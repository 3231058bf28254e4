"""The small error hierarchy the CLI turns into one-line messages and exit codes."""

from __future__ import annotations


class CpoError(Exception):
    """Base class for errors cpo expects and reports without a traceback."""

    exit_code: int = 1


class ConfigError(CpoError):
    """Invalid or half-set configuration; the message names the variable or file."""

    exit_code = 2


class InputError(CpoError):
    """User input (a file, a segment name, a flag) that cpo cannot use."""

    exit_code = 2


class BudgetExceeded(CpoError):
    """The session has spent its `max_usd`; raised before the next call is sent."""

    exit_code = 3

    def __init__(self, spent_usd: object, max_usd: object, estimate_usd: object | None = None) -> None:
        self.spent_usd = spent_usd
        self.max_usd = max_usd
        self.estimate_usd = estimate_usd
        extra = f" (next call estimated at ${estimate_usd})" if estimate_usd is not None else ""
        super().__init__(f"budget of ${max_usd} reached: ${spent_usd} spent this session{extra}")
