"""Assignment agent: every eligible customer to one experiment arm, deterministically, in DuckDB.

A customer's arm depends only on the seed and their id (the first 8 hex digits of md5(seed:id) as a
fraction in [0, 1), placed on the cumulative allocation), so appending customers never moves anyone
already assigned, and no remainder is dropped: every customer gets exactly one arm. Balance within each
segment (stratum) is statistical; `cells` reports the counts per segment x arm and the cells too small
to learn from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cpo.campaign.agents.load import LoadedCustomers
from cpo.core.errors import InputError
from cpo.core.models import TONES, Tone

HOLDOUT = "holdout"
DEFAULT_ARMS: tuple[Tone, ...] = ("control", *(t for t in TONES if t != "control"))
SMALL_CELL = 30  # fewer customers than this in a segment x arm cell cannot show a difference in click rate


@dataclass(frozen=True)
class Assignment:
    """Counts per segment and arm (the per-customer rows are in the `assignments` table)."""

    arms: tuple[str, ...]
    cells: dict[tuple[str, str], int]
    total: int

    def small_cells(self, minimum: int = SMALL_CELL) -> list[tuple[str, str, int]]:
        return [(segment, arm, n) for (segment, arm), n in sorted(self.cells.items()) if n < minimum]

    def per_arm(self) -> dict[str, int]:
        out = dict.fromkeys(self.arms, 0)
        for (_, arm), n in self.cells.items():
            out[arm] += n
        return out


def allocation_for(arms: tuple[str, ...], weights: dict[str, float] | None, holdout: float) -> list[tuple[str, float]]:
    """(arm, cumulative upper bound) pairs; equal shares unless `weights` says otherwise."""
    if not 0 <= holdout < 1:
        raise InputError(f"holdout must be at least 0 and below 1 (got {holdout})")
    weights = weights or dict.fromkeys(arms, 1.0)
    unknown = sorted(set(weights) - set(arms))
    if unknown:
        raise InputError(f"allocation names unknown arm(s): {', '.join(unknown)}; arms are {', '.join(arms)}")
    if any(w < 0 for w in weights.values()) or sum(weights.get(a, 0.0) for a in arms) <= 0:
        raise InputError("allocation weights must be non-negative and not all zero")
    total = sum(weights.get(a, 0.0) for a in arms)
    bounds, upper = [], holdout
    if holdout:
        bounds.append((HOLDOUT, holdout))
    for arm in arms:
        upper += (1 - holdout) * weights.get(arm, 0.0) / total
        bounds.append((arm, upper))
    bounds[-1] = (bounds[-1][0], 1.0)  # no floating-point gap at the top: nobody falls off the end
    return bounds


def assign_customers(
    loaded: LoadedCustomers,
    *,
    seed: int,
    arms: tuple[str, ...] = DEFAULT_ARMS,
    weights: dict[str, float] | None = None,
    holdout: float = 0.0,
) -> Assignment:
    """Create the table `assignments` (customer_id, segment, arm) and return its counts."""
    bounds = allocation_for(arms, weights, holdout)
    con: Any = loaded.connection
    cases = " ".join("WHEN u < ? THEN ?" for _ in bounds)
    params: list[Any] = [value for arm, upper in bounds for value in (upper, arm)]
    con.execute(
        "CREATE OR REPLACE TABLE assignments AS "
        f"SELECT customer_id, segment, CASE {cases} END AS arm FROM ("
        "  SELECT customer_id, segment,"
        "         CAST(('0x' || substr(md5(? || ':' || customer_id), 1, 8)) AS UBIGINT) / 4294967296.0 AS u"
        "  FROM customers)",
        [*params, str(seed)],
    )
    rows = con.execute("SELECT segment, arm, count(*) FROM assignments GROUP BY ALL").fetchall()
    cells = {(str(s), str(a)): int(n) for s, a, n in rows}
    all_arms = ((HOLDOUT,) if holdout else ()) + arms
    return Assignment(arms=all_arms, cells=cells, total=sum(cells.values()))
