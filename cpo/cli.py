"""The `cpo` command line: a thin shell over the library. Errors become one line and an exit code."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import openai
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cpo.chains import build_email_chain
from cpo.content import ContentBundle
from cpo.costs import CostTracker, Usage, format_usd, price_book_for
from cpo.errors import CpoError, InputError
from cpo.llm import build_chat_model, model_source
from cpo.models import TONES, EmailVariant
from cpo.offline import NOT_CONFIGURED
from cpo.settings import Settings
from cpo.validation import ValidationLimits

app = typer.Typer(
    name="cpo",
    help="Customer Personalization Orchestrator: personalized, citation-grounded upgrade emails.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output is not squeezed into 80 columns: wide tables stay readable in logs and CI.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 160)

SegmentsOpt = Annotated[
    Path | None, typer.Option("--segments", help="Segments file (JSON/YAML); default: shipped sample")
]
ContentOpt = Annotated[Path | None, typer.Option("--content", help="Directory of approved snippets (*.md)")]
PromptsOpt = Annotated[Path | None, typer.Option("--prompts", help="Directory overriding prompt files")]
LimitsOpt = Annotated[Path | None, typer.Option("--limits", help="YAML file overriding validation limits")]
RepairsOpt = Annotated[int, typer.Option("--max-repairs", min=0, max=5, help="Extra model calls to fix a draft")]
SnippetsOpt = Annotated[int, typer.Option("--snippets", min=1, max=10, help="Snippets given to the model per email")]


class _Context:
    """What every generating command sets up the same way."""

    def __init__(
        self, prompts: Path | None, limits: Path | None, max_repairs: int, max_usd: float | None = None
    ) -> None:
        self.settings = Settings()
        self.model = build_chat_model(self.settings)
        self.source = model_source(self.model)
        prices = price_book_for(self.settings)
        self.limits = ValidationLimits.from_file(limits) if limits else ValidationLimits()
        self.chain = build_email_chain(
            self.model,
            prompts_dir=prompts,
            max_repairs=max_repairs,
            limits=self.limits,
            settings=self.settings,
            prices=prices,
        )
        self.tracker = CostTracker.from_settings(self.settings, max_usd=max_usd, prices=prices)

    def announce(self) -> None:
        err.print(f"[dim]model:[/] {self.settings.describe()}")
        if self.source == "offline":
            err.print(f"[yellow]{NOT_CONFIGURED}[/]")


def _tick(ok: bool) -> str:
    return "[green]✓[/]" if ok else "[red]✗[/]"


def _totals_line(label: str, usage: Usage) -> str:
    return (
        f"{label}: {usage.calls} calls ({usage.failed_calls} failed), {usage.input_tokens} input + "
        f"{usage.output_tokens} output = {usage.total_tokens} tokens, {usage.cost_display}"
    )


def _variants_table(variants: list[EmailVariant], title: str) -> Table:
    table = Table(title=title, show_lines=False)
    for col in ("segment", "tone", "valid", "subject", "tokens", "cost", "attempts"):
        numeric = col in ("tokens", "cost", "attempts")
        table.add_column(col, justify="right" if numeric else "left", no_wrap=col != "subject")
    for v in variants:
        table.add_row(
            v.segment,
            v.tone,
            _tick(v.valid),
            v.subject,
            str(v.usage.total_tokens),
            v.usage.cost_display,
            str(v.attempts),
        )
    return table


def _write_json(path: Path, data: Any) -> None:
    """Write atomically so an interrupted run never leaves a half-written file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    tmp.replace(path)


@app.command()
def run(
    segments: SegmentsOpt = None,
    content: ContentOpt = None,
    prompts: PromptsOpt = None,
    limits: LimitsOpt = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Runs directory (default: CPO_RUNS_DIR or ./runs)")
    ] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, max=64, help="Emails in flight")] = 4,
    max_usd: Annotated[float | None, typer.Option("--max-usd", min=0, help="Stop before spending more")] = None,
    max_repairs: RepairsOpt = 2,
    snippets: SnippetsOpt = 3,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 if any email is invalid")] = False,
) -> None:
    """Generate the three tones plus a control for every segment; write runs/<timestamp>/."""
    bundle = ContentBundle.load(segments, content)
    ctx = _Context(prompts, limits, max_repairs, max_usd)
    requests = [bundle.request(s.name, tone, max_snippets=snippets) for s in bundle.segments for tone in TONES]
    run_dir = (out_dir or ctx.settings.runs_dir) / datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    run_dir.mkdir(parents=True, exist_ok=False)
    ctx.announce()
    err.print(f"[dim]writing to[/] {run_dir}")

    results: list[EmailVariant | None] = [None] * len(requests)
    failures: list[str] = []

    def save() -> None:
        done = [v.model_dump(mode="json") for v in results if v is not None]
        _write_json(run_dir / "variants.json", done)
        _write_json(
            run_dir / "costs.json",
            {
                **ctx.tracker.summary(),
                "model": ctx.settings.describe(),
                "source": ctx.source,
                "variants": {v.variant_id: v.run_id for v in results if v is not None},
                "errors": failures,
            },
        )

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )
    try:
        with progress:
            task = progress.add_task("generating", total=len(requests))
            configs = [
                {"callbacks": [ctx.tracker], "max_concurrency": concurrency, "run_name": f"{r.segment.name}/{r.tone}"}
                for r in requests
            ]
            for index, result in ctx.chain.batch_as_completed(requests, config=configs, return_exceptions=True):
                req = requests[index]
                if isinstance(result, Exception):
                    failures.append(f"{req.segment.name} / {req.tone}: {_one_line(result)}")
                else:
                    results[index] = result
                progress.advance(task)
                save()
    finally:
        save()
    variants = [v for v in results if v is not None]
    out.print(_variants_table(variants, f"cpo run {run_dir.name}"))
    invalid = [v for v in variants if not v.valid]
    for v in invalid:
        out.print(f"[red]invalid[/] {v.segment} / {v.tone}: {'; '.join(v.validation.reasons)}")
    runs = list(ctx.tracker.runs.values())
    if runs:
        per_run = sum(r.total_tokens for r in runs) / len(runs)
        out.print(f"per run: {len(runs)} runs, mean {per_run:.0f} tokens, mean {format_usd(_mean_cost(runs))}")
    out.print(_totals_line("session", ctx.tracker.session))
    out.print(f"wrote {run_dir / 'variants.json'} and {run_dir / 'costs.json'}")
    for failure in failures:
        err.print(f"[red]error:[/] {failure}")
    if failures:
        raise typer.Exit(1)
    if strict and invalid:
        raise typer.Exit(1)


def _mean_cost(runs: list[Usage]) -> Decimal | None:
    costs = [r.cost_usd for r in runs]
    if any(c is None for c in costs):
        return None
    return sum(costs, Decimal(0)) / len(costs)  # type: ignore[arg-type]


@app.command()
def generate(
    segment: Annotated[str, typer.Option("--segment", help="Segment name, e.g. 'High-Value Recent'")],
    tone: Annotated[str, typer.Option("--tone", help="urgent | informational | friendly | control")] = "friendly",
    segments: SegmentsOpt = None,
    content: ContentOpt = None,
    prompts: PromptsOpt = None,
    limits: LimitsOpt = None,
    max_repairs: RepairsOpt = 2,
    snippets: SnippetsOpt = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print the EmailVariant as JSON")] = False,
) -> None:
    """Generate one email and print it."""
    if tone not in TONES:
        raise InputError(f"--tone must be one of {', '.join(TONES)} (got {tone!r})")
    bundle = ContentBundle.load(segments, content)
    request = bundle.request(segment, tone, max_snippets=snippets)  # type: ignore[arg-type]
    ctx = _Context(prompts, limits, max_repairs)
    if not as_json:
        ctx.announce()
    variant: EmailVariant = ctx.chain.invoke(request, config={"callbacks": [ctx.tracker]})
    if as_json:
        out.print_json(variant.model_dump_json())
    else:
        _print_variant(variant)
    if not variant.valid:
        raise typer.Exit(1)


def _print_variant(v: EmailVariant) -> None:
    out.rule(f"{v.segment} / {v.tone}  {_tick(v.valid)}")
    out.print(f"[bold]{v.subject}[/]\n")
    out.print(v.body, highlight=False)
    out.print()
    for c in v.citations:
        out.print(f"[dim][{c.id}] {c.title} ({c.section})[/]")
    for reason in v.validation.reasons:
        out.print(f"[red]✗ {reason}[/]")
    out.print(
        f"[dim]{v.model} ({v.source}{', offline fallback' if v.fallback_used else ''}), "
        f"{v.usage.total_tokens} tokens, {v.usage.cost_display}, {v.attempts} attempt(s), "
        f"prompt {v.prompt_version}[/]"
    )


@app.command("try-prompts")
def try_prompts(
    segment: Annotated[str | None, typer.Option("--segment", help="Segment name; default: the first sample")] = None,
    segments: SegmentsOpt = None,
    content: ContentOpt = None,
    prompts: PromptsOpt = None,
    limits: LimitsOpt = None,
    max_repairs: RepairsOpt = 0,
) -> None:
    """Try the three tone prompts on one segment and check them; exits 1 if any check fails."""
    bundle = ContentBundle.load(segments, content)
    name = segment or bundle.segments[0].name
    ctx = _Context(prompts, limits, max_repairs)
    ctx.announce()
    checks = ctx.limits
    failed = 0
    for tone in ("urgent", "informational", "friendly"):
        v: EmailVariant = ctx.chain.invoke(bundle.request(name, tone), config={"callbacks": [ctx.tracker]})  # type: ignore[arg-type]
        codes = {i.code for i in v.validation.issues}
        out.rule(f"{name} / {tone}")
        out.print(f"subject: {v.subject!r}")
        out.print(
            f"  subject length: {v.validation.subject_chars} chars "
            f"(limit {checks.subject_min_chars}-{checks.subject_max_chars}) {_tick('subject_length' not in codes)}"
        )
        out.print(
            f"  body word count: {v.validation.body_words} words "
            f"(limit {checks.body_min_words}-{checks.body_max_words}) {_tick('body_length' not in codes)}"
        )
        cites_ok = not codes & {"too_few_citations", "unknown_citation"}
        out.print(f"  citations found: {v.validation.citations} (need {checks.min_citations}) {_tick(cites_ok)}")
        other = [
            i.message
            for i in v.validation.issues
            if i.code not in ("subject_length", "body_length", "too_few_citations", "unknown_citation")
        ]
        out.print(f"  other checks: {'; '.join(other) or 'none failed'} {_tick(not other)}")
        out.print(f"  tokens: {v.usage.input_tokens} in + {v.usage.output_tokens} out, cost {v.usage.cost_display}")
        failed += not v.valid
    out.rule("totals")
    out.print(_totals_line("session", ctx.tracker.session))
    if failed:
        out.print(f"[red]{failed} of 3 tones failed their checks[/]")
        raise typer.Exit(1)
    out.print("[green]all 3 tones passed their checks[/]")


@app.command()
def costs(
    session: Annotated[str | None, typer.Option("--session", help="Show the runs of one session")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Rows to show")] = 20,
    ledger: Annotated[Path | None, typer.Option("--ledger", help="Ledger file (default: CPO_LEDGER)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Show recorded spend per session, or per run of one session, from the SQLite ledger."""
    from cpo.ledger import Ledger

    path = ledger or Settings().ledger_file
    if path is None:
        raise InputError("the cost ledger is turned off (CPO_LEDGER=off); pass --ledger FILE")
    if not path.exists():
        raise InputError(f"no cost ledger at {path} yet: run `cpo run` first, or pass --ledger FILE")
    book = Ledger(path)
    rows = book.runs(session, limit) if session else book.sessions(limit)
    if as_json:
        out.print_json(json.dumps(rows, default=str))
        return
    table = Table(title=f"{'runs of session ' + session if session else 'sessions'} in {path}")
    for col in (
        "id",
        "started",
        "name" if session else "runs",
        "calls",
        "failed",
        "input",
        "cached",
        "output",
        "cost",
        "models",
    ):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["id"],
            r["started"],
            str(r["name"] if session else r["runs"]),
            str(r["calls"]),
            str(r["failed_calls"]),
            str(r["input_tokens"]),
            str(r["cached_input_tokens"]),
            str(r["output_tokens"]),
            format_usd(r["cost_usd"]),
            r["models"] or "",
        )
    out.print(table)


@app.command()
def check() -> None:
    """Check the connection to the configured model; prints ✅ or ❌ with the reason."""
    from cpo.integrations.azure_openai import check_connection

    raise typer.Exit(check_connection(out))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{type(exc).__name__}: {text}" if isinstance(exc, openai.OpenAIError) else text


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and turn expected errors into one line on stderr and an exit code."""
    try:
        app(args=argv, prog_name="cpo")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except CpoError as exc:
        err.print(f"error: {exc}", highlight=False)
        return exc.exit_code
    except openai.OpenAIError as exc:
        err.print(f"error: the model endpoint failed: {_one_line(exc)}", highlight=False)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
