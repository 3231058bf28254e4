"""Simulated outcomes, for trying the analysis before a send: seeded draws from each customer's own history.

A customer in an emailed arm bounces with the bounce rate; an email that did not bounce is delivered, opened
with the customer's historical open rate, clicked (once opened) with their historical click rate over their
open rate (so their click rate is the historical one), and unsubscribed with the unsubscribe rate. Everyone,
the holdout included, converts with the conversion rate. By default no arm differs from another: a per-arm
effect multiplies an arm's chance of a metric (`{"urgent": {"clicked": 1.2}}`). Draws are made in customer-id
order from one seeded generator, so a seed gives the same outcomes whatever the order of the customer file.
The data is labelled simulated wherever it is shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cpo.campaign.agents.assignment import HOLDOUT
from cpo.core.errors import InputError

EFFECT_METRICS = ("opened", "clicked", "converted", "unsubscribed", "bounced")


@dataclass(frozen=True)
class SimulationRates:
    """Rates the customer file does not give, as documented defaults (`cpo analyze --simulate --help`)."""

    bounce: float = 0.02
    unsubscribe: float = 0.003
    conversion: float = 0.02
    effects: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("bounce", "unsubscribe", "conversion"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise InputError(f"simulated {name} rate must be between 0 and 1 (got {value})")
        for arm, by_metric in self.effects.items():
            for metric, times in by_metric.items():
                if metric not in EFFECT_METRICS:
                    raise InputError(f"effect {arm}:{metric}: metric must be one of {', '.join(EFFECT_METRICS)}")
                if not 0 <= times <= 100:
                    raise InputError(f"effect {arm}:{metric}={times}: a multiplier between 0 and 100")


def parse_effects(pairs: list[str], arms: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """`--effect urgent=1.2` (clicks and conversions) or `urgent:opened=1.1`: per arm, per metric multipliers."""
    out: dict[str, dict[str, float]] = {}
    for pair in pairs:
        target, sep, value = pair.partition("=")
        arm, _, metric = target.partition(":")
        try:
            times = float(value)
        except ValueError:
            times = float("nan")
        if not sep or times != times:
            raise InputError(f"--effect {pair!r}: expected ARM=MULTIPLIER or ARM:METRIC=MULTIPLIER (e.g. urgent=1.2)")
        if arm not in arms:
            raise InputError(f"--effect {pair!r}: no arm {arm!r} in this run (arms: {', '.join(arms)})")
        for name in (metric,) if metric else ("clicked", "converted"):
            out.setdefault(arm, {})[name] = times
    return out


def simulate(customers: Any, rates: SimulationRates, seed: int) -> Any:
    """Per customer (customer_id, arm, historical_open_rate, historical_click_rate): the simulated metrics.

    Returns a DataFrame indexed by customer_id with delivered, opened, clicked, converted, unsubscribed and
    bounced as 1/0, and NaN for the email metrics of the holdout (no email, nothing to measure)."""
    import numpy as np
    import pandas as pd

    frame = customers.sort_values("customer_id", kind="stable").reset_index(drop=True)
    rng = np.random.default_rng(seed)
    draws = rng.random((len(frame), 5))

    def times(metric: str) -> Any:
        return frame["arm"].map(lambda a: rates.effects.get(a, {}).get(metric, 1.0)).to_numpy(dtype=float)

    opens = frame["historical_open_rate"].fillna(0).clip(0, 1).to_numpy(dtype=float)
    clicks = frame["historical_click_rate"].fillna(0).clip(0, 1).to_numpy(dtype=float)
    click_given_open = np.divide(clicks, opens, out=np.zeros_like(clicks), where=opens > 0).clip(0, 1)
    emailed = (frame["arm"] != HOLDOUT).to_numpy()
    bounced = draws[:, 0] < np.clip(rates.bounce * times("bounced"), 0, 1)
    delivered = ~bounced
    opened = delivered & (draws[:, 1] < np.clip(opens * times("opened"), 0, 1))
    clicked = opened & (draws[:, 2] < np.clip(click_given_open * times("clicked"), 0, 1))
    unsubscribed = delivered & (draws[:, 3] < np.clip(rates.unsubscribe * times("unsubscribed"), 0, 1))
    converted = draws[:, 4] < np.clip(rates.conversion * times("converted"), 0, 1)
    out = pd.DataFrame(
        {
            "delivered": delivered,
            "opened": opened,
            "clicked": clicked,
            "converted": converted,
            "unsubscribed": unsubscribed,
            "bounced": bounced,
        },
        index=frame["customer_id"],
    ).astype(float)
    email_metrics = ["delivered", "opened", "clicked", "unsubscribed", "bounced"]
    out.loc[~emailed, email_metrics] = np.nan
    return out
