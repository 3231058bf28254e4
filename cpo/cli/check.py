"""`cpo check`: does the endpoint answer, which structured-output method works, does it run calls in parallel.

Each probe is a handful of tiny calls (billed like any other, and recorded in the ledger). What it
learns is kept in the endpoint notes, so `cpo run` starts with the method that works and can warn
when `--concurrency` is more than the server will run at once.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from langchain_core.runnables import RunnableConfig

from cpo.cli.output import say
from cpo.core.errors import ExitCode
from cpo.llm.endpoints import EndpointNotes, endpoint_key
from cpo.llm.parallelism import NotMeasurable, measure_parallelism


def check_endpoint(
    say: Callable[[str], Any], *, notes: EndpointNotes, settings: Any, callbacks: list[Any] | None = None
) -> int:
    """Connection, structured-output method and parallelism, one line each; 0 if all answered. With a
    deployments file, each deployment is checked the same way, and the check fails if any one does."""
    from cpo.llm.factory import build_chat_model, model_source

    model = build_chat_model(settings)
    if model_source(model) == "offline":
        say(
            "❌ no LLM endpoint is configured: set AZURE_OPENAI_ENDPOINT, AZURE_OPENAI_API_KEY and "
            "AZURE_OPENAI_DEPLOYMENT_NAME (or OPENAI_BASE_URL and CPO_MODEL_NAME); until then cpo uses its "
            "offline drafting model"
        )
        return ExitCode.FAILED
    members = getattr(model, "members", None)
    if not members:
        return (
            ExitCode.OK
            if _check_model(say, model, settings.describe(), notes, settings, callbacks)
            else ExitCode.FAILED
        )
    methods: dict[str, str | None] = {}
    for member in members:
        say(f"deployment {member.name}:")
        methods[member.name] = _check_model(
            lambda line: say("  " + line), member.model, member.entry.describe(), notes, settings, callbacks
        )
    failed = [name for name, method in methods.items() if method is None]
    if failed:
        say(f"❌ {len(failed)} of {len(members)} deployments failed the check: {', '.join(failed)}")
        return ExitCode.FAILED
    # What `cpo run` reads for the pool: the method every deployment took, and whether all run calls in parallel.
    pooled: dict[str, Any] = {"parallel": all(notes.get(endpoint_key(m.model), "parallel") for m in members)}
    if len(set(methods.values())) == 1:
        pooled["method"] = next(iter(methods.values()))
    notes.note(endpoint_key(model), **pooled)
    say(f"✅ all {len(members)} deployments answered")
    return ExitCode.OK


def _check_model(
    say: Callable[[str], Any], model: Any, described: str, notes: EndpointNotes, settings: Any, callbacks: Any
) -> str | None:
    """One endpoint's three checks; the structured-output method that worked, or None if a check failed."""
    from cpo.email.chain import build_email_chain
    from cpo.net.faults import one_line

    config: RunnableConfig = {"callbacks": callbacks or [], "run_name": "cpo check"}
    key = endpoint_key(model)
    try:
        reply = model.bind(max_tokens=20).invoke("Say 'Connection successful'", config)
    except Exception as exc:  # every failure becomes one line: that is the point of a check
        say(f"❌ {described}: {one_line(exc)}")
        return None
    served_by = reply.response_metadata.get("model_name") or "model not reported"
    say(f"✅ {described} answered ({served_by}): {' '.join(str(reply.content).split())[:80]}")

    chain = build_email_chain(model, settings=settings, notes=notes, offline_fallback=False)
    before = chain.method
    try:
        method = chain.probe_method(config)
    except Exception as exc:
        say(f"❌ structured output: no method worked ({one_line(exc)})")
        return None
    tried = "" if method == before else f" ({before} refused)"
    say(f"✅ structured output: {method}{tried}; remembered for this endpoint")

    try:
        measured = asyncio.run(measure_parallelism(model, config))
    except NotMeasurable as exc:
        say(f"ℹ️ parallelism not measured: {exc}")
        return str(method)
    except Exception as exc:
        say(f"❌ parallelism not measured: {one_line(exc)}")
        return None
    notes.note(key, parallel=measured.parallel, pair_ratio=round(measured.ratio, 2))
    say(f"{'✅' if measured.parallel else 'ℹ️'} {measured.describe()}")
    if not measured.parallel:
        say("   use `cpo run --concurrency 1` with this endpoint: queued requests wait and can time out")
    return str(method)


def cmd_check(args: argparse.Namespace) -> int:
    from cpo.accounting.ledger import Ledger
    from cpo.accounting.pricing import price_book_for
    from cpo.accounting.tracker import CostTracker
    from cpo.core.settings import Settings
    from cpo.llm.endpoints import FILE_NAME, EndpointNotes

    settings = Settings()
    runs_dir: Path = args.out or settings.runs_dir
    tracker = CostTracker(prices=price_book_for(settings), default_model=settings.model_name)
    if settings.provider != "offline":
        path = settings.ledger_file(args.out)
        if path is not None:
            tracker.use_ledger(Ledger(path), session_name=args.session_name)
    try:
        return check_endpoint(say, notes=EndpointNotes(runs_dir / FILE_NAME), settings=settings, callbacks=[tracker])
    finally:
        tracker.close()
