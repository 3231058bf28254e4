"""The small error hierarchy, and the exit codes the CLI turns them into: both defined here and nowhere else."""

from __future__ import annotations

from decimal import Decimal
from enum import IntEnum


class ExitCode(IntEnum):
    """What a `cpo` command's exit status means; `describe()` is the line `--help` prints."""

    OK = 0
    FAILED = 1  # some emails failed (or, with --strict, are invalid), or the endpoint failed
    BAD_INPUT = 2  # bad input, configuration or credentials
    BUDGET = 3  # the budget was reached
    REVIEW = 4  # paused for review (cpo run --review)
    INTERRUPTED = 130  # Ctrl-C

    @staticmethod
    def describe() -> str:
        return (
            "exit codes: 0 done, 1 failures, 2 bad input/configuration/credentials, 3 budget reached, "
            "4 paused for review (cpo run --review), 130 Ctrl-C"
        )


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """An error as one short line: the first line of its message, or its type's name when it has none."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if limit is None else line[:limit]


class CpoError(Exception):
    """Base class for errors cpo expects and reports without a traceback."""

    exit_code: int = ExitCode.FAILED


class ConfigError(CpoError):
    """Invalid or half-set configuration; the message names the variable or file."""

    exit_code = ExitCode.BAD_INPUT


class InputError(CpoError):
    """User input (a file, a segment name, a flag) that cpo cannot use."""

    exit_code = ExitCode.BAD_INPUT


class LedgerError(CpoError):
    """The cost ledger cannot be opened or read (corrupt, unwritable, from a newer cpo)."""

    exit_code = ExitCode.BAD_INPUT


class BudgetExceeded(CpoError):
    """A call was refused before it was sent: the settled spend plus its worst case would pass `max_usd`."""

    exit_code = ExitCode.BUDGET

    def __init__(self, spent_usd: Decimal, max_usd: Decimal, reservation_usd: Decimal | None = None) -> None:
        self.spent_usd = spent_usd
        self.max_usd = max_usd
        self.reservation_usd = reservation_usd
        extra = f" and the next call may cost up to ${reservation_usd}" if reservation_usd is not None else ""
        super().__init__(f"budget of ${max_usd} reached: ${spent_usd} spent or held{extra}")


class UnpricedBudget(ConfigError):
    """A budget was set but the model that answers has no known price, so it cannot be enforced."""

    def __init__(self, model: str, max_usd: Decimal) -> None:
        self.model = model
        super().__init__(
            f"a budget of ${max_usd} needs a price for model {model!r}, and none is known: "
            "add it to a price file (CPO_PRICE_FILE), or run without --max-usd"
        )


class DeadlineExceeded(CpoError):
    """An email (all its attempts, repairs and fallbacks) ran past its wall-clock deadline."""

    def __init__(self, deadline_s: float | None, doing: str) -> None:
        self.deadline_s = deadline_s
        limit = f" of {deadline_s:g} s" if deadline_s is not None else ""
        super().__init__(f"deadline{limit} passed {doing} (CPO_EMAIL_DEADLINE)")


class Interrupted(CpoError):
    """The run was stopped (Ctrl-C) before this email produced anything."""

    exit_code = ExitCode.INTERRUPTED
