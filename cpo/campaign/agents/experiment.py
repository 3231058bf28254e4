"""The experiment read from one table of per-customer outcomes: the tables, the family of tests and the verdict.

By assigned arm (intention to treat): a customer counts in the arm they were assigned, whatever variant reached
them (the variant delivered is reported beside it). A metric's value is 1, 0 or missing (NaN: not measured for
that customer, e.g. opens for the holdout, who got no email, or anything for a customer absent from the
outcome export); each rate is over the customers for whom it was measured. Email metrics are compared with the
control arm; conversions, when the holdout's are known, also with the holdout (the effect of emailing at all).
Every such comparison is one member of the Holm family. Per-segment and per-feature tables are description,
outside the family.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from cpo.campaign.agents.assignment import DEFAULT_ARMS, HOLDOUT
from cpo.campaign.agents.experiment_stats import (
    ALPHA,
    holm,
    lift,
    minimum_detectable_effect,
    pooled_z_p_value,
    rate,
    sample_ratio,
    underpowered,
)

METRICS = ("delivered", "opened", "clicked", "converted", "unsubscribed", "bounced")
LABELS = {
    "delivered": "delivery rate",
    "opened": "open rate",
    "clicked": "click rate",
    "converted": "conversion rate",
    "unsubscribed": "unsubscribe rate",
    "bounced": "bounce rate",
}
CONTROL = "control"
GUARDRAIL = "unsubscribed"
LOWER_IS_BETTER = frozenset({"unsubscribed", "bounced"})  # a rise in these is harm, never a win
# Buckets of what the customer file says about each customer: (column, [(label, upper bound inclusive)]).
FEATURE_BUCKETS: dict[str, tuple[str, tuple[tuple[str, float], ...]]] = {
    "recency": ("last_engagement_days", (("0-30 days", 30), ("31-90 days", 90), ("91+ days", float("inf")))),
    "frequency": ("purchase_frequency", (("1-3 orders", 3), ("4-11 orders", 11), ("12+ orders", float("inf")))),
}


def counts(frame: Any) -> dict[str, dict[str, tuple[int, int]]]:
    """counts[metric][arm] = (successes, customers measured), from one vectorized group-by."""
    metrics = [m for m in METRICS if m in frame]
    if not metrics or frame.empty:
        return {}
    table = frame.groupby("arm", sort=False)[metrics].agg(["sum", "count"])
    return {
        m: {str(arm): (int(table.at[arm, (m, "sum")]), int(table.at[arm, (m, "count")])) for arm in table.index}
        for m in metrics
        if table[(m, "count")].sum() > 0
    }


def _arms(frame: Any) -> list[str]:
    """The arms present, in the campaign's order (holdout, control, then the tones), any others after."""
    present = set(frame["arm"].unique())
    order = (HOLDOUT, *DEFAULT_ARMS)
    return [a for a in order if a in present] + sorted(present - set(order))


def rate_table(frame: Any, with_lift: bool = False) -> dict[str, dict[str, dict[str, Any]]]:
    """table[metric][arm] = {n, successes, rate, ci_low, ci_high} (and, descriptively, the lift over control)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    arms = _arms(frame)
    for metric, by_arm in counts(frame).items():
        cells = {arm: rate(*by_arm[arm]) for arm in arms if by_arm[arm][1] > 0}
        if with_lift and CONTROL in cells:
            s0, n0 = by_arm[CONTROL]
            for arm, cell in cells.items():
                if arm not in (CONTROL, HOLDOUT):
                    found = lift(*by_arm[arm], s0, n0)
                    cell.update(abs_lift=found["abs_lift"], abs_ci_low=found["abs_ci_low"])
                    cell.update(abs_ci_high=found["abs_ci_high"])
        if cells:
            out[metric] = cells
    return out


def _pairs(frame: Any, by_metric: dict[str, dict[str, tuple[int, int]]]) -> Iterator[tuple[str, str, str]]:
    """(metric, arm, baseline) for every comparison in the run's family."""
    emailed = [a for a in _arms(frame) if a != HOLDOUT]
    for metric, by_arm in by_metric.items():
        measured = {a for a, (_, n) in by_arm.items() if n > 0}
        if CONTROL in measured:
            yield from ((metric, arm, CONTROL) for arm in emailed if arm != CONTROL and arm in measured)
        if metric == "converted" and HOLDOUT in measured:
            yield from ((metric, arm, HOLDOUT) for arm in emailed if arm in measured)


def comparisons(frame: Any, intervals: bool = True) -> list[dict[str, Any]]:
    """Every arm against its baseline, with Holm-adjusted p-values across them all (`intervals=False`: the
    tests alone, for the many simulations of a calibration check)."""
    found: list[dict[str, Any]] = []
    by_metric = counts(frame)
    for metric, arm, base in _pairs(frame, by_metric):
        (s1, n1), (s0, n0) = by_metric[metric][arm], by_metric[metric][base]
        found.append(
            {
                "metric": metric,
                "arm": arm,
                "control": base,
                "n": n1,
                "n_control": n0,
                "rate": s1 / n1 if n1 else None,
                "rate_control": s0 / n0 if n0 else None,
                **(lift(s1, n1, s0, n0) if intervals else {}),
                "p_value": pooled_z_p_value(s1, n1, s0, n0),
            }
        )
    for row, adjusted in zip(found, holm([c["p_value"] for c in found]), strict=True):
        row["p_holm"] = adjusted
        row["significant"] = adjusted < ALPHA
    return found


def power(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per comparison: the smallest absolute lift detectable (80% power, two-sided 0.05) from its baseline."""
    out = []
    for c in found:
        baseline = c["rate_control"] or 0.0
        mde = minimum_detectable_effect(c["n"], c["n_control"], baseline)
        weak = underpowered(mde, baseline)
        row = {k: c[k] for k in ("metric", "arm", "control", "n", "n_control")}
        row.update(baseline=baseline, mde_abs=mde, underpowered=weak, warning=None)
        if weak:
            detect = "no lift" if mde is None else f"only a lift of {100 * mde:.1f} points or more"
            row["warning"] = (
                f"underpowered: with {c['n']} and {c['n_control']} customers, {detect} over the "
                f"{100 * baseline:.1f}% {LABELS[c['metric']]} of {c['control']} would be detected 80% of the time"
            )
        out.append(row)
    return out


def guardrail(found: list[dict[str, Any]]) -> dict[str, Any]:
    """The unsubscribe rate: a rise against control in any arm at unadjusted p < 0.05 overrides any winner.

    A guardrail guards against harm, so it is not made as hard to trip as a discovery: it reads the raw
    p-value, not the Holm-adjusted one (a false alarm costs a second look; a missed one costs customers)."""
    rows = [c for c in found if c["metric"] == GUARDRAIL and c["control"] == CONTROL]
    if not rows:
        return {"metric": GUARDRAIL, "measured": False, "tripped": False, "arms": [], "text": "not measured"}
    risen = [c["arm"] for c in rows if c["p_value"] < ALPHA and (c["rate"] or 0) > (c["rate_control"] or 0)]
    text = (
        f"unsubscribe rate rose in {', '.join(risen)} (unadjusted p < {ALPHA})"
        if risen
        else f"no rise in the unsubscribe rate (unadjusted p < {ALPHA} in no arm)"
    )
    return {"metric": GUARDRAIL, "measured": True, "tripped": bool(risen), "arms": risen, "text": text}


def improved(c: dict[str, Any]) -> bool:
    """A significant change in the good direction (up, or down for unsubscribes and bounces)."""
    lift_ = c.get("abs_lift") or 0.0
    return bool(c["significant"]) and (lift_ < 0 if c["metric"] in LOWER_IS_BETTER else lift_ > 0)


def harmed(c: dict[str, Any]) -> bool:
    """A significant change in the bad direction."""
    lift_ = c.get("abs_lift") or 0.0
    return bool(c["significant"]) and (lift_ > 0 if c["metric"] in LOWER_IS_BETTER else lift_ < 0)


def signed_points(value: float | None) -> str:
    """A difference of rates in percentage points with its sign (+7.5), never "-0.0"; "n/a" for none."""
    return "n/a" if value is None else f"{round(100 * value, 1) + 0.0:+.1f}"


def verdict(
    found: list[dict[str, Any]], rail: dict[str, Any], primary: str, simulated: bool, srm: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One sentence a manager can act on, and the facts behind it; "no detectable difference" when so.

    A sample-ratio mismatch comes first (the comparisons cannot be trusted), then the guardrail, then the
    primary metric."""
    label = LABELS[primary]
    rows = [c for c in found if c["metric"] == primary and c["control"] == CONTROL]
    better = sorted((c for c in rows if improved(c)), key=lambda c: -abs(c["abs_lift"]))
    worse = [c["arm"] for c in rows if harmed(c)]
    winner, status = None, "no_detectable_difference"
    if not rows:
        status, text = "not_measured", f"No {label} to compare with control."
    elif srm and srm.get("flagged"):
        status = "sample_ratio_mismatch"
        text = (
            f"Do not trust these comparisons yet: the arms' sizes in the outcome data do not match the allocation "
            f"(sample-ratio chi-square p = {srm['p_value']:.2g}), so outcomes were lost unevenly; find out why first."
        )
    elif rail["tripped"]:
        status = "guardrail"
        text = (
            f"Do not roll out {', '.join(rail['arms'])}: the unsubscribe rate rose significantly there, which "
            f"overrides any gain in {label}."
        )
    elif better:
        best, status = better[0], "winner"
        winner = best["arm"]
        text = (
            f"{winner} beat control on {label}: {100 * best['rate']:.1f}% against {100 * best['rate_control']:.1f}%, "
            f"{signed_points(best['abs_lift'])} points (95% CI {signed_points(best['abs_ci_low'])} to "
            f"{signed_points(best['abs_ci_high'])}), Holm-adjusted p = {best['p_holm']:.3g}."
        )
    else:
        text = f"No detectable difference between the arms and control on {label} (Holm-adjusted, alpha {ALPHA})."
        if worse:
            status = "worse"
            text = f"No arm beat control on {label}; {', '.join(worse)} did significantly worse."
    if simulated:
        text = f"Simulated data: {text}"
    return {"text": text, "status": status, "primary_metric": primary, "winner": winner, "worse": worse}


def _bucket(value: Any, bounds: tuple[tuple[str, float], ...]) -> str | None:
    if value is None or value != value:  # NaN: no bucket
        return None
    return next(label for label, upper in bounds if float(value) <= upper)


def feature_tables(frame: Any) -> dict[str, dict[str, Any]]:
    """features[feature][bucket][metric][arm]: what went with the difference. Description, not cause."""
    out: dict[str, dict[str, Any]] = {}
    if "tier" in frame:
        out["tier"] = {str(k): rate_table(part, True) for k, part in frame.groupby("tier", sort=True)}
    for name, (column, bounds) in FEATURE_BUCKETS.items():
        if column in frame:
            labels = frame[column].map(lambda v, b=bounds: _bucket(v, b))
            order = [label for label, _ in bounds]
            parts = {str(k): p for k, p in frame.groupby(labels, sort=False)}
            out[name] = {k: rate_table(parts[k], True) for k in order if k in parts}
    return out


def delivered_variants(frame: Any, variant_arm: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per assigned arm: the variants that reached its customers, and how many got another arm's variant."""
    out: dict[str, dict[str, Any]] = {}
    for arm in _arms(frame):
        part = frame[frame["arm"] == arm]
        sent = part["delivered_variant"].fillna("").astype(str)
        counts = {v: int(n) for v, n in sent[sent != ""].value_counts().sort_index().items()}
        other = sum(n for v, n in counts.items() if variant_arm.get(v, arm) != arm)
        out[arm] = {"customers": len(part), "variants": counts, "other_arm": other, "none": int((sent == "").sum())}
    return out


def analyze(
    frame: Any,
    *,
    shares: dict[str, float],
    primary: str = "clicked",
    simulated: bool = False,
    variant_arm: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The analysis of one outcome table (see the module docstring), keyed as analysis.json is."""
    found = comparisons(frame)
    rail = guardrail(found)
    present = frame[frame["present"]]
    observed = {arm: int((present["arm"] == arm).sum()) for arm in _arms(frame) if arm != HOLDOUT}
    emailed_shares = {a: s for a, s in shares.items() if a != HOLDOUT}
    srm = sample_ratio(observed, emailed_shares)
    return {
        "arms": rate_table(frame),
        "comparisons": found,
        "srm": srm,
        "segments": {str(k): rate_table(p, True) for k, p in frame.groupby("segment", sort=True)},
        "features": feature_tables(frame),
        "mde": power(found),
        "guardrail": rail,
        "verdict": verdict(found, rail, primary, simulated, srm),
        "delivered": delivered_variants(frame, variant_arm or {}),
    }
