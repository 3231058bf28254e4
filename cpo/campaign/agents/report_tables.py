"""The campaign report's results: an `analysis.json` (see `cpo.campaign.analysis`) as rows of display strings
and three charts, for the report page to lay out.

Numbers are formatted for people: rates as percentages with one decimal, differences in percentage points with
their sign, p-values to three significant digits, "n/a" for what could not be computed (a null in the file).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cpo.campaign.agents.charts import Point, data_uri, lift_chart, rate_chart
from cpo.campaign.agents.experiment import LABELS, LOWER_IS_BETTER, signed_points
from cpo.campaign.agents.experiment_stats import SRM_ALPHA

NA = "n/a"


def _hundred(value: float) -> float:
    """A fraction in percent, rounded to the shown decimal, without a negative zero ("-0.0")."""
    return round(100 * value, 1) + 0.0


def pct(value: float | None) -> str:
    """A rate as people read it: 6.8%."""
    return NA if value is None else f"{_hundred(value):.1f}%"


def points(value: float | None) -> str:
    """A difference of rates in percentage points, with its sign: +1.7 pts."""
    return NA if value is None else f"{signed_points(value)} pts"


def signed_pct(value: float | None) -> str:
    return NA if value is None else f"{_hundred(value):+.1f}%"


def p_value(value: float | None) -> str:
    """Three significant digits: 0.0307, 1.00."""
    return NA if value is None else f"{value:#.3g}"


def span(low: float | None, high: float | None, form: Any = None) -> str:
    """An interval: its two ends in percentage points with their signs (`form` formats them otherwise)."""
    if low is None or high is None:
        return NA
    return f"{(form or signed_points)(low)} to {(form or signed_points)(high)}"


def label(metric: str) -> str:
    return LABELS.get(metric, metric)


def results(analysis: Mapping[str, Any]) -> dict[str, Any]:
    """Every analysis table as rows of display strings, and the three charts."""
    verdict, primary = analysis["verdict"], analysis["verdict"]["primary_metric"]
    arms = analysis["arms"]
    arm_names = list(dict.fromkeys(a for cells in arms.values() for a in cells))
    found = analysis["comparisons"]
    return {
        "verdict": str(verdict["text"]),
        "verdict_status": str(verdict["status"]),
        "primary": label(primary),
        "generated": str(analysis.get("generated", NA)),
        "alpha": str(analysis.get("alpha", NA)),
        "metrics": [label(m) for m in arms],
        "arms": [
            {"arm": arm, "cells": [_cell(arms[m].get(arm)) for m in arms]}
            for arm in arm_names  # a metric not measured for an arm (the holdout's opens) is n/a
        ],
        "comparisons": [_comparison(c, primary) for c in found],
        "guardrail": _guardrail(analysis["guardrail"]),
        "srm": _srm(analysis["srm"]),
        "mde": [_power(m) for m in analysis["mde"]],
        "underpowered": any(m["underpowered"] for m in analysis["mde"]),
        "mde_summary": _power_summary(analysis["mde"]),
        "segments": _by_group(analysis["segments"], primary),
        "features": [
            {"feature": feature, "rows": _by_group(buckets, primary)}
            for feature, buckets in (analysis.get("features") or {}).items()
        ],
        "delivered": _delivered(analysis.get("delivered") or {}),
        "data": _provenance(analysis["data"], analysis.get("utm") or {}),
        "charts": _charts(arms.get(primary) or {}, found, analysis["segments"], primary),
    }


def _cell(cell: Mapping[str, Any] | None) -> dict[str, str]:
    if not cell:
        return {"rate": NA, "detail": "not measured"}
    interval = span(cell["ci_low"], cell["ci_high"], pct)
    return {"rate": pct(cell["rate"]), "detail": f"{cell['successes']:,} of {cell['n']:,} · {interval}"}


def _comparison(c: Mapping[str, Any], primary: str) -> dict[str, Any]:
    return {
        "metric": label(c["metric"]),
        "primary": c["metric"] == primary,
        "arm": str(c["arm"]),
        "control": str(c["control"]),
        "n": f"{c['n']:,} / {c['n_control']:,}",
        "rates": f"{pct(c['rate'])} vs {pct(c['rate_control'])}",
        "lift": points(c["abs_lift"]),
        "lift_ci": span(c["abs_ci_low"], c["abs_ci_high"]),
        "relative": _relative(c["rel_lift"], c["rel_ci_low"], c["rel_ci_high"]),
        "p": p_value(c["p_value"]),
        "p_holm": p_value(c["p_holm"]),
        "significant": bool(c["significant"]),
        "direction": "better" if ((c["abs_lift"] or 0) > 0) != (c["metric"] in LOWER_IS_BETTER) else "worse",
    }


def _relative(value: float | None, low: float | None, high: float | None) -> str:
    if value is None:
        return NA
    return signed_pct(value) + ("" if low is None or high is None else f" ({span(low, high)})")


def _guardrail(rail: Mapping[str, Any]) -> dict[str, Any]:
    state = "tripped" if rail["tripped"] else ("held" if rail["measured"] else "not measured")
    return {
        "state": state,
        "tripped": bool(rail["tripped"]),
        "text": str(rail["text"]),
        "metric": label(rail["metric"]),
    }


def _srm(srm: Mapping[str, Any]) -> dict[str, Any]:
    observed, expected = srm.get("observed") or {}, srm.get("expected") or {}
    if srm.get("p_value") is None:
        text = "not tested (fewer than two emailed arms)"
    elif srm["flagged"]:
        text = (
            f"MISMATCH: the arms' sizes are not the planned allocation (chi-square {srm['chi2']:.3g}, "
            f"p = {p_value(srm['p_value'])} < {SRM_ALPHA}); customers were lost or moved between arms: "
            "do not trust the lifts"
        )
    else:
        fit = f"chi-square {srm['chi2']:.3g}, p = {p_value(srm['p_value'])}"
        text = f"no mismatch: the arms' sizes fit the planned allocation ({fit}; flagged below p = {SRM_ALPHA})"
    rows = [
        {"arm": arm, "observed": f"{n:,}", "expected": f"{float(expected.get(arm, 0)):,.1f}"}
        for arm, n in observed.items()
    ]
    return {"flagged": bool(srm.get("flagged")), "text": text, "rows": rows}


def _power(m: Mapping[str, Any]) -> dict[str, Any]:
    mde = m["mde_abs"]
    return {
        "metric": label(m["metric"]),
        "arm": str(m["arm"]),
        "control": str(m["control"]),
        "n": f"{m['n']:,} / {m['n_control']:,}",
        "baseline": pct(m["baseline"]),
        "mde": "none detectable" if mde is None else f"±{100 * mde:.1f} pts",
        "underpowered": bool(m["underpowered"]),
        "note": str(m["warning"] or "").removeprefix("underpowered: "),
    }


def _power_summary(rows: list[Mapping[str, Any]]) -> str:
    weak = sum(1 for m in rows if m["underpowered"])
    if not weak:
        return f"all {len(rows)} comparisons are adequately powered"
    return (
        f"{weak} of {len(rows)} comparisons are underpowered: for them, no detectable difference means the test "
        "could not see one, not that there is none"
    )


def _by_group(groups: Mapping[str, Any], primary: str) -> list[dict[str, Any]]:
    """One row per group (segment, or a feature's bucket) and arm: the primary metric's rate and lift."""
    rows = []
    for group, metrics in groups.items():
        for arm, cell in (metrics.get(primary) or {}).items():
            rows.append(
                {
                    "group": str(group),
                    "arm": str(arm),
                    "n": f"{cell['n']:,}",
                    "rate": pct(cell["rate"]),
                    "rate_ci": span(cell["ci_low"], cell["ci_high"], pct),
                    "lift": points(cell["abs_lift"]) if "abs_lift" in cell else "baseline",
                    "lift_ci": span(cell.get("abs_ci_low"), cell.get("abs_ci_high")) if "abs_lift" in cell else "",
                }
            )
    return rows


def _delivered(delivered: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "arm": str(arm),
            "customers": f"{d['customers']:,}",
            "variants": [f"{v}: {n:,}" for v, n in d["variants"].items()],
            "other_arm": f"{d['other_arm']:,}",
            "none": f"{d['none']:,}",
        }
        for arm, d in delivered.items()
    ]


def _provenance(data: Mapping[str, Any], utm: Mapping[str, Any]) -> list[dict[str, str]]:
    """What the outcomes are and where they came from, as (what, value) lines."""
    simulated = data.get("source") == "simulated"
    rows = [("outcomes", "simulated (not real customers' behaviour)" if simulated else "observed")]
    if simulated:
        rows.append(("simulation seed", str(data.get("seed", NA))))
    else:
        rows += [("outcome file", str(data.get("file") or NA)), ("its sha256", str(data.get("file_sha256") or NA))]
        rows.append(("platform", str(data.get("platform", NA))))
        for key, what in (("rows", "rows read"), ("unknown_ids", "ids matching no customer of the run"),
                          ("duplicates", "repeated rows (each counted once)"),
                          ("missing", "emailed customers absent from the file"),
                          ("holdout_in_export", "holdout customers in the file (ignored: were they emailed?)"),
                          ("rows_without_id", "rows without an id"),
                          ("complained", "spam complaints (added to the suppression list)")):  # fmt: skip
            if key in data:
                rows.append((what, f"{data[key]:,}"))
        ignored = data.get("ignored_events") or {}
        if ignored:
            rows.append(("event types not counted", ", ".join(f"{k} ({n:,})" for k, n in ignored.items())))
        rows.append(("clicks carrying a variant's UTM tag", f"{utm.get('clicks', 0):,}"))
        rows.append(("of them on another variant than delivered", f"{utm.get('other_variant', 0):,}"))
    if data.get("not_sent"):
        rows.append(
            ("assigned but sent nothing by the run (counted in their arm, no engagement)", f"{data['not_sent']:,}")
        )
    conversions = data.get("conversions")
    if conversions:
        rows += [
            ("conversions file", str(conversions.get("file"))),
            ("its sha256", str(conversions.get("file_sha256"))),
            ("its ids matching no customer", f"{conversions.get('unknown_ids', 0):,}"),
        ]
    rows.append(("metrics measured", ", ".join(label(m) for m in data.get("measured") or []) or NA))
    if data.get("suppression_file"):
        rows.append(
            (
                "unsubscribes, bounces and complaints for the next run",
                f"{data['suppression_file']} (cpo run --suppress)",
            )
        )
    return [{"what": what, "value": value} for what, value in rows]


def _charts(
    primary_cells: Mapping[str, Any], found: list[Mapping[str, Any]], segments: Mapping[str, Any], primary: str
) -> dict[str, dict[str, str] | None]:
    """The rate by arm, the lift by arm for each metric, the lift by segment: each an image and its alt text
    (None when there is nothing to draw)."""
    charts: dict[str, dict[str, str] | None] = {"rate": None, "lifts": None, "segments": None}
    if primary_cells:
        rates = [Point(a, 100 * c["rate"], 100 * c["ci_low"], 100 * c["ci_high"]) for a, c in primary_cells.items()]
        alt = f"{label(primary).capitalize()} by arm with 95% intervals: " + "; ".join(
            f"{p.label} {p.value:.1f}% ({p.low:.1f}% to {p.high:.1f}%)" for p in rates
        )
        charts["rate"] = _chart(rate_chart(rates, f"{label(primary).capitalize()} by arm"), alt)
    lifts = [_lift_point(f"{label(c['metric'])} · {c['arm']}" + _against(c["control"]), c) for c in found]
    if lifts:
        baseline = "control" if all(c["control"] == "control" for c in found) else "the baseline"
        title = f"Lift against {baseline} (coloured: significant after Holm)"
        charts["lifts"] = _chart(
            lift_chart(lifts, title, "difference in percentage points, 95% interval"), _alt(title, lifts)
        )
    by_segment = [
        _lift_point(f"{segment} · {arm}", {**cell, "metric": primary})
        for segment, metrics in segments.items()
        for arm, cell in (metrics.get(primary) or {}).items()
        if "abs_lift" in cell
    ]
    if by_segment:
        title = f"Lift in {label(primary)} against control, by segment"
        axis = "difference in percentage points, 95% interval"
        charts["segments"] = _chart(lift_chart(by_segment, title, axis), _alt(title, by_segment))
    return charts


def _against(base: str) -> str:
    return "" if base == "control" else f" vs {base}"


def _lift_point(name: str, c: Mapping[str, Any]) -> Point:
    def scaled(value: float | None) -> float | None:
        return None if value is None else 100 * value

    return Point(
        name,
        scaled(c["abs_lift"]),
        scaled(c.get("abs_ci_low")),
        scaled(c.get("abs_ci_high")),
        bool(c.get("significant")),
        c.get("metric") in LOWER_IS_BETTER,
    )


def _alt(title: str, lifts: list[Point]) -> str:
    def one(p: Point) -> str:
        value = NA if p.value is None else f"{p.value:+.1f}"
        interval = "" if p.low is None or p.high is None else f" ({p.low:+.1f} to {p.high:+.1f})"
        return f"{p.label} {value}{interval}"

    return f"{title}, in points: " + "; ".join(one(p) for p in lifts)


def _chart(svg: bytes, alt: str) -> dict[str, str]:
    return {"src": data_uri(svg), "alt": alt}
