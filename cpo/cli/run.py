"""`cpo run`: set up (or resume) a campaign run directory, drive the graph with progress, print the summary.

The run directory holds everything an audit needs: `run.json` (inputs and their fingerprint, options,
versions, model, stage timings, status), `log.jsonl` (events, customer ids hashed), `variants.json`,
`costs.json`, `segments.csv`, `templates.json`, `assignments.csv`, `send_list.csv`, the per-email
files in `emails/`, the customers' DuckDB file and the graph's checkpoints.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from cpo.campaign.backends import content_index
from cpo.campaign.kept import KeptEmails
from cpo.campaign.rundir import (
    RUN_FILE,
    check_resume,
    input_fingerprint,
    locked,
    make_run_dir,
    record_audit_head,
    record_run,
    resumable_record,
)
from cpo.campaign.stages import GENERATE, STAGE_LABELS
from cpo.campaign.state import Inputs
from cpo.cli.context import CommandContext
from cpo.cli.output import console, say
from cpo.cli.run_report import report
from cpo.core.errors import ExitCode, InputError, first_line
from cpo.net.pacing import listen

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


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from cpo.core.version import __version__

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


def _resume_options(args: argparse.Namespace) -> dict[str, Any]:
    """Fill args from the run's run.json; refuse options that would change what the run was started with."""
    for name in RECORDED:
        if getattr(args, name) not in (None, False):
            flag = "--" + name.replace("_", "-")
            raise InputError(f"--resume goes on with the options in {args.resume / RUN_FILE}; leave out {flag}")
    recorded = resumable_record(args.resume)
    options = recorded.get("options", {})
    for name in ("prompts", "limits"):
        setattr(args, name, Path(options[name]) if options.get(name) else None)
    args.max_repairs = options.get("max_repairs", DEFAULTS["max_repairs"])
    args.judge = options.get("judge", DEFAULTS["judge"])
    return recorded


def cmd_run(args: argparse.Namespace) -> int:
    """The whole `cpo run` command; returns its exit code. (`cpo.cli.main` runs it with umask 077.)"""
    with contextlib.ExitStack() as held:  # the run directory's lock, from when it is known to the command's end
        return _cmd_run(args, held)


def _cmd_run(args: argparse.Namespace, held: contextlib.ExitStack) -> int:
    from cpo.campaign.campaign_file import load_campaign
    from cpo.core.resources import bundled

    recorded = _resume_options(args) if args.resume else None
    if recorded is None:
        args.max_repairs = DEFAULTS["max_repairs"] if args.max_repairs is None else args.max_repairs
    ctx = CommandContext(args, max_usd=args.max_usd)  # limits, prompts, model and budget are checked before any file
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
            "platform": args.platform,
        }
        load_campaign(Path(inputs["campaign"]) if inputs["campaign"] else None)  # one-line error before any file
    fingerprint = input_fingerprint(inputs, args.prompts, args.limits)
    if args.dry_run:
        from cpo.cli.dry_run import dry_run

        return dry_run(inputs, ctx, content_index(None))
    if recorded is not None:
        check_resume(run_dir, inputs, fingerprint)
        ctx.tracker.session_id = recorded["session_id"]
    else:
        runs_dir: Path = args.out or ctx.settings.runs_dir
        run_dir = make_run_dir(runs_dir, datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ"))
        inputs["run_dir"] = str(run_dir)
    held.enter_context(locked(run_dir))  # one cpo process per run directory: a second one stops here, paying nothing
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
        result = _run(args, ctx, inputs, meta, announce)
    except BaseException as exc:
        if recorded is None and not KeptEmails(run_dir).exists():
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing was produced: leave no half-made run behind
        else:  # what was paid for stays; run.json says the run failed, and why, instead of "running"
            failed = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            error = first_line(exc) if isinstance(exc, Exception) else None
            with contextlib.suppress(OSError, InputError):  # the error in hand is the one to report
                record_run(run_dir, inputs, fingerprint, **meta, status=failed, error=error)
        raise
    finally:
        ctx.tracker.close()
    code = report(result, ctx, args.strict, prior)
    record_run(
        run_dir,
        inputs,
        fingerprint,
        **meta,
        status=result.stopped_by or ("complete" if not result.failures else "complete with failures"),
        exit_code=code,
        stage_seconds=result.timings,
        counts=result.counts,
        warnings=result.warnings,
        unsent_customers=result.unsent_customers,
        assignment_mode=result.assignment.get("mode"),
        allocation=result.assignment.get("shares"),
        finished=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    platform = args.platform or inputs.get("platform")  # a resumed run exports for the platform it was started with
    if platform and not result.stopped_by:  # not a run paused for review or stopped
        code = max(code, _export_for(run_dir, platform))
    return code


def _export_for(run_dir: Path, platform: str) -> int:
    """`cpo run --platform`: the finished run exported for one platform; a refusal is one line and exit 1."""
    from cpo.campaign.platform_export import export_platform
    from cpo.cli.commands import exported_line

    try:
        say(exported_line(export_platform(run_dir, platform)))
    except InputError as exc:
        say(f"error: {first_line(exc)}", stderr=True)
        return ExitCode.FAILED
    return ExitCode.OK


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


def _prior_spend(ctx: CommandContext, recorded: dict[str, Any] | None) -> Decimal | None:
    """What the session spent before this resume: it counts against --max-usd."""
    if recorded is None or ctx.tracker.ledger is None:
        return None
    found = ctx.tracker.ledger.session(ctx.tracker.session_id)
    spent = found["cost_usd"] if found else Decimal(0)
    if ctx.tracker.budget is not None and spent is not None:
        ctx.tracker.budget.settled += spent
    return spent if isinstance(spent, Decimal) else None


def _run_meta(
    args: argparse.Namespace,
    ctx: CommandContext,
    inputs: Inputs,
    recorded: dict[str, Any] | None,
    ledger: Path | None,
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
    from cpo.core.models import TONES

    profile = ctx.chain.prompts.profile_for(ctx.chain.methods.enforced)  # the first drafts' prompt profile
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
        "prompt_versions": {tone: ctx.chain.prompts.version(tone, profile) for tone in TONES},
        "model": ctx.settings.describe(),
        "source": ctx.source,
        "checkpointer": checkpointer,
        "ledger": str(ledger) if ledger else None,
    }


def _run(
    args: argparse.Namespace, ctx: CommandContext, inputs: Inputs, meta: dict[str, Any], announce: Callable[[], None]
) -> Any:
    from cpo.campaign.rundir import LOG_FILE
    from cpo.campaign.runlog import RunLog
    from cpo.core.privacy import IdHasher

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
    ctx: CommandContext,
    inputs: Inputs,
    meta: dict[str, Any],
    log: Any,
    err: Any,
    announce: Callable[[], None],
) -> Any:
    """Run the graph with a progress bar per stage, started once the customers are loaded."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cpo.campaign.runner import CampaignRunner

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

    def on_quota(waiting: bool) -> None:  # CPO_RPM / CPO_TPM: the generate line says when it waits for quota
        label = STAGE_LABELS[GENERATE]
        progress.update(tasks[GENERATE], description=f"{label} (waiting for quota)" if waiting else label)

    stop_listening = listen(on_quota)

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
        stop_listening()
        loading.stop()
        if progress.live.is_started:
            progress.stop()
