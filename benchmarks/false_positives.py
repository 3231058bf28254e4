"""The analysis's calibration: with no effect, how often does `cpo analyze` declare a difference?

Runs `cpo run` offline on the sample (or on N generated customers, scripts/make_customers.py), then simulates
outcomes with no effect, seed 1..RUNS (`cpo.campaign.analysis.false_positive_share`), and prints the share of
simulations in which any comparison of the Holm family is significant, beside the share with any unadjusted
p < 0.05 (what a per-arm test without correction would have claimed) and the share whose unsubscribe
guardrail tripped (it reads unadjusted p-values on purpose: the price is these false alarms). The issue's
bar: at most 7% over 200 for the Holm family.

Usage: python benchmarks/false_positives.py [--customers N] [--runs 200]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from campaign_scale import clean_env  # noqa: E402

from cpo.campaign.agents.experiment import comparisons, guardrail  # noqa: E402
from cpo.campaign.agents.simulation import SimulationRates  # noqa: E402
from cpo.campaign.analysis import false_positive_share, run_customers, simulated_frame  # noqa: E402


def unadjusted_and_guardrail_shares(run_dir: Path, runs: int) -> tuple[float, float]:
    """Shares of no-effect runs with any unadjusted p < 0.05, and with the unsubscribe guardrail tripped."""
    frame, raw, tripped = run_customers(run_dir), 0, 0
    for seed in range(1, runs + 1):
        found = comparisons(simulated_frame(frame, SimulationRates(), seed), intervals=False)
        raw += any(c["p_value"] < 0.05 for c in found)
        tripped += guardrail(found)["tripped"]
    return raw / runs, tripped / runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=0, help="generated customers [0: the 250-customer sample]")
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        command = [str(Path(sys.executable).parent / "cpo"), "run", "--out", str(work / "runs")]
        if args.customers:
            customers = work / "customers.csv"
            subprocess.run(
                [sys.executable, str(ROOT / "scripts" / "make_customers.py"), "--count", str(args.customers),
                 "--out", str(customers)],
                check=True, capture_output=True,
            )  # fmt: skip
            command += ["--customers", str(customers)]
        done = subprocess.run(command, env=clean_env(work), cwd=work, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"cpo run failed ({done.returncode}): {done.stderr.strip()[-400:]}")
        (run_dir,) = [p for p in (work / "runs").iterdir() if p.is_dir()]
        started = time.perf_counter()
        holm_share = false_positive_share(run_dir, args.runs)
        seconds = time.perf_counter() - started
        raw_share, guardrail_share = unadjusted_and_guardrail_shares(run_dir, args.runs)
        family = len(comparisons(simulated_frame(run_customers(run_dir), SimulationRates(), 1), intervals=False))
    print(f"customers: {'sample (250)' if not args.customers else args.customers}, simulations: {args.runs}, "
          f"comparisons per run: {family}")  # fmt: skip
    print(f"runs declaring any significant difference, Holm-adjusted: {100 * holm_share:.1f}% (bar: 7%)")
    print(f"runs with any unadjusted p < 0.05 (no correction):        {100 * raw_share:.1f}%")
    print(f"runs whose unsubscribe guardrail tripped (a rise at unadjusted p < 0.05): {100 * guardrail_share:.1f}%")
    print(f"seconds for the {args.runs} Holm-adjusted analyses: {seconds:.1f}")
    return 0 if holm_share <= 0.07 else 1


if __name__ == "__main__":
    sys.exit(main())
