"""Usage figures: what one call billed (`TokenCounts`) and the totals of a run or a session (`Usage`).

Plain data: the cost tracker fills them, the email variant carries one, the CLI prints them. Costs are
exact `Decimal`s and never rounded to $0 for display.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, Field


@dataclass(frozen=True)
class TokenCounts:
    """What one call billed. input_tokens includes cached_input_tokens; output includes reasoning."""

    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0


class UsageCounts(BaseModel):
    """Additive usage figures. cost_usd is exact (Decimal) and None once any unpriced call is included.

    A call of unknown cost (it timed out or was cancelled after it was sent, so the provider may have
    billed it without telling us) adds to `unknown_cost_calls`, not to the tokens, and leaves
    `cost_usd` a number: the known sum.
    """

    calls: int = 0
    failed_calls: int = 0
    unknown_cost_calls: int = 0
    refused_calls: int = Field(
        0, description="structured-output method refusals (no tokens, not billed); not in calls or failed_calls"
    )
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0
    cost_usd: Decimal | None = Decimal(0)
    estimated_calls: int = Field(0, description="calls whose tokens were counted locally: provider sent no usage")
    latency_s: float = 0.0

    def _add(
        self,
        counts: TokenCounts,
        cost: Decimal | None,
        *,
        failed: bool,
        estimated: bool,
        latency: float,
        unknown: bool,
        refused: bool = False,
    ) -> None:
        if refused:
            self.refused_calls += 1
            return
        self.calls += 1
        self.failed_calls += int(failed)
        self.unknown_cost_calls += int(unknown)
        self.input_tokens += counts.input_tokens
        self.cached_input_tokens += counts.cached_input_tokens
        self.output_tokens += counts.output_tokens
        self.reasoning_tokens += counts.reasoning_tokens
        self.total_tokens += counts.input_tokens + counts.output_tokens
        if not unknown:
            self.cost_usd = None if cost is None or self.cost_usd is None else self.cost_usd + cost
        self.estimated_calls += int(estimated)
        self.latency_s += latency

    def merge(self, other: UsageCounts) -> None:
        """Add another aggregate into this one (used to total runs)."""
        for name in (
            "calls",
            "failed_calls",
            "unknown_cost_calls",
            "refused_calls",
            "input_tokens",
            "cached_input_tokens",
            "output_tokens",
            "reasoning_tokens",
            "total_tokens",
            "estimated_calls",
            "latency_s",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.cost_usd = None if self.cost_usd is None or other.cost_usd is None else self.cost_usd + other.cost_usd


class Usage(UsageCounts):
    """Usage of a run or a session, with a per-model breakdown (keys are real model names) and a per-deployment
    one (the Azure deployment, or the name a deployments file gives it: each may bill differently)."""

    by_model: dict[str, UsageCounts] = Field(default_factory=dict)
    by_deployment: dict[str, UsageCounts] = Field(default_factory=dict)

    def add_call(
        self,
        model: str,
        counts: TokenCounts,
        cost: Decimal | None,
        *,
        failed: bool = False,
        estimated: bool = False,
        latency: float = 0.0,
        unknown: bool = False,
        refused: bool = False,
        deployment: str | None = None,
    ) -> None:
        flags = {"failed": failed, "estimated": estimated, "latency": latency, "unknown": unknown, "refused": refused}
        self._add(counts, cost, **flags)  # type: ignore[arg-type]
        self.by_model.setdefault(model, UsageCounts())._add(counts, cost, **flags)  # type: ignore[arg-type]
        if deployment:
            self.by_deployment.setdefault(deployment, UsageCounts())._add(counts, cost, **flags)  # type: ignore[arg-type]

    def merge(self, other: UsageCounts) -> None:
        super().merge(other)
        for model, counts in getattr(other, "by_model", {}).items():
            self.by_model.setdefault(model, UsageCounts()).merge(counts)
        for deployment, counts in getattr(other, "by_deployment", {}).items():
            self.by_deployment.setdefault(deployment, UsageCounts()).merge(counts)

    @property
    def cost_display(self) -> str:
        """Cost for humans: enough digits to see sub-cent runs, 'unknown' rather than $0 for unpriced."""
        shown = format_usd(self.cost_usd)
        if self.unknown_cost_calls and self.cost_usd is not None:
            shown += f" + {self.unknown_cost_calls} call(s) of unknown cost"
        return shown

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-safe dict; Decimal costs become exact strings."""
        return dict(json.loads(self.model_dump_json()))

    def _repr_html_(self) -> str:
        from html import escape

        rows = "".join(
            f"<tr><td>{escape(m)}</td><td>{u.calls}</td><td>{u.input_tokens}</td><td>{u.cached_input_tokens}</td>"
            f"<td>{u.output_tokens}</td><td>{format_usd(u.cost_usd)}</td></tr>"
            for m, u in self.by_model.items()
        )
        return (
            f"<b>Usage</b>: {self.calls} calls ({self.failed_calls} failed), {self.total_tokens} tokens, "
            f"{escape(self.cost_display)}, {self.latency_s:.2f} s"
            "<table><tr><th>model</th><th>calls</th><th>input</th><th>cached</th><th>output</th>"
            f"<th>cost</th></tr>{rows}</table>"
        )


def format_usd(cost: Decimal | None) -> str:
    """$0.000123 style; never rounds a real cost to $0.00."""
    if cost is None:
        return "unknown"
    if cost == 0:
        return "$0"
    if cost >= Decimal("0.01"):
        return f"${cost:.4f}"
    return f"${cost:.8f}".rstrip("0")
