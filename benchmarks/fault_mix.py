"""Fault injection, end to end: `cpo run` against the project's test server answering with a seeded mix of faults.

The server (`tests/azure_server.py`) answers cpo's email prompts like a good model, except that, drawn from the
seed for each request body and attempt (`tests/fault_injection.py`), half of its answers are one of: a 429 with
retry-after, a 500, a 503, a hang past the client's timeout, a trickled answer, a connection reset, malformed
JSON, a `length` finish, a `content_filter` finish, or Azure's 400 content filter. It bills what Azure would,
including the answers the client abandoned (hangs, resets). Two scenarios, each `cpo run --per-customer` on N
customers described in different words (so no two emails share a request):

1. one uninterrupted run;
2. a run killed with SIGKILL once 40% of its emails are kept, then `cpo run --resume`.

For each it prints the requests, the faults by kind, the emails produced and failed, the tokens billed against
those tracked in the ledger and the calls of unknown cost, the wall time; then checks that every email is
produced or failed with its reason, billed = tracked + the abandoned answers (one call of unknown cost each),
no request is sent again after an answer asking again cannot change, and the resumed run asks again for no kept
email. Exit code 1 if any of that fails. No network, no key.

Usage: python benchmarks/fault_mix.py [--customers 500] [--kill-customers 500] [--seed 1] [--timeout 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fault_injection import Campaign, Outcome, figures, problems  # noqa: E402


def report(title: str, outcome: Outcome) -> bool:
    """Print the scenario's figures and broken invariants; True when none broke."""
    found = problems(outcome)
    print(f"== {title}")
    print("\n".join(figures(outcome)))
    print("invariants: " + ("all hold" if not found else f"{len(found)} broken"))
    for line in found:
        print(f"  BROKEN: {line}")
    return not found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=500, help="customers of the uninterrupted run [500]")
    parser.add_argument("--kill-customers", type=int, default=500, help="customers of the killed run [500]")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=2.0, help="CPO_LLM_TIMEOUT, seconds [2]")
    parser.add_argument("--concurrency", type=int, default=16, help="cpo run --concurrency [16]")
    args = parser.parse_args()
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores; seed {args.seed}, CPO_LLM_TIMEOUT={args.timeout:g}, "
        f"--concurrency {args.concurrency}"
    )
    ok = True
    for title, customers, killed in (
        ("one run", args.customers, False),
        ("killed with SIGKILL mid-way, then --resume", args.kill_customers, True),
    ):
        with tempfile.TemporaryDirectory() as tmp:
            campaign = Campaign(
                Path(tmp), customers, seed=args.seed, timeout_s=args.timeout, concurrency=args.concurrency
            )
            with campaign:
                ok &= report(title, campaign.run_killed() if killed else campaign.run())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
