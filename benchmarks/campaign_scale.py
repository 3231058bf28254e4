"""How `cpo run` scales with the number of customers: the real command, end to end, offline model.

For each size it generates N fictional customers with scripts/make_customers.py (seeded), runs
`cpo run --customers FILE --out DIR` in a fresh process with no credentials (the offline drafting
model writes the 20 emails: one per segment x arm, whatever N is), and prints the wall time, the
peak resident memory of the `cpo run` process, the stage timings from its run.json and the size of
what it wrote. Nothing is asserted: the figures are printed for the README.

Usage: python benchmarks/campaign_scale.py [--customers 10000 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("load_segment", "retrieve", "generate", "screen", "review", "assign", "export")


def clean_env(work: Path) -> dict[str, str]:
    """No credentials (the offline model), and everything the run writes stays in `work`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_OPENAI_", "OPENAI_", "CPO_"))}
    env["CPO_ID_KEY_FILE"] = str(work / "id-key")
    return env


def run_once(count: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        customers = work / "customers.csv"
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "make_customers.py"), "--count", str(count),
             "--out", str(customers)],
            check=True, capture_output=True,
        )  # fmt: skip
        cli = Path(sys.executable).parent / "cpo"
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        started = time.perf_counter()
        done = subprocess.run(
            [str(cli), "run", "--customers", str(customers), "--out", str(work / "runs")],
            env=clean_env(work), cwd=work, capture_output=True, text=True,
        )  # fmt: skip
        wall = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if done.returncode != 0:
            sys.exit(f"cpo run failed ({done.returncode}): {done.stderr.strip()[-400:]}")
        (run_dir,) = [p for p in (work / "runs").iterdir() if p.is_dir()]
        record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        written = sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file())
        return {
            "customers": count,
            "file_mb": customers.stat().st_size / 1e6,
            "wall_s": wall,
            "peak_rss_mb": peak / 1024 if peak > before else None,  # max over children: only a new peak is ours
            "stages": record["stage_seconds"],
            "written_mb": written / 1e6,
            "eligible": record["counts"]["total"] - record["counts"]["no_consent"] - record["counts"]["suppressed"],
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, nargs="+", default=[10_000, 1_000_000])
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; `cpo run` with the offline model")
    for count in sorted(args.customers):
        r = run_once(count)
        stages = r["stages"]
        assert isinstance(stages, dict)
        data_stages = sum(float(stages[s]) for s in ("load_segment", "assign", "export"))
        peak = r["peak_rss_mb"]
        print(
            f"{count:>9} customers ({r['file_mb']:.0f} MB CSV, {r['eligible']} eligible): cpo run {r['wall_s']:.2f} s "
            f"wall, peak RSS {'n/a' if peak is None else f'{peak:.0f} MB'}; wrote {r['written_mb']:.0f} MB"
        )
        print("           stages: " + ", ".join(f"{s} {float(stages[s]):.2f} s" for s in STAGES if s in stages))
        print(f"           load + segment + assign + export: {data_stages:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
