"""Throughput and per-call overhead of the email chain against the loopback Azure test server.

Scenario A: N emails (default 96) through `chain.batch(..., max_concurrency=C)` (default 16) with the
server sleeping L seconds (default 0.3) before every answer. The server's responder drafts a valid
email from the request's own prompt (cpo.llm.offline.read_brief + draft_email), so each email is valid
on its first call and the run is bound by latency and client overhead only. The ideal wall time is
ceil(N / C) waves x L; efficiency = ideal / actual, PASS if efficiency >= 0.85.

Scenario B: per-email cost at zero server latency, emails sent one at a time (max_concurrency=1):
mean wall ms per email, the mean server-side handling time (measured inside the server), and the
difference, which is the client-side overhead (cpo + langchain + openai SDK + httpx). The offline
model (no endpoint, no HTTP) is measured the same way as a reference.

In scenario A the server runs in its own process by default, as a real endpoint would; with
--in-process it runs in threads here (its CPU work then shares the GIL with the client) and the
server-side timings are printed too. Scenario B always runs it in-process, to time it.

With --ledger every CostTracker writes to a cost ledger (a new SQLite file in a temporary directory), as
`cpo run` does: each call's start row is committed before the call is sent. The ledger is flushed after
each run, outside the timing.

Usage: python benchmarks/concurrency.py [--emails 96] [--concurrency 16] [--latency 0.3] [--repeat 3]
       [--sequential 200] [--profile] [--skip-a] [--skip-b] [--in-process] [--ledger]
Exit code 1 if scenario A misses the 0.85 efficiency target (best of the repeats).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import math
import os
import platform
import pstats
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

# A developer's environment must not redirect the benchmark (same rule as tests/conftest.py).
for _var in list(os.environ):
    if _var.startswith(("AZURE_OPENAI_", "OPENAI_", "CPO_")):
        del os.environ[_var]

from azure_server import AzureTestServer, Reply, email_drafter  # noqa: E402
from langchain_core.runnables import Runnable  # noqa: E402

from cpo import ContentBundle, CostTracker, EmailRequest, EmailVariant, Settings, build_email_chain  # noqa: E402
from cpo.accounting.ledger import Ledger  # noqa: E402
from cpo.core.models import TONES  # noqa: E402

DEPLOYMENT = "gpt-4o-mini"
API_KEY = "test-key"
TARGET_EFFICIENCY = 0.85
WARMUP = 4


class TimedServer(AzureTestServer):
    """The test server, timing each request's handling (`_handle`: body read to response written)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(responder=self._respond, **kwargs)
        self._times_lock = threading.Lock()
        self.handle_s: list[float] = []
        self.respond_s: list[float] = []
        self.events: list[tuple[Any, float, float]] = []  # (client address, handling start, end)

    def _respond(self, request: dict[str, Any]) -> Reply | None:
        started = time.perf_counter()
        try:
            return email_drafter(request)
        finally:
            elapsed = time.perf_counter() - started
            with self._times_lock:
                self.respond_s.append(elapsed)

    def _handle(self, handler: Any) -> None:
        started = time.perf_counter()
        try:
            super()._handle(handler)
        finally:
            ended = time.perf_counter()
            with self._times_lock:
                self.handle_s.append(ended - started)
                self.events.append((handler.client_address, started, ended))

    def clear(self) -> None:
        self.reset()
        with self._times_lock:
            self.handle_s.clear()
            self.respond_s.clear()
            self.events.clear()

    def turnaround_s(self) -> list[float]:
        """Per connection: time from writing a response to starting on that connection's next request."""
        by_client: dict[Any, list[tuple[float, float]]] = {}
        with self._times_lock:
            for client, started, ended in sorted(self.events, key=lambda e: e[1]):
                by_client.setdefault(client, []).append((started, ended))
        return [b[0] - a[1] for spans in by_client.values() for a, b in itertools.pairwise(spans)]


def settings_for(server: AzureTestServer | str | None) -> Settings:
    if server is None:
        return Settings(_env_file=None, ledger_path="off")
    return Settings(
        _env_file=None,
        azure_endpoint=server if isinstance(server, str) else server.endpoint,
        azure_deployment=DEPLOYMENT,
        azure_api_key=API_KEY,
        ledger_path="off",
    )


@contextmanager
def server_process(latency: float) -> Iterator[str]:
    """The test server in its own process, like a real endpoint: its CPU work does not share our GIL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = Path(__file__).resolve().parent.parent / "tests" / "azure_server.py"
    cmd = [sys.executable, str(script), "--port", str(port), "--latency", str(latency), "--draft-emails"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if "listening on" not in line:
            raise RuntimeError(f"test server did not start: {line!r}")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def make_requests(bundle: ContentBundle, count: int) -> list[EmailRequest]:
    """Every segment x tone pair, cycled to `count` requests."""
    pairs = [(segment.name, tone) for segment in bundle.segments for tone in TONES]
    cache = {pair: bundle.request(*pair) for pair in pairs}
    return [cache[pairs[i % len(pairs)]] for i in range(count)]


def run_batch(
    chain: Runnable[EmailRequest, EmailVariant], requests: list[EmailRequest], concurrency: int, ledger: Ledger | None
) -> tuple[float, list[EmailVariant], CostTracker]:
    tracker = CostTracker(ledger=ledger)
    started = time.perf_counter()
    variants = chain.batch(requests, config={"max_concurrency": concurrency, "callbacks": [tracker]})
    wall = time.perf_counter() - started
    if ledger is not None and not ledger.flush():
        raise RuntimeError("the cost ledger did not flush within 30 s")
    return wall, variants, tracker


def check(variants: list[EmailVariant], tracker: CostTracker, expected: int) -> str:
    valid = sum(v.valid for v in variants)
    calls = tracker.session.calls
    status = "ok" if valid == expected and calls == expected else "MISMATCH"
    return f"valid {valid}/{expected}, model calls {calls} ({status})"


def summary(label: str, values: list[float], unit: str = "s", scale: float = 1.0) -> str:
    best, median = min(values), statistics.median(values)
    runs = ", ".join(f"{v * scale:.3f}" for v in values)
    return f"{label}: best {best * scale:.3f} {unit}, median {median * scale:.3f} {unit}  [{runs}]"


@contextmanager
def maybe_profile(enabled: bool, title: str, limit: int = 30) -> Iterator[None]:
    """cProfile the client: this thread plus every thread started meanwhile (langchain runs the model
    call in executor threads), except the test server's handler threads."""
    if not enabled:
        yield
        return
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()
    original_run = threading.Thread.run

    def profiled_run(thread: threading.Thread) -> None:
        target = getattr(thread, "_target", None)
        if getattr(target, "__name__", "") == "process_request_thread":
            original_run(thread)
            return
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            original_run(thread)
        finally:
            profiler.disable()
            with lock:
                profiles.append(profiler)

    main_profiler = cProfile.Profile()
    threading.Thread.run = profiled_run  # type: ignore[method-assign]
    main_profiler.enable()
    try:
        yield
    finally:
        main_profiler.disable()
        threading.Thread.run = original_run  # type: ignore[method-assign]
        out = io.StringIO()
        stats = pstats.Stats(main_profiler, stream=out)
        for profiler in profiles:
            stats.add(profiler)
        stats.strip_dirs().sort_stats("tottime").print_stats(limit)
        print(f"\n--- cProfile, client threads ({len(profiles)} worker threads merged), by tottime: {title} ---")
        print("\n".join(line for line in out.getvalue().splitlines() if line.strip()))


def scenario_a(args: argparse.Namespace, bundle: ContentBundle) -> bool:
    requests = make_requests(bundle, args.emails)
    waves = math.ceil(args.emails / args.concurrency)
    ideal = waves * args.latency
    print(f"\n== Scenario A: {args.emails} emails, max_concurrency={args.concurrency}, server latency {args.latency}s")
    print(f"ideal: {waves} waves x {args.latency}s = {ideal:.3f} s; PASS if wall <= {ideal / TARGET_EFFICIENCY:.3f} s")
    walls: list[float] = []
    if args.in_process:
        with TimedServer(latency=args.latency, api_key=API_KEY) as server:
            chain = build_email_chain(settings=settings_for(server))
            warmup = min(args.concurrency, args.emails)  # also opens the connections the pool will reuse
            run_batch(chain, requests[:warmup], warmup, args.ledger)
            for i in range(args.repeat):
                server.clear()
                wall, variants, tracker = run_batch(chain, requests, args.concurrency, args.ledger)
                walls.append(wall)
                status = check(variants, tracker, args.emails)
                turnaround = server.turnaround_s() or [0.0]
                print(
                    f"run {i + 1}: wall {wall:.3f} s, efficiency {ideal / wall:.2f}, {status}"
                    f", HTTP requests {len(server.requests)}"
                )
                print(
                    f"       server {statistics.fmean(server.handle_s) * 1000:.1f} ms/request incl. latency;"
                    f" client turnaround (response -> next request, same connection)"
                    f" mean {statistics.fmean(turnaround) * 1000:.1f} ms, max {max(turnaround) * 1000:.1f} ms"
                )
    else:
        with server_process(args.latency) as endpoint:
            chain = build_email_chain(settings=settings_for(endpoint))
            warmup = min(args.concurrency, args.emails)
            run_batch(chain, requests[:warmup], warmup, args.ledger)
            for i in range(args.repeat):
                wall, variants, tracker = run_batch(chain, requests, args.concurrency, args.ledger)
                walls.append(wall)
                status = check(variants, tracker, args.emails)
                print(f"run {i + 1}: wall {wall:.3f} s, efficiency {ideal / wall:.2f}, {status}")
    best = min(walls)
    print(summary("wall", walls))
    print(f"efficiency (best): {ideal / best:.2f}   efficiency (median): {ideal / statistics.median(walls):.2f}")
    passed = ideal / best >= TARGET_EFFICIENCY
    print(f"target efficiency >= {TARGET_EFFICIENCY}: {'PASS' if passed else 'FAIL'} (best wall {best:.3f} s)")
    return passed


def run_loop(
    chain: Runnable[EmailRequest, EmailVariant], requests: list[EmailRequest], ledger: Ledger | None
) -> tuple[float, list[EmailVariant], CostTracker]:
    """One email after another with `invoke` in this thread (concurrency 1, no executor)."""
    tracker = CostTracker(ledger=ledger)
    config: Any = {"callbacks": [tracker]}
    started = time.perf_counter()
    variants = [chain.invoke(request, config=config) for request in requests]
    wall = time.perf_counter() - started
    if ledger is not None and not ledger.flush():
        raise RuntimeError("the cost ledger did not flush within 30 s")
    return wall, variants, tracker


def sequential(
    chain: Runnable[EmailRequest, EmailVariant],
    requests: list[EmailRequest],
    repeat: int,
    server: TimedServer | None,
    ledger: Ledger | None,
    on_run: Callable[[int, float, str, float | None, float | None], None],
) -> tuple[list[float], list[float]]:
    per_email: list[float] = []
    server_ms: list[float] = []
    for i in range(repeat):
        if server is not None:
            server.clear()
        wall, variants, tracker = run_loop(chain, requests, ledger)
        mean = wall / len(requests)
        per_email.append(mean)
        handle = respond = None
        if server is not None:
            handle = statistics.fmean(server.handle_s)
            respond = statistics.fmean(server.respond_s)
            server_ms.append(handle)
        on_run(i + 1, mean, check(variants, tracker, len(requests)), handle, respond)
    return per_email, server_ms


def scenario_b(args: argparse.Namespace, bundle: ContentBundle) -> None:
    requests = make_requests(bundle, args.sequential)
    print(f"\n== Scenario B: {args.sequential} emails one at a time (invoke loop), server latency 0")

    def show(run: int, mean: float, status: str, handle: float | None, respond: float | None) -> None:
        line = f"run {run}: {mean * 1000:.2f} ms/email"
        if handle is not None and respond is not None:
            line += (
                f" = server {handle * 1000:.2f} ms (responder {respond * 1000:.2f} ms)"
                f" + client {(mean - handle) * 1000:.2f} ms"
            )
        print(f"{line}, {status}")

    with TimedServer(latency=0.0, api_key=API_KEY) as server:
        chain = build_email_chain(settings=settings_for(server))
        run_loop(chain, requests[:WARMUP], args.ledger)
        with maybe_profile(args.profile, "Azure chain, sequential, latency 0"):
            per_email, server_s = sequential(chain, requests, args.repeat, server, args.ledger, show)
    client = [total - srv for total, srv in zip(per_email, server_s, strict=True)]
    print(summary("total per email", per_email, "ms", 1000))
    print(summary("server handling per email", server_s, "ms", 1000))
    print(summary("client-side overhead per email (total - server)", client, "ms", 1000))

    print("\n-- reference: offline model (build_email_chain() with no endpoint, no HTTP)")
    chain = build_email_chain(settings=settings_for(None))
    run_loop(chain, requests[:WARMUP], args.ledger)
    with maybe_profile(args.profile, "offline chain, sequential"):
        offline, _ = sequential(
            chain,
            requests,
            args.repeat,
            None,
            args.ledger,
            lambda r, m, s, _h, _x: print(f"run {r}: {m * 1000:.2f} ms/email, {s}"),
        )
    print(summary("offline per email", offline, "ms", 1000))


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def header() -> None:
    packages = ("langchain-core", "langchain-openai", "openai", "httpx2", "httpx")
    versions = ", ".join(f"{p} {v}" for p in packages if (v := _version(p)))
    print("cpo concurrency benchmark (loopback Azure test server)")
    print(f"Python {platform.python_version()} ({platform.python_implementation()}), {versions}")
    print(f"os.cpu_count() = {os.cpu_count()}, platform {platform.platform()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=96, help="emails in scenario A (default 96)")
    parser.add_argument("--concurrency", type=int, default=16, help="max_concurrency in scenario A (default 16)")
    parser.add_argument("--latency", type=float, default=0.3, help="server latency in scenario A, s (default 0.3)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats per measurement (default 3)")
    parser.add_argument("--sequential", type=int, default=200, help="emails per run in scenario B (default 200)")
    parser.add_argument("--profile", action="store_true", help="cProfile the client in scenario B")
    parser.add_argument("--skip-a", action="store_true", help="run scenario B only")
    parser.add_argument(
        "--in-process", action="store_true", help="scenario A with the server in this process (adds server timings)"
    )
    parser.add_argument(
        "--ledger", action="store_true", help="every tracker writes to a cost ledger in a temporary directory"
    )
    parser.add_argument("--skip-b", action="store_true", help="run scenario A only")
    args = parser.parse_args(argv)
    if min(args.emails, args.concurrency, args.repeat, args.sequential) < 1 or args.latency < 0:
        parser.error("counts must be >= 1 and latency >= 0")

    header()
    bundle = ContentBundle.load()
    with tempfile.TemporaryDirectory(prefix="cpo-bench-") as tmp:
        args.ledger = Ledger(Path(tmp) / "ledger.sqlite") if args.ledger else None
        try:
            passed = True if args.skip_a else scenario_a(args, bundle)
            if not args.skip_b:
                scenario_b(args, bundle)
        finally:
            if args.ledger is not None:
                args.ledger.flush()
                print(f"\ncost ledger: {ledger_summary(args.ledger)}")
                args.ledger.close()
    return 0 if passed else 1


def ledger_summary(ledger: Ledger) -> str:
    """What the ledger holds after the runs, and what it could not write."""
    calls = sum(int(s["calls"]) for s in ledger.sessions(10**6))
    return f"{calls} calls in {ledger.path.name}, write errors {ledger.errors}"


if __name__ == "__main__":
    sys.exit(main())
