"""Quota-aware pacing, end to end: `cpo run` against the project's test server limited to a real quota.

Starts `tests/azure_server.py` on loopback with a deployment quota (default 60 requests and 60,000 tokens per
60 s window, enforced as Azure does: a 429 with `retry-after-ms` past it, remaining counts in the headers)
and cpo's offline drafter answering as the model, then runs `cpo run --per-customer` on N customers (one
email each) with CPO_RPM and CPO_TPM set to the quota. Prints the wall time, the requests and 429s the server
saw, the failed emails, and the ratio of the wall time (the whole command: start-up, loading, every email) to
the quota's evenly paced ideal: the larger of requests / RPM and tokens / TPM windows. No network, no key.

Usage: python benchmarks/quota_pacing.py [--customers 200] [--rpm 60] [--tpm 60000] [--window 60]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from azure_server import AzureTestServer, Quota, email_drafter  # noqa: E402
from campaign_scale import clean_env  # noqa: E402

KEY = "benchmark-key"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--rpm", type=int, default=60)
    parser.add_argument("--tpm", type=int, default=60_000)
    parser.add_argument("--window", type=float, default=60.0, help="the quota's window in seconds [60]")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, AzureTestServer(port=0, api_key=KEY) as server:
        work = Path(tmp)
        with (ROOT / "data" / "customers.csv").open(encoding="utf-8", newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if r["email_opt_in"] == "true"][: args.customers]
        customers = work / "customers.csv"
        with customers.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        server.quota = Quota(requests=args.rpm, tokens=args.tpm, window_s=args.window)
        server.responder = email_drafter
        env = clean_env(work) | {
            "AZURE_OPENAI_ENDPOINT": server.endpoint,
            "AZURE_OPENAI_DEPLOYMENT_NAME": "gpt-4o-mini",
            "AZURE_OPENAI_API_KEY": KEY,
            "CPO_RPM": str(args.rpm),
            "CPO_TPM": str(args.tpm),
            "CPO_QUOTA_WINDOW": str(args.window),
            "CPO_EMAIL_DEADLINE": str(max(120.0, 4 * args.window + 2 * args.customers * args.window / args.rpm)),
        }
        command = [str(Path(sys.executable).parent / "cpo"), "run", "--per-customer", "--customers", str(customers)]
        started = time.perf_counter()
        done = subprocess.run([*command, "--out", str(work / "runs")], env=env, cwd=work, capture_output=True,
                              text=True, check=False)  # fmt: skip
        wall = time.perf_counter() - started
        (run_dir,) = [p for p in (work / "runs").iterdir() if p.is_dir()]
        costs = json.loads((run_dir / "costs.json").read_text(encoding="utf-8"))
        answered = [b for b in server.billed if b["status"] == 200]
        tokens = sum(int(r.get("max_tokens") or r.get("max_completion_tokens") or 0) for r in server.requests) + sum(
            b["prompt_tokens"] or 0 for b in answered
        )
        ideal = max(len(answered) / args.rpm, tokens / args.tpm) * args.window  # exactly at the quota, evenly
    print(f"customers: {len(rows)}, quota {args.rpm} requests and {args.tpm:,} tokens per {args.window:g} s")
    print(f"cpo run exit code: {done.returncode}; failed emails: {len(costs.get('errors') or [])}")
    print(f"requests answered: {len(answered)}, 429s: {server.quota.throttled}, tokens counted: {tokens:,}")
    print(f"wall time {wall:.1f} s, evenly paced ideal {ideal:.1f} s: ratio {wall / ideal:.3f} (bar 1.15)")
    if done.returncode != 0:
        print(done.stderr.strip()[-600:], file=sys.stderr)
    return 0 if done.returncode == 0 and wall / ideal <= 1.15 else 1


if __name__ == "__main__":
    os.environ.pop("CPO_RPM", None)
    sys.exit(main())
