"""What every generating command (run, generate, try-prompts) sets up the same way, in an order that fails
before any side effect: settings, limits, the model, the email chain, the cost tracker and its budget.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from cpo.cli.output import say

if TYPE_CHECKING:
    from cpo.accounting.tracker import CostTracker


class CommandContext:
    """What every generating command sets up the same way, in an order that fails before side effects."""

    def __init__(self, args: argparse.Namespace, *, max_usd: str | None = None) -> None:
        from cpo.accounting.pricing import OFFLINE_MODEL, price_book_for
        from cpo.accounting.tracker import CostTracker
        from cpo.core.settings import Settings
        from cpo.email.chain import build_email_chain
        from cpo.email.validation import ValidationLimits
        from cpo.llm.endpoints import FILE_NAME, EndpointNotes
        from cpo.llm.factory import build_chat_model, model_source

        self.settings = Settings()
        self.limits = ValidationLimits.from_file(args.limits) if args.limits else ValidationLimits()
        self.model = build_chat_model(self.settings)
        self.source = model_source(self.model)
        self.resuming: Path | None = getattr(args, "resume", None)
        self.runs_dir: Path = (
            runs_dir_of(self.resuming) if self.resuming else getattr(args, "out", None) or self.settings.runs_dir
        )
        self.notes = EndpointNotes(self.runs_dir / FILE_NAME)
        prices = price_book_for(self.settings)
        self.chain = build_email_chain(
            self.model,
            prompts_dir=args.prompts,
            max_repairs=args.max_repairs,
            limits=self.limits,
            settings=self.settings,
            prices=prices,
            judge=bool(getattr(args, "judge", False)),
            notes=self.notes,
        )
        self.tracker: CostTracker = CostTracker(prices=prices, default_model=self.settings.model_name, max_usd=max_usd)
        hint = OFFLINE_MODEL if self.source == "offline" else self.settings.model_name
        pool = self.settings.deployments
        for deployment in [d.name for d in pool.deployments] if pool else [self.settings.azure_deployment]:
            self.tracker.check_budget_pricing(hint, deployment)

    def open_ledger(self, session_name: str, runs_dir: Path | None = None) -> Path | None:
        """Record this command's calls in the cost ledger (unless CPO_LEDGER=off); after input is checked.

        A resumed run's ledger is in the runs directory of the run, like its endpoint notes, wherever
        the command is run from (`runs_dir` is not consulted then).
        """
        from cpo.accounting.ledger import Ledger

        path = self.settings.ledger_file(self.runs_dir if self.resuming else runs_dir)
        if path is not None:
            self.tracker.use_ledger(Ledger(path), session_name=session_name)
        return path

    def announce(self, concurrency: int = 1) -> None:
        from cpo.llm.offline import NOT_CONFIGURED
        from cpo.llm.parallelism import concurrency_warning

        say(f"model: {self.settings.describe()}", stderr=True)
        if self.source == "offline":
            say(NOT_CONFIGURED, stderr=True)
            return
        say(f"structured output: {self.chain.method} ({self.method_origin()})", stderr=True)
        warning = concurrency_warning(self.notes, self.model, concurrency)
        if warning:
            say(warning, stderr=True)

    def method_origin(self) -> str:
        from cpo.llm.endpoints import endpoint_key

        if not self.chain.remember_method:
            return "set by CPO_STRUCTURED_OUTPUT"
        if self.notes.get(endpoint_key(self.model), "method") == self.chain.method:
            return f"remembered in {self.notes.path}"
        return "to be probed on the first call"


def runs_dir_of(run_dir: Path) -> Path:
    """The runs directory a run directory is in, as the user wrote it; for `--resume .` (or `..`), absolute."""
    if run_dir.name in ("", ".."):
        return Path(os.path.abspath(run_dir)).parent
    return run_dir.parent
