"""Assignment agent: every eligible customer to one experiment arm, deterministically, in DuckDB.

Two modes, both a function of the seed and the customer ids only (a reordered file gives everyone the same arm):

- `balanced` (the default): within each segment, customers are ordered by md5(seed:id) and dealt arms in
  blocks whose composition follows the allocation (the weights as the smallest whole numbers, a holdout share
  one more arm in the block), each block's order permuted by the seed. Arm sizes then follow the allocation
  within each segment up to one block's remainder, so a sample-ratio test of a correct run does not fail by
  chance (hash-only arms on the sample were 49/67/41/84).
- `hash`: the first 8 hex digits of md5(seed:id) as a fraction in [0, 1), placed on the cumulative allocation.
  Appending customers later never moves anyone already assigned; balance is statistical.

No remainder is dropped: every customer gets exactly one arm. `cells` reports the counts per segment x arm
and the cells too small to learn from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from cpo.campaign.agents.load import LoadedCustomers
from cpo.core.errors import InputError
from cpo.core.models import TONES, Tone

HOLDOUT = "holdout"
DEFAULT_ARMS: tuple[Tone, ...] = ("control", *(t for t in TONES if t != "control"))
SMALL_CELL = 30  # fewer customers than this in a segment x arm cell cannot show a difference in click rate


BALANCED, HASH = "balanced", "hash"
MAX_BLOCK = 10_000  # a block larger than this balances little in real segments: refused, hash mode suggested
UNIT = "CAST(('0x' || substr(md5(? || ':' || customer_id), 1, 8)) AS UBIGINT) / 4294967296.0"


def _balanced(con: Any, seed: int, block: list[str]) -> None:
    """Deal `block` over each segment's customers in md5(seed:id) order, each block's order permuted by the seed:
    slot s of block b gets the arm at the rank of md5(seed:segment:b:s) among the block's slots, so a last,
    partial block gets a seeded subset of the arms, not always the first ones."""
    size = len(block)
    con.execute("CREATE OR REPLACE TEMP TABLE block_arms (rank BIGINT, arm VARCHAR)")
    con.executemany("INSERT INTO block_arms VALUES (?, ?)", list(enumerate(block)))
    con.execute(
        "CREATE OR REPLACE TEMP TABLE dealt AS SELECT customer_id, segment, p // ? AS b, p % ? AS s FROM ("
        "  SELECT customer_id, segment, row_number() OVER ("
        "    PARTITION BY segment ORDER BY md5(? || ':' || customer_id), customer_id) - 1 AS p FROM customers)",
        [size, size, str(seed)],
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE slots AS SELECT segment, b, s, row_number() OVER ("
        "  PARTITION BY segment, b ORDER BY md5(? || ':' || segment || ':' || b || ':' || s)) - 1 AS rank "
        "FROM (SELECT DISTINCT segment, b FROM dealt), range(?) AS r(s)",
        [str(seed), size],
    )
    con.execute(
        "CREATE OR REPLACE TABLE assignments AS SELECT d.customer_id, d.segment, a.arm FROM dealt d "
        "JOIN slots USING (segment, b, s) JOIN block_arms a USING (rank)"
    )
    for table in ("dealt", "slots", "block_arms"):
        con.execute(f"DROP TABLE {table}")


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


def shares_for(arms: tuple[str, ...], weights: dict[str, float] | None, holdout: float) -> dict[str, float]:
    """The planned share of each arm (the holdout's included): what the sample-ratio test compares against."""
    bounds, lower, out = allocation_for(arms, weights, holdout), 0.0, {}
    for arm, upper in bounds:
        out[arm], lower = upper - lower, upper
    return out


def block_of(arms: tuple[str, ...], weights: dict[str, float] | None, holdout: float) -> list[str]:
    """The arms of one balanced block, in allocation order: each arm as many times as its weight in the smallest
    whole numbers (1, 1, 2 for weights 0.5, 0.5, 1), the holdout as one more arm holding its share."""
    allocation_for(arms, weights, holdout)  # the same checks, the same one-line errors
    weights = weights or dict.fromkeys(arms, 1.0)
    shares = {a: Fraction(weights.get(a, 0.0)).limit_denominator(100) for a in arms}
    scale = math.lcm(*(f.denominator for f in shares.values()))
    counts = {a: int(f * scale) for a, f in shares.items()}
    common = math.gcd(*counts.values())
    counts = {a: n // common for a, n in counts.items()}
    held = 0
    if holdout:
        part = Fraction(holdout).limit_denominator(100)  # held / (held + arms) = part
        need = part * sum(counts.values()) / (1 - part)
        counts = {a: n * need.denominator for a, n in counts.items()}
        held = int(need * need.denominator)
    size = held + sum(counts.values())
    if size > MAX_BLOCK:
        raise InputError(
            f"the allocation needs blocks of {size} customers to balance; round its weights or holdout, or set "
            "assignment: hash in the campaign file"
        )
    return [HOLDOUT] * held + [a for a in arms for _ in range(counts[a])]


def assign_customers(
    loaded: LoadedCustomers,
    *,
    seed: int,
    arms: tuple[str, ...] = DEFAULT_ARMS,
    weights: dict[str, float] | None = None,
    holdout: float = 0.0,
    mode: str = BALANCED,
) -> Assignment:
    """Create the table `assignments` (customer_id, segment, arm) and return its counts."""
    con: Any = loaded.connection
    if mode == BALANCED:
        _balanced(con, seed, block_of(arms, weights, holdout))
    else:
        bounds = allocation_for(arms, weights, holdout)
        cases = " ".join("WHEN u < ? THEN ?" for _ in bounds)
        params: list[Any] = [value for arm, upper in bounds for value in (upper, arm)]
        con.execute(
            "CREATE OR REPLACE TABLE assignments AS "
            f"SELECT customer_id, segment, CASE {cases} END AS arm FROM ("
            "  SELECT customer_id, segment,"
            f"         {UNIT} AS u"
            "  FROM customers)",
            [*params, str(seed)],
        )
    rows = con.execute("SELECT segment, arm, count(*) FROM assignments GROUP BY ALL").fetchall()
    cells = {(str(s), str(a)): int(n) for s, a, n in rows}
    all_arms = ((HOLDOUT,) if holdout else ()) + arms
    return Assignment(arms=all_arms, cells=cells, total=sum(cells.values()))
