"""The experiment's statistics, each checked against a value computed by hand from its textbook formula and
against scipy or statsmodels on fixed counts: Wilson intervals, Newcombe's interval for a difference, the
log-scale interval for a ratio, the pooled z-test (= chi-square without continuity correction), Holm, the
sample-ratio test, the minimum detectable effect; then the assembled comparisons, guardrail and verdict."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from scipy.stats import chi2_contingency, norm
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower

from cpo.campaign.agents.experiment import analyze, comparisons
from cpo.campaign.agents.experiment_stats import (
    holm,
    lift,
    minimum_detectable_effect,
    pooled_z_p_value,
    rate,
    sample_ratio,
    underpowered,
)

Z = norm.ppf(0.975)


def wilson(s: int, n: int) -> tuple[float, float]:
    p = s / n
    centre = (p + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2)) / (1 + Z**2 / n)
    return centre - half, centre + half


@pytest.mark.parametrize(("s", "n"), [(5, 59), (0, 40), (40, 40), (123, 1000)])
def test_a_rate_has_the_wilson_interval(s: int, n: int) -> None:
    cell = rate(s, n)
    low, high = wilson(s, n)
    assert cell["n"] == n and cell["successes"] == s and cell["rate"] == pytest.approx(s / n)
    assert cell["ci_low"] == pytest.approx(low, abs=1e-12) and cell["ci_high"] == pytest.approx(high, abs=1e-12)


def test_an_empty_arm_has_no_rate() -> None:
    assert rate(0, 0) == {"n": 0, "successes": 0, "rate": None, "ci_low": None, "ci_high": None}


def test_the_z_test_pools_the_variance_as_chi_square_without_correction_does() -> None:
    s1, n1, s0, n0 = 10, 60, 5, 59
    pooled = (s1 + s0) / (n1 + n0)
    z = (s1 / n1 - s0 / n0) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
    by_hand = math.erfc(abs(z) / math.sqrt(2))
    assert pooled_z_p_value(s1, n1, s0, n0) == pytest.approx(by_hand, rel=1e-12)
    _, p, _, _ = chi2_contingency([[s1, n1 - s1], [s0, n0 - s0]], correction=False)
    assert pooled_z_p_value(s1, n1, s0, n0) == pytest.approx(p, rel=1e-9)
    assert by_hand == pytest.approx(0.17824, abs=1e-5)


@pytest.mark.parametrize(("s1", "n1", "s0", "n0"), [(0, 60, 0, 59), (60, 60, 59, 59), (3, 0, 1, 10)])
def test_arms_that_cannot_differ_have_p_one(s1: int, n1: int, s0: int, n0: int) -> None:
    assert pooled_z_p_value(s1, n1, s0, n0) == 1.0


def test_the_absolute_lift_has_newcombes_interval_and_the_relative_lift_a_log_interval() -> None:
    s1, n1, s0, n0 = 30, 200, 18, 210
    found = lift(s1, n1, s0, n0)
    p1, p0 = s1 / n1, s0 / n0
    (l1, u1), (l0, u0) = wilson(s1, n1), wilson(s0, n0)
    diff = p1 - p0
    assert found["abs_lift"] == pytest.approx(diff)
    assert found["abs_ci_low"] == pytest.approx(diff - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2), abs=1e-12)
    assert found["abs_ci_high"] == pytest.approx(diff + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2), abs=1e-12)
    se = math.sqrt(1 / s1 - 1 / n1 + 1 / s0 - 1 / n0)
    ratio = p1 / p0
    assert found["rel_lift"] == pytest.approx(ratio - 1)
    assert found["rel_ci_low"] == pytest.approx(ratio * math.exp(-Z * se) - 1, abs=1e-12)
    assert found["rel_ci_high"] == pytest.approx(ratio * math.exp(Z * se) - 1, abs=1e-12)


def test_a_relative_lift_over_no_events_is_undefined_not_infinite() -> None:
    found = lift(3, 50, 0, 50)
    assert found["abs_lift"] == pytest.approx(0.06)
    assert found["rel_lift"] is None and found["rel_ci_low"] is None and found["rel_ci_high"] is None
    assert lift(0, 50, 4, 50)["rel_lift"] == pytest.approx(-1) and lift(0, 50, 4, 50)["rel_ci_low"] is None


def test_holm_adjusts_step_down() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]))
    assert holm([]) == []


def test_sample_ratio_mismatch_is_a_chi_square_against_the_planned_shares() -> None:
    lost = sample_ratio(
        {"control": 100, "urgent": 100, "friendly": 40}, {"control": 1 / 3, "urgent": 1 / 3, "friendly": 1 / 3}
    )
    # expected 80 each: (20^2 + 20^2 + 40^2) / 80 = 30 on 2 degrees of freedom, p = exp(-15)
    assert lost["chi2"] == pytest.approx(30.0)
    assert lost["p_value"] == pytest.approx(math.exp(-15), rel=1e-9)
    assert lost["flagged"] and lost["expected"] == {"control": 80.0, "urgent": 80.0, "friendly": 80.0}
    weighted = sample_ratio({"control": 205, "urgent": 95}, {"control": 2 / 3, "urgent": 1 / 3})
    assert weighted["chi2"] == pytest.approx((5**2 / 200) + (5**2 / 100)) and not weighted["flagged"]


def test_the_minimum_detectable_effect_has_80_percent_power() -> None:
    n, baseline = 1000, 0.10
    h = (Z + norm.ppf(0.80)) * math.sqrt(2 / n)  # Cohen's h for two equal arms
    by_hand = math.sin(math.asin(math.sqrt(baseline)) + h / 2) ** 2 - baseline
    mde = minimum_detectable_effect(n, n, baseline)
    assert mde == pytest.approx(by_hand, rel=1e-3)
    effect = 2 * math.asin(math.sqrt(baseline + mde)) - 2 * math.asin(math.sqrt(baseline))
    assert NormalIndPower().power(effect, nobs1=n, alpha=0.05, ratio=1.0) == pytest.approx(0.80, abs=1e-5)
    assert not underpowered(mde, baseline)  # about 4 points over 10%: less than half of it
    small = minimum_detectable_effect(60, 59, 0.05)
    assert small is not None and small > 0.05 and underpowered(small, 0.05)
    assert minimum_detectable_effect(5, 5, 0.98) is None and underpowered(None, 0.98)


def frame(cells: dict[str, dict[str, tuple[int, int]]]) -> pd.DataFrame:
    """One row per customer: cells[arm][metric] = (successes, n), all arms with the same n per metric."""
    rows = []
    for arm, metrics in cells.items():
        n = max(total for _, total in metrics.values())
        for i in range(n):
            row = {"customer_id": f"{arm}-{i}", "segment": "s", "arm": arm, "present": True, "delivered_variant": ""}
            for metric, (s, total) in metrics.items():
                row[metric] = float(i < s) if i < total else float("nan")
            rows.append(row)
    return pd.DataFrame(rows)


def test_every_arm_and_metric_against_control_is_one_holm_family() -> None:
    cells = {
        "control": {"opened": (40, 200), "clicked": (8, 200)},
        "urgent": {"opened": (70, 200), "clicked": (20, 200)},
        "friendly": {"opened": (45, 200), "clicked": (9, 200)},
    }
    found = comparisons(frame(cells))
    assert [(c["metric"], c["arm"], c["control"]) for c in found] == [
        ("opened", "urgent", "control"),
        ("opened", "friendly", "control"),
        ("clicked", "urgent", "control"),
        ("clicked", "friendly", "control"),
    ]
    raw = [pooled_z_p_value(cells[c["arm"]][c["metric"]][0], 200, cells["control"][c["metric"]][0], 200) for c in found]
    assert [c["p_value"] for c in found] == pytest.approx(raw)
    assert [c["p_holm"] for c in found] == pytest.approx(list(multipletests(raw, method="holm")[1]))
    assert [c["significant"] for c in found] == [p < 0.05 for p in multipletests(raw, method="holm")[1]]
    assert found[0]["significant"] and found[0]["p_holm"] == pytest.approx(4 * found[0]["p_value"])
    # 10% against 4% clicks: p = 0.019 alone, but 0.056 as the second smallest of four (times 3): not significant
    assert found[2]["p_value"] < 0.05 and found[2]["p_holm"] == pytest.approx(3 * found[2]["p_value"])
    assert not found[2]["significant"]


def test_conversions_are_also_compared_with_the_holdout() -> None:
    cells = {
        "holdout": {"converted": (2, 100)},
        "control": {"converted": (6, 100), "opened": (30, 100)},
        "urgent": {"converted": (7, 100), "opened": (31, 100)},
    }
    pairs = [(c["metric"], c["arm"], c["control"]) for c in comparisons(frame(cells))]
    assert pairs == [
        ("opened", "urgent", "control"),
        ("converted", "urgent", "control"),
        ("converted", "control", "holdout"),
        ("converted", "urgent", "holdout"),
    ]


def test_a_significant_rise_in_unsubscribes_overrides_a_winner() -> None:
    cells = {
        "control": {"clicked": (10, 400), "unsubscribed": (1, 400)},
        "urgent": {"clicked": (40, 400), "unsubscribed": (25, 400)},
    }
    result = analyze(frame(cells), shares={"control": 0.5, "urgent": 0.5})
    assert result["guardrail"]["tripped"] and result["guardrail"]["arms"] == ["urgent"]
    assert result["verdict"]["status"] == "guardrail" and result["verdict"]["winner"] is None
    assert "Do not roll out urgent" in result["verdict"]["text"]
    calm = analyze(frame({k: {"clicked": v["clicked"]} for k, v in cells.items()}), shares={"control": 1, "urgent": 1})
    assert calm["verdict"]["status"] == "winner" and calm["verdict"]["winner"] == "urgent"
    assert calm["verdict"]["text"].startswith("urgent beat control on click rate: 10.0% against 2.5%, +7.5 points")
    assert not calm["guardrail"]["measured"]


def test_no_detectable_difference_is_said_so_with_the_power_warning() -> None:
    cells = {"control": {"clicked": (3, 60)}, "urgent": {"clicked": (4, 60)}}
    result = analyze(frame(cells), shares={"control": 0.5, "urgent": 0.5}, simulated=True)
    assert result["verdict"]["status"] == "no_detectable_difference"
    assert result["verdict"]["text"].startswith("Simulated data: No detectable difference")
    (power,) = result["mde"]
    assert power["underpowered"] and power["warning"].startswith("underpowered: with 60 and 60 customers, only a lift")
    assert result["srm"]["observed"] == {"control": 60, "urgent": 60} and not result["srm"]["flagged"]


def test_a_sample_ratio_mismatch_comes_before_any_winner() -> None:
    cells = {"control": {"clicked": (10, 400)}, "urgent": {"clicked": (40, 200)}}
    result = analyze(frame(cells), shares={"control": 0.5, "urgent": 0.5})
    assert result["srm"]["flagged"] and result["verdict"]["status"] == "sample_ratio_mismatch"
    assert result["verdict"]["winner"] is None and result["verdict"]["text"].startswith("Do not trust")


def test_more_bounces_or_unsubscribes_are_never_a_win() -> None:
    cells = {"control": {"bounced": (8, 400)}, "urgent": {"bounced": (40, 400)}}
    result = analyze(frame(cells), shares={"control": 0.5, "urgent": 0.5}, primary="bounced")
    assert result["verdict"]["status"] == "worse" and result["verdict"]["worse"] == ["urgent"]
    fewer = analyze(
        frame({"control": cells["urgent"], "urgent": cells["control"]}),
        shares={"control": 1, "urgent": 1},
        primary="bounced",
    )
    assert fewer["verdict"]["winner"] == "urgent" and "-8.0 points" in fewer["verdict"]["text"]


def test_the_guardrail_trips_on_the_unadjusted_p_value() -> None:
    cells = {
        "control": {"clicked": (20, 1000), "opened": (200, 1000), "unsubscribed": (3, 1000)},
        "urgent": {"clicked": (60, 1000), "opened": (210, 1000), "unsubscribed": (11, 1000)},
    }
    result = analyze(frame(cells), shares={"control": 0.5, "urgent": 0.5})
    (unsub,) = [c for c in result["comparisons"] if c["metric"] == "unsubscribed"]
    assert unsub["p_value"] < 0.05 and not unsub["significant"]  # p = 0.032 raw, 0.064 after Holm (x2)
    assert result["guardrail"]["tripped"] and result["verdict"]["status"] == "guardrail"


def test_a_relative_interval_with_only_events_in_both_arms_is_undefined() -> None:
    found = lift(40, 40, 39, 39)
    assert found["rel_lift"] == pytest.approx(0) and found["rel_ci_low"] is None and found["rel_ci_high"] is None
