"""How the campaign pipeline's data stages scale: load, segment, assign and export for N customers.

Generates N fictional customers with scripts/make_customers.py (seeded), then times each stage on them
(the agents in cpo/agents, as the pipeline runs them) and prints the peak resident memory. Email
generation is per segment x arm (20 emails whatever N is), so `--emails` adds it, with the offline
drafting model, through the LangGraph pipeline end to end.

Usage: python benchmarks/campaign_scale.py [--customers 1000000] [--emails]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--emails", action="store_true", help="run the whole graph, emails included (offline)")
    args = parser.parse_args()

    from cpo.agents.assignment import DEFAULT_ARMS, assign_customers
    from cpo.agents.campaign import load_campaign
    from cpo.agents.export import export_campaign
    from cpo.agents.generation import email_requests
    from cpo.agents.load import load_customers
    from cpo.agents.segmentation import segment_customers
    from cpo.chains.email import build_email_chain
    from cpo.content import load_snippets
    from cpo.offline import OfflineChatModel

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        customers = work / "customers.csv"
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "make_customers.py"), "--count", str(args.customers),
             "--out", str(customers)],
            check=True, capture_output=True,
        )  # fmt: skip
        print(f"{args.customers} customers generated in {time.perf_counter() - started:.1f} s "
              f"({customers.stat().st_size / 1e6:.0f} MB)")  # fmt: skip

        if args.emails:
            from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

            from cpo.pipeline import Tools, build_pipeline

            async def run() -> None:
                async with AsyncSqliteSaver.from_conn_string(str(work / "checkpoints.sqlite")) as saver:
                    graph = build_pipeline(Tools(build_email_chain(OfflineChatModel()), []), saver)
                    inputs = {"customers": str(customers), "campaign": None, "suppress": None, "seed": 7,
                              "run_dir": str(work)}  # fmt: skip
                    await graph.ainvoke({"inputs": inputs}, {"configurable": {"thread_id": "bench"}})

            started = time.perf_counter()
            asyncio.run(run())
            print(f"whole pipeline (load, segment, 20 emails offline, assign, export): "
                  f"{time.perf_counter() - started:.2f} s; peak RSS {peak_rss_mb():.0f} MB")  # fmt: skip
            return 0

        snippets = load_snippets()
        campaign = load_campaign(snippets=snippets)
        timings = {}
        started = time.perf_counter()
        loaded = load_customers(customers)
        timings["load"] = time.perf_counter() - started
        started = time.perf_counter()
        segments = segment_customers(loaded, campaign.rules)
        timings["segment"] = time.perf_counter() - started
        started = time.perf_counter()
        assign_customers(loaded, seed=7, weights=campaign.allocation, holdout=campaign.holdout)
        timings["assign"] = time.perf_counter() - started
        variants = build_email_chain(OfflineChatModel()).batch(
            email_requests(segments, campaign, snippets, DEFAULT_ARMS)
        )
        started = time.perf_counter()
        export_campaign(loaded, segments, variants, campaign, work, DEFAULT_ARMS)
        timings["export"] = time.perf_counter() - started
        sizes = {p.name: p.stat().st_size / 1e6 for p in work.glob("*.csv") if p.name != "customers.csv"}
        print("  ".join(f"{stage} {seconds:.2f} s" for stage, seconds in timings.items()))
        print(f"load+segment+assign+export: {sum(timings.values()):.2f} s; peak RSS {peak_rss_mb():.0f} MB; "
              f"{loaded.eligible} eligible of {loaded.total}; files (MB): "
              + ", ".join(f"{k} {v:.1f}" for k, v in sorted(sizes.items())))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
