"""The experiment's statistics, each from statsmodels or scipy: nothing here re-derives what they provide.

Rates get Wilson 95% intervals; an arm against its baseline gets the absolute lift with Newcombe's interval and
the relative lift with a log-scale (delta-method) interval (`confint_proportions_2indep`), a two-sided
two-proportion z-test with pooled variance, Holm-adjusted p-values across the run's family of comparisons, the
minimum detectable effect at 80% power, and a chi-square sample-ratio test. Inputs are counts, so each function
can be checked by hand.
"""

from __future__ import annotations

import gc
import math
import warnings
from collections.abc import Sequence
from typing import Any

ALPHA = 0.05
POWER = 0.80
SRM_ALPHA = 0.001  # a sample-ratio mismatch is flagged only when this unlikely by chance (the usual practice)
# A test is called underpowered when the smallest lift it detects 80% of the time is more than half the
# baseline rate: email tests rarely move a rate by half, so such a test can mostly say "no detectable difference".
UNDERPOWERED_RELATIVE = 0.5


def _finite(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


def rate(successes: int, n: int) -> dict[str, Any]:
    """n, successes, rate and its Wilson 95% interval (None for an empty arm: no rate to state)."""
    from statsmodels.stats.proportion import proportion_confint

    if n == 0:
        return {"n": 0, "successes": 0, "rate": None, "ci_low": None, "ci_high": None}
    low, high = proportion_confint(successes, n, alpha=ALPHA, method="wilson")
    return {"n": n, "successes": successes, "rate": successes / n, "ci_low": float(low), "ci_high": float(high)}


def pooled_z_p_value(s1: int, n1: int, s0: int, n0: int) -> float:
    """Two-sided two-proportion z-test with pooled variance (= chi-square without continuity correction).

    When the pooled rate is 0 or 1 (no events in either arm, or only events) the arms cannot differ: p = 1."""
    from statsmodels.stats.proportion import proportions_ztest

    if n1 == 0 or n0 == 0 or s1 + s0 in (0, n1 + n0):
        return 1.0
    _, p = proportions_ztest([s1, s0], [n1, n0], value=0, alternative="two-sided", prop_var=False)
    return float(p)


def lift(s1: int, n1: int, s0: int, n0: int) -> dict[str, float | None]:
    """Arm (1) against baseline (0): absolute lift with a 95% interval, relative lift with a log-scale interval.

    The relative lift needs a baseline rate above 0, and its log interval events in both arms and not only
    events in both (its variance is then 0): otherwise None."""
    from statsmodels.stats.proportion import confint_proportions_2indep

    out: dict[str, float | None] = dict.fromkeys(
        ("abs_lift", "abs_ci_low", "abs_ci_high", "rel_lift", "rel_ci_low", "rel_ci_high")
    )
    if n1 == 0 or n0 == 0:
        return out
    p1, p0 = s1 / n1, s0 / n0
    low, high = confint_proportions_2indep(s1, n1, s0, n0, compare="diff", alpha=ALPHA)
    out.update(abs_lift=p1 - p0, abs_ci_low=_finite(low), abs_ci_high=_finite(high))
    if s0 > 0:
        out["rel_lift"] = p1 / p0 - 1
    if s1 > 0 and s0 > 0 and (s1 < n1 or s0 < n0):  # all events in both arms: the log interval has no width
        low, high = confint_proportions_2indep(s1, n1, s0, n0, compare="ratio", method="log", alpha=ALPHA)
        out.update(rel_ci_low=_finite(float(low) - 1), rel_ci_high=_finite(float(high) - 1))
    return out


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (step-down; controls the chance of any false positive in the family)."""
    from statsmodels.stats.multitest import multipletests

    if not p_values:
        return []
    gc.freeze()  # statsmodels' Holm runs gc.collect(): over a frozen heap it takes microseconds, not ~60 ms
    try:
        return [float(p) for p in multipletests(list(p_values), alpha=ALPHA, method="holm")[1]]
    finally:
        gc.unfreeze()


def sample_ratio(observed: dict[str, int], shares: dict[str, float]) -> dict[str, Any]:
    """Chi-square test of the arm sizes against the planned shares (renormalised over the arms observed).

    Flagged at p < 0.001. With balanced assignment the planned sizes are met almost exactly, so a flag means
    customers were lost unevenly between assignment and the outcome data."""
    from scipy.stats import chisquare

    arms = [a for a in observed if shares.get(a, 0) > 0]
    total, weight = sum(observed[a] for a in arms), sum(shares[a] for a in arms)
    expected = {a: total * shares[a] / weight for a in arms} if weight else {}
    if len(arms) < 2 or total == 0:
        return {"chi2": None, "p_value": None, "flagged": False, "observed": observed, "expected": expected,
                "alpha": SRM_ALPHA}  # fmt: skip
    chi2, p = chisquare([observed[a] for a in arms], [expected[a] for a in arms])
    p_value = float(p)
    return {
        "chi2": float(chi2),
        "p_value": p_value,
        "flagged": p_value < SRM_ALPHA,
        "observed": {a: observed[a] for a in arms},
        "expected": expected,
        "alpha": SRM_ALPHA,
    }


def minimum_detectable_effect(n_arm: int, n_baseline: int, baseline: float) -> float | None:
    """The smallest absolute rise over `baseline` a two-sided test at alpha 0.05 detects with 80% power.

    statsmodels solves for Cohen's h; h is turned back into a rate (arcsine scale). None when an arm is empty
    or when no rate up to 100% would be detected (the test can detect nothing)."""
    from statsmodels.stats.power import NormalIndPower

    if n_arm < 2 or n_baseline < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # statsmodels warns on its bracketing for tiny samples; the result holds
        h = float(
            NormalIndPower().solve_power(
                effect_size=None, nobs1=n_baseline, alpha=ALPHA, power=POWER, ratio=n_arm / n_baseline
            )
        )
    angle = math.asin(math.sqrt(baseline)) + h / 2
    if angle >= math.pi / 2:
        return None
    return math.sin(angle) ** 2 - baseline


def underpowered(mde: float | None, baseline: float) -> bool:
    """True when the test detects only a lift of more than half the baseline rate (or nothing at all)."""
    return mde is None or baseline <= 0 or mde > UNDERPOWERED_RELATIVE * baseline
