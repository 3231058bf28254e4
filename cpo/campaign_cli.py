"""`cpo run`: set up (or resume) a campaign run directory, drive the graph with progress, print the summary.

The run directory holds everything an audit needs: `run.json` (inputs and their fingerprint, options,
versions, model, stage timings, status), `log.jsonl` (events, customer ids hashed), `variants.json`,
`costs.json`, `segments.csv`, `templates.json`, `assignments.csv`, `send_list.csv`, the per-email
files in `emails/`, the customers' DuckDB file and the graph's checkpoints.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from cpo.errors import InputError
from cpo.pipeline import RUN_FILE, Inputs, check_resume, input_fingerprint, record_audit_head, record_run

INDEX_FILE = "content-index.sqlite"


def content_index(runs_dir: Path | None) -> Any:
    """Azure AI Search when AZURE_SEARCH_ENDPOINT is set (filled by `cpo index`), else the embedded FTS5
    index in the runs directory (in memory when None: a dry run writes nothing), rebuilt whenever the
    approved content changed."""
    import os

    if os.environ.get("AZURE_SEARCH_ENDPOINT", "").strip():
        from cpo.agents.azure_search import AzureSearchIndex

        return AzureSearchIndex.from_env()
    from cpo.pipeline import embedded_index

    return embedded_index(path=None if runs_dir is None else runs_dir / INDEX_FILE)


# Options a resumed run takes from its run.json: changing them would mix emails made two ways.
RECORDED = (
    "customers",
    "config",
    "suppress",
    "seed",
    "render",
    "per_customer",
    "review",
    "prompts",
    "limits",
    "max_repairs",
    "judge",
)
DEFAULTS: dict[str, Any] = {"max_repairs": 2, "judge": False, "seed": 2027}
STAGE_LABELS = {
    "load_segment": "load + segment",
    "retrieve": "retrieve content",
    "generate": "generate emails",
    "screen": "screen",
    "review": "review",
    "assign": "assign arms",
    "export": "export",
}
OUTPUTS = (
    "segments.csv",
    "retrieval.json",
    "variants.json",
    "screening.json",
    "safety_audit.csv",
    "templates.json",
    "assignments.csv",
    "send_list.csv",
    "costs.json",
)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from cpo import __version__

    out = {"cpo": __version__}
    for name in ("langgraph", "langchain-core", "langchain-openai", "openai", "duckdb"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _file(path: Path | None, what: str) -> str | None:
    """The path as given (errors name it as the user wrote it); it must be a file."""
    if path is None:
        return None
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist")
    return str(path)


def _recorded(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise InputError(f"cannot resume {run_dir}: it has no {RUN_FILE} (not a cpo run directory)")
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot resume {run_dir}: {RUN_FILE} is unreadable ({exc})") from None
    return data


def _resume_options(args: argparse.Namespace) -> dict[str, Any]:
    """Fill args from the run's run.json; refuse options that would change what the run was started with."""
    for name in RECORDED:
        if getattr(args, name) not in (None, False):
            flag = "--" + name.replace("_", "-")
            raise InputError(f"--resume goes on with the options in {args.resume / RUN_FILE}; leave out {flag}")
    recorded = _recorded(args.resume)
    options = recorded.get("options", {})
    for name in ("prompts", "limits"):
        setattr(args, name, Path(options[name]) if options.get(name) else None)
    args.max_repairs = options.get("max_repairs", DEFAULTS["max_repairs"])
    args.judge = options.get("judge", DEFAULTS["judge"])
    return recorded


def run_campaign(args: argparse.Namespace, context: Any, *, say: Callable[..., None], console: Any) -> int:
    """The whole `cpo run` command; returns its exit code."""
    from cpo.agents.campaign import load_campaign
    from cpo.resources import bundled

    recorded = _resume_options(args) if args.resume else None
    if recorded is None:
        args.max_repairs = DEFAULTS["max_repairs"] if args.max_repairs is None else args.max_repairs
    ctx = context(args, max_usd=args.max_usd)  # limits, prompts, model and budget are checked before any file
    if recorded is not None:
        run_dir = args.resume
        inputs: Inputs = recorded["inputs"]
        _same_directory(recorded, inputs, run_dir)
        inputs["run_dir"] = str(run_dir)
    else:
        customers = args.customers or bundled("data") / "customers.csv"
        inputs = {
            "customers": _file(customers, "customer file") or "",
            "campaign": _file(args.config, "campaign file"),
            "suppress": _file(args.suppress, "suppression file"),
            "seed": args.seed if args.seed is not None else DEFAULTS["seed"],
            "run_dir": "",
            "render": bool(args.render),
            "per_customer": bool(args.per_customer),
            "review": bool(args.review),
        }
        load_campaign(Path(inputs["campaign"]) if inputs["campaign"] else None)  # one-line error before any file
    fingerprint = input_fingerprint(inputs, args.prompts, args.limits)
    if args.dry_run:
        from cpo.dry_run import dry_run

        return dry_run(inputs, ctx, content_index(None), say=say, console=console)
    if recorded is not None:
        check_resume(run_dir, inputs, fingerprint)
        ctx.tracker.session_id = recorded["session_id"]
    else:
        runs_dir: Path = args.out or ctx.settings.runs_dir
        run_dir = runs_dir / datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        try:
            runs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the runs directory {runs_dir}: {exc.strerror or exc}") from None
        try:
            run_dir.mkdir(exist_ok=False)
        except OSError as exc:
            raise InputError(f"cannot create the run directory {run_dir}: {exc.strerror or exc}") from None
        inputs["run_dir"] = str(run_dir)
    ledger_path = ctx.open_ledger(args.session_name, args.out if recorded is None else run_dir.parent)
    prior = _prior_spend(ctx, recorded)
    meta = _run_meta(args, ctx, inputs, recorded, ledger_path)
    try:
        record_run(run_dir, inputs, fingerprint, **meta, status="running")
    except OSError as exc:
        raise InputError(f"cannot write to {run_dir}: {exc.strerror or exc}") from None
    verb = "resuming" if recorded is not None else "writing to"

    def announce() -> None:  # once the customers loaded: a bad file's error stays the only line
        ctx.announce(args.concurrency)
        say(f"{verb} {run_dir}" + (f"; ledger {ledger_path}" if ledger_path else ""), stderr=True)

    try:
        result = _run(args, ctx, inputs, meta, console, announce)
    except BaseException:
        if recorded is None and not (run_dir / "emails").exists():
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing was produced: leave no half-made run behind
        raise
    finally:
        ctx.tracker.close()
    code = _report(result, ctx, args.strict, prior, say=say, console=console)
    record_run(
        run_dir,
        inputs,
        fingerprint,
        **meta,
        status=result.stopped_by or ("complete" if not result.failures else "complete with failures"),
        exit_code=code,
        stage_seconds=result.timings,
        counts=result.counts,
        finished=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    return code


def _same_directory(recorded: dict[str, Any], inputs: Inputs, run_dir: Path) -> None:
    """Relative input paths mean what they meant where the run started: resume from there."""
    started_in = recorded.get("cwd")
    paths = {"customers": inputs["customers"], "campaign": inputs["campaign"], "suppress": inputs["suppress"]}
    relative = [k for k, v in paths.items() if v and not Path(v).is_absolute()]
    if started_in and relative and Path(started_in).resolve() != Path.cwd().resolve():
        raise InputError(
            f"{run_dir} was started in {started_in} with a relative {relative[0]} path; resume it from there: "
            f"cd {started_in} && cpo run --resume {Path(run_dir).resolve()}"
        )


def _prior_spend(ctx: Any, recorded: dict[str, Any] | None) -> Decimal | None:
    """What the session spent before this resume: it counts against --max-usd."""
    if recorded is None or ctx.tracker.ledger is None:
        return None
    found = ctx.tracker.ledger.session(ctx.tracker.session_id)
    spent = found["cost_usd"] if found else Decimal(0)
    if ctx.tracker.budget is not None and spent is not None:
        ctx.tracker.budget.settled += spent
    return spent if isinstance(spent, Decimal) else None


def _run_meta(
    args: argparse.Namespace, ctx: Any, inputs: Inputs, recorded: dict[str, Any] | None, ledger: Path | None
) -> dict[str, Any]:
    checkpointer = "postgres" if ctx.settings.checkpoint_url else "sqlite"
    if recorded is not None:
        keep = ("run_id", "root_run_id", "session_id", "started", "cwd", "options", "versions", "prompt_versions")
        return {
            **{k: recorded[k] for k in keep if k in recorded},
            "model": ctx.settings.describe(),
            "resumed": [*recorded.get("resumed", []), datetime.now(UTC).isoformat(timespec="seconds")],
            "checkpointer": checkpointer,
            "ledger": str(ledger) if ledger else None,
        }
    from cpo.models import TONES

    return {
        "run_id": Path(inputs["run_dir"]).name,
        "root_run_id": str(uuid.uuid4()),
        "session_id": ctx.tracker.session_id,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "cwd": str(Path.cwd()),
        "options": {
            "prompts": str(args.prompts.resolve()) if args.prompts else None,
            "limits": str(args.limits.resolve()) if args.limits else None,
            "max_repairs": args.max_repairs,
            "judge": bool(args.judge),
        },
        "versions": _versions(),
        "prompt_versions": {tone: ctx.chain.prompts.version(tone) for tone in TONES},
        "model": ctx.settings.describe(),
        "source": ctx.source,
        "checkpointer": checkpointer,
        "ledger": str(ledger) if ledger else None,
    }


def _run(
    args: argparse.Namespace, ctx: Any, inputs: Inputs, meta: dict[str, Any], console: Any, announce: Callable[[], None]
) -> Any:
    from cpo.privacy import IdHasher
    from cpo.runlog import LOG_FILE, RunLog

    run_dir = Path(inputs["run_dir"])
    with RunLog(run_dir / LOG_FILE, IdHasher.for_installation()) as log:
        log.event("run", run_id=meta["run_id"], resumed=bool(args.resume), model=meta["model"])
        result = asyncio.run(_drive(args, ctx, inputs, meta, log, console(True), announce))
        log.event(
            "finished",
            stopped_by=result.stopped_by,
            emails=len(result.variants),
            failed=len(result.failures),
            cost=ctx.tracker.session.cost_display,
        )
    return result


async def _drive(
    args: argparse.Namespace,
    ctx: Any,
    inputs: Inputs,
    meta: dict[str, Any],
    log: Any,
    err: Any,
    announce: Callable[[], None],
) -> Any:
    """Run the graph with a progress bar per stage, started once the customers are loaded."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cpo.runner import CampaignRunner

    progress = Progress(
        TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err
    )
    tasks = {stage: progress.add_task(label, total=None, start=False) for stage, label in STAGE_LABELS.items()}
    loading = err.status("loading and segmenting the customers")
    loading.start()

    def on_progress(stage: str, done: int, total: int) -> None:
        if not progress.live.is_started:
            loading.stop()
            announce()
            progress.start()
        progress.start_task(tasks[stage])
        progress.update(tasks[stage], completed=done, total=total)

    def say_line(line: str) -> None:
        (progress.console if progress.live.is_started else err).print(line, markup=False, highlight=False)

    run_dir = Path(inputs["run_dir"])

    def on_audit(head: str, rows: int) -> None:  # two copies of the head: run.json and the cost ledger
        record_audit_head(run_dir, head, rows, ctx.tracker.ledger)

    runner = CampaignRunner(
        inputs,
        ctx.chain,
        ctx.tracker,
        index=content_index(run_dir.parent),
        on_audit=on_audit,
        run_id=meta["run_id"],
        root_run_id=meta["root_run_id"],
        concurrency=args.concurrency,
        checkpoint_url=ctx.settings.checkpoint_url,
        log=log,
        extra={"model": meta["model"], "source": ctx.source, "ledger": meta["ledger"]},
        on_progress=on_progress,
        say=say_line,
    )
    try:
        return await runner.run()
    finally:
        loading.stop()
        if progress.live.is_started:
            progress.stop()


def _report(
    result: Any, ctx: Any, strict: bool, prior: Decimal | None, *, say: Callable[..., None], console: Any
) -> int:
    from cpo.cli import _totals_line, quality_line
    from cpo.costs import format_usd
    from cpo.runner import produced_line

    tracker = ctx.tracker
    variants = result.variants
    if result.segments:
        console().print(_summary_table(result))
    counts = result.counts
    if counts:
        say(
            f"customers: {counts['total']} in the file, {counts['no_consent']} without consent, "
            f"{counts['suppressed']} suppressed, {counts['total'] - counts['no_consent'] - counts['suppressed']} "
            "in the campaign"
        )
    small = result.assignment.get("small_cells", [])
    if small:
        from cpo.agents.assignment import SMALL_CELL

        segment, arm, n = min(small, key=lambda cell: cell[2])
        say(
            f"warning: {len(small)} of {len(result.assignment.get('cells', []))} segment x arm cells have fewer than "
            f"{SMALL_CELL} customers, too few to learn from (smallest: {segment} / {arm}, {n})",
            stderr=True,
        )
    held = result.delivery.get("withheld") or {}
    own = {(v.segment, v.tone): v for v in variants}
    for segment, arm in result.delivery.get("substituted", []):
        v = own.get((segment, arm))
        why = held.get(v.variant_id, "invalid") if v is not None and v.valid else "invalid or not generated"
        say(f"{segment} / {arm}: its variant is {why}; those customers get the control instead")
    for segment in result.delivery.get("unsent", []):
        say(f"{segment}: not sent (no valid control to fall back on)")
    for v in (v for v in variants if not v.valid):
        say(f"invalid {v.segment} / {v.tone}: {'; '.join(v.validation.reasons)}")
    if result.screening:
        blocked = [d for d in result.screening.values() if d["blocked"]]
        backend = next(iter(result.screening.values()))["backend"]
        say(f"screened: {len(result.screening)} variants ({backend}), {len(blocked)} blocked")
        for d in blocked:
            say(f"blocked {d['segment']} / {d['tone']}: {'; '.join(d['reasons'])}")
    for d in (d for d in result.review.values() if d.get("decision") == "reject"):
        say(f"rejected in review by {d.get('reviewer')}: {d.get('reason')}")
    if variants:
        say(quality_line(variants))
        known = [v.usage.cost_usd for v in variants if v.usage.cost_usd is not None]
        mean = sum(known, Decimal(0)) / len(known) if known and len(known) == len(variants) else None
        say(f"cost per variant: mean {format_usd(mean)} over {len(variants)} variants")
    if ctx.source != "offline":
        say(f"structured output: {ctx.chain.method} ({ctx.method_origin()})")
    fallback = sum(v.fallback_used for v in variants)
    if fallback:
        say(f"offline fallback: {fallback} of {len(variants)} emails were drafted offline (marked fallback_used)")
    say(_totals_line("this run" if prior is not None else "session", tracker.session))
    if prior is not None:
        say(f"session before this resume: {format_usd(prior)}")
    if tracker.accounting_errors or tracker.ledger_errors:
        say(f"cost ledger: {tracker.ledger_errors} write failure(s) (see the log line above); costs.json is complete")
    if result.timings:
        say("stage seconds: " + ", ".join(f"{STAGE_LABELS.get(k, k)} {v:.2f}" for k, v in result.timings.items()))
    written = [name for name in OUTPUTS if (result.run_dir / name).is_file()]
    if result.delivery.get("rendered") is not None:
        written.append(f"rendered/ ({result.delivery['rendered']} emails)")
    say(f"wrote {result.run_dir}: {', '.join(written)}")
    for failure in result.failures:
        say(f"error: {failure}", stderr=True)
    produced = produced_line(len(variants), result.total, tracker)
    resume = f"; go on with: cpo run --resume {result.run_dir}"
    if result.stopped_by == "interrupted":
        say(f"interrupted: {produced}{resume}", stderr=True)
    elif result.stopped_by == "budget":
        say(f"budget reached: {produced}; {result.not_run} not generated ({result.stop_message}){resume}", stderr=True)
    elif result.stopped_by in ("auth", "config"):
        say(f"error: {result.stop_message}; stopped after {produced}", stderr=True)
    elif result.stopped_by == "review":
        waiting = sum(not d["blocked"] for d in result.screening.values())
        say(
            f"paused for review: {waiting} variant(s) await a decision: cpo review {result.run_dir}, "
            f"then cpo run --resume {result.run_dir}",
            stderr=True,
        )
    code = int(result.exit_code)
    if code == 0 and strict and any(not v.valid for v in variants):
        return 1
    return code


def _summary_table(result: Any) -> Any:
    """Customers per segment x arm, each cell marked with its variant's state; variants valid and cost per segment."""
    from rich.table import Table
    from rich.text import Text

    from cpo.agents.assignment import DEFAULT_ARMS, HOLDOUT
    from cpo.costs import format_usd

    cells = {(s, a): n for s, a, n in result.assignment.get("cells", [])}
    arms = ([HOLDOUT] if any(a == HOLDOUT for _, a in cells) else []) + list(DEFAULT_ARMS)
    by_cell: dict[tuple[str, str], list[Any]] = {}
    for v in result.variants:
        by_cell.setdefault((v.segment, v.tone), []).append(v)
    substituted = {tuple(c) for c in result.delivery.get("substituted", [])}
    unsent = set(result.delivery.get("unsent", []))
    table = Table(title=Text(f"cpo run {result.run_dir.name}"))
    table.add_column("segment")
    table.add_column("customers", justify="right")
    for arm in arms:
        table.add_column(arm, justify="right")
    table.add_column("variants valid", justify="right")
    table.add_column("cost", justify="right")
    for segment in result.segments:
        row = [Text(segment.name), Text(str(segment.size))]
        for arm in arms:
            n = cells.get((segment.name, arm))
            own = by_cell.get((segment.name, arm), [])
            invalid = sum(not v.valid for v in own)
            if n is None:
                mark = "-"
            elif arm == HOLDOUT:
                mark = ""
            elif (segment.name, arm) in substituted:
                mark = " → control"
            elif segment.name in unsent and (not own or invalid):
                mark = " not sent"
            elif not own:
                mark = " ✗"
            else:
                mark = " ✓" if not invalid else (" ✗" if invalid == len(own) else f" ({invalid} ✗)")
            row.append(Text(f"{'' if n is None else n}{mark}"))
        mine = [v for a in DEFAULT_ARMS for v in by_cell.get((segment.name, a), [])]
        costs = [v.usage.cost_usd for v in mine]
        total = sum((c for c in costs if c is not None), Decimal(0)) if mine and None not in costs else None
        expected = len(DEFAULT_ARMS) if not result.per_customer else len(mine)
        row += [Text(f"{sum(v.valid for v in mine)}/{expected}"), Text(format_usd(total))]
        table.add_row(*row)
    return table
