"""Segmentation agent: rule-based segments (RFM-style) from a YAML rules file, computed in DuckDB.

Every eligible customer lands in exactly one segment, with the rule that matched (first match wins).
What leaves this agent is a summary per segment (size, share, feature means, the most common tier):
the only customer-derived facts that may reach a prompt. Names and other free text never do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cpo.campaign.agents.load import NUMERIC, LoadedCustomers
from cpo.core.errors import InputError, first_line
from cpo.core.files import load_yaml_model
from cpo.core.resources import bundled

MIN_SEGMENTS, MAX_SEGMENTS = 3, 6
# The only customer-derived fields that may reach a prompt (as segment means), besides the tier.
PROMPT_FEATURES = (
    "purchase_frequency",
    "avg_order_value",
    "last_engagement_days",
    "historical_open_rate",
    "historical_click_rate",
)
FORBIDDEN = (";", "--", "/*")


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    rule: str = Field(min_length=1)


class RuleFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    segments: list[Rule] = Field(min_length=MIN_SEGMENTS, max_length=MAX_SEGMENTS)


@dataclass(frozen=True)
class Segment:
    """One segment as the rest of the pipeline sees it: no customer rows, only aggregates."""

    name: str
    rule: str
    size: int
    share: float
    tier: str | None
    means: dict[str, float] = field(default_factory=dict)
    tiers: list[str] = field(default_factory=list)  # every tier among its customers: who its emails reach

    def features(self) -> dict[str, str | int | float]:
        """The whitelisted profile for prompts: the most common tier and the behavioural means.

        Never names, locations or ages: those stay in the customer table.
        """
        out: dict[str, str | int | float] = {"tier": self.tier} if self.tier else {}
        for key in PROMPT_FEATURES:
            if key in self.means:
                value = self.means[key]
                out[key] = round(value) if key in ("purchase_frequency", "last_engagement_days") else round(value, 2)
        return out


def default_rules_file() -> Path:
    return bundled("data") / "segment_rules.yaml"


def load_rules(path: Path | None = None) -> list[Rule]:
    path = path or default_rules_file()
    rules = load_yaml_model(path, RuleFile, "rules file", InputError).segments
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise InputError(f"rules file {path}: segment names must be unique")
    for r in rules:
        if any(bad in r.rule for bad in FORBIDDEN):
            raise InputError(f"rules file {path}: segment {r.name!r}: a rule is one condition (no ';' or comments)")
    return rules


def segment_customers(loaded: LoadedCustomers, rules_path: Path | None = None) -> list[Segment]:
    """Add `segment` and `rule` to the customers table; return one summary per segment, in rule order."""
    import duckdb

    path = rules_path or default_rules_file()
    rules = load_rules(path)
    con: Any = loaded.connection
    for r in rules:
        try:
            con.execute(f"SELECT count(*) FROM customers WHERE ({r.rule})").fetchone()
        except duckdb.Error as exc:
            first = first_line(exc)
            raise InputError(f"rules file {path}: segment {r.name!r}: bad rule {r.rule!r}: {first}") from None
    cases = " ".join(f"WHEN ({r.rule}) THEN ?" for r in rules)
    params = [r.name for r in rules]
    con.execute(
        f"CREATE OR REPLACE TABLE customers AS SELECT *, CASE {cases} END AS segment FROM customers",
        params,
    )
    unmatched = con.execute("SELECT count(*), min(customer_id) FROM customers WHERE segment IS NULL").fetchone()
    if unmatched[0]:
        raise InputError(
            f"rules file {path}: {unmatched[0]} customer(s) match no rule (e.g. {unmatched[1]}); "
            'end with a catch-all rule: "true"'
        )
    total = con.execute("SELECT count(*) FROM customers").fetchone()[0] or 1
    numeric = [c for c in NUMERIC if c in loaded.columns]
    means = ", ".join(f'avg("{c}")' for c in numeric)
    rows = {
        row[0]: row
        for row in con.execute(
            f"SELECT segment, count(*), mode(tier), {means}, list(DISTINCT tier ORDER BY tier) "
            "FROM customers GROUP BY segment"
        ).fetchall()
    }
    segments = []
    for r in rules:
        row = rows.get(r.name)
        size = int(row[1]) if row else 0
        segments.append(
            Segment(
                name=r.name,
                rule=r.rule,
                size=size,
                share=size / total,
                tier=row[2] if row else None,
                means={c: float(v) for c, v in zip(numeric, row[3:-1], strict=True) if v is not None} if row else {},
                tiers=[str(t) for t in row[-1] if t is not None] if row else [],
            )
        )
    return segments
