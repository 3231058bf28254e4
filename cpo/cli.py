"""The `cpo` command line: a thin shell over the library. Errors become one line and an exit code.

Only the standard library is imported here at start-up, so `cpo --help`, `cpo --version` and
argument errors answer at once; each command imports what it uses. Every string that comes from
the user or a model is printed as data, never as Rich markup.

Exit codes: 0 done; 1 some emails failed (or, with --strict, are invalid), or the endpoint failed;
2 bad input, configuration or credentials; 3 the budget was reached; 4 paused for review
(`cpo run --review`); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from cpo.costs import CostTracker, Usage
    from cpo.models import EmailVariant

TONES = ("urgent", "informational", "friendly", "control")
LIMITS_HELP = """\
--limits FILE is YAML with any of these keys (defaults in brackets):
  subject_min_chars [1], subject_max_chars [60]      subject length in characters
  body_min_words [150], body_max_words [200]         body length in words
  min_citations [2]                                  supplied snippets the email must cite
  urgency_phrases [act now, last chance, ...]         phrases counted in the subject
  max_urgency_phrases [1]                            more than this many in a subject is a violation
  allowed_caps [USD, FAQ, NOTE]                      all-caps words the subject may contain"""
EXIT_CODES = (
    "exit codes: 0 done, 1 failures, 2 bad input/configuration/credentials, 3 budget reached, "
    "4 paused for review (cpo run --review), 130 Ctrl-C"
)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34)


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line and exit code 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> Any:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _version() -> str:
    from cpo import __version__

    return f"cpo {__version__}"


def _positive_int(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low}-{high} (got {value})")
        return value

    return parse


def _usd(text: str) -> str:
    from decimal import Decimal, InvalidOperation

    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not an amount in USD: {text!r}") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative amount (got {text})")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cpo",
        description="Customer Personalization Orchestrator: personalized, citation-grounded upgrade emails.",
        epilog=EXIT_CODES,
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def inputs(p: argparse.ArgumentParser, repairs: int) -> None:
        p.add_argument("--segments", type=Path, metavar="FILE", help="segments file (JSON/YAML); default: the sample")
        p.add_argument("--content", type=Path, metavar="DIR", help="directory of approved snippets (*.md)")
        p.add_argument("--prompts", type=Path, metavar="DIR", help="directory overriding prompt files")
        p.add_argument("--limits", type=Path, metavar="FILE", help="YAML file overriding validation limits (below)")
        p.add_argument(
            "--max-repairs",
            type=_positive_int(0, 5),
            default=repairs,
            metavar="N",
            help=f"repair rounds for a failing draft (each rewrites every failing part once), 0-5 [{repairs}]",
        )
        p.add_argument(
            "--snippets", type=_positive_int(1, 10), default=3, metavar="N", help="snippets per email, 1-10 [3]"
        )
        p.add_argument(
            "--sender", type=Path, metavar="FILE", help="YAML with brand, greeting, sign_off; default: the sample"
        )
        p.add_argument(
            "--judge",
            action="store_true",
            help="also check each sentence against the cited snippets with the configured model (billed to the run)",
        )

    run = commands.add_parser(
        "run",
        help="run a campaign: segment customers, write tone variants, assign arms, export",
        description="Run a campaign from a customer file: load and segment the customers, retrieve the approved "
        "content each segment may be told, write the three tones plus a control per segment, screen them "
        "(audited in safety_audit.csv), assign every customer to an arm and export what an email platform "
        "imports, into <runs dir>/<timestamp>/. Every call is appended to <runs dir>/ledger.sqlite. A stopped "
        "or killed run goes on with --resume RUN_DIR, without paying again for the emails it kept.",
        epilog=f"{LIMITS_HELP}\n\n{EXIT_CODES}",
    )
    run.add_argument(
        "--customers", type=Path, metavar="FILE", help="customer file, CSV or Parquet [the 250-customer sample]"
    )
    run.add_argument("--config", type=Path, metavar="FILE", help="campaign file (YAML) [the sample campaign]")
    run.add_argument(
        "--suppress",
        type=Path,
        metavar="FILE",
        help="customer ids to leave out (a CSV with customer_id, or one id per line)",
    )
    run.add_argument("--seed", type=_positive_int(0, 2**31 - 1), metavar="N", help="assignment seed [2027]")
    run.add_argument(
        "--review",
        action="store_true",
        help="pause after screening until each variant is approved or rejected with `cpo review` (exit 4)",
    )
    run.add_argument(
        "--per-customer",
        action="store_true",
        help="one email per customer from their own figures, in their arm's tone (at most 500 customers)",
    )
    run.add_argument(
        "--render",
        action="store_true",
        help="also write rendered/<customer id>.eml per customer (merge fields filled; at most 10,000 customers)",
    )
    run.add_argument("--resume", type=Path, metavar="RUN_DIR", help="go on with a stopped or killed run, same inputs")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="check the inputs, show segments and estimated cost; write nothing",
    )
    run.add_argument("--prompts", type=Path, metavar="DIR", help="directory overriding prompt files")
    run.add_argument("--limits", type=Path, metavar="FILE", help="YAML file overriding validation limits (below)")
    run.add_argument(
        "--max-repairs",
        type=_positive_int(0, 5),
        metavar="N",
        help="repair rounds for a failing draft (each rewrites every failing part once), 0-5 [2]",
    )
    run.add_argument(
        "--judge",
        action="store_true",
        help="also check each sentence against the cited snippets with the configured model (billed to the run)",
    )
    run.add_argument("--out", type=Path, metavar="DIR", help="runs directory [CPO_RUNS_DIR or ./runs]")
    run.add_argument(
        "--concurrency", type=_positive_int(1, 64), default=4, metavar="N", help="emails in flight, 1-64 [4]"
    )
    run.add_argument(
        "--max-usd",
        type=_usd,
        metavar="USD",
        help="hard budget for the session (a resumed run counts its earlier spend); at the cap the run stops (exit 3)",
    )
    run.add_argument("--strict", action="store_true", help="exit 1 if any email is invalid")

    generate = commands.add_parser("generate", help="generate one email and print it", epilog=LIMITS_HELP)
    generate.add_argument("--segment", required=True, help="segment name, e.g. 'High-Value Recent'")
    generate.add_argument("--tone", choices=TONES, default="friendly", help="[friendly]")
    inputs(generate, 2)
    generate.add_argument("--json", action="store_true", dest="as_json", help="print the EmailVariant as JSON")

    tries = commands.add_parser(
        "try-prompts",
        help="try the three tone prompts on one segment; exit 1 if a check fails",
        epilog=LIMITS_HELP,
    )
    tries.add_argument("--segment", help="segment name [the first one]")
    inputs(tries, 0)

    costs = commands.add_parser("costs", help="spend per session, or per run of one session, from the ledger")
    costs.add_argument(
        "--session", metavar="ID", help="show the runs of one session (an unambiguous id prefix will do)"
    )
    costs.add_argument("--emails", action="store_true", help="with --session: one row per email instead of per run")
    costs.add_argument("--limit", type=_positive_int(1, 100_000), default=20, metavar="N", help="rows to show [20]")
    costs.add_argument(
        "--ledger",
        type=Path,
        metavar="FILE",
        help="ledger file [CPO_LEDGER, else <CPO_RUNS_DIR or ./runs>/ledger.sqlite]",
    )
    costs.add_argument("--json", action="store_true", dest="as_json", help="print JSON")

    review = commands.add_parser(
        "review",
        help="list a paused run's variants for review, or record approve/reject decisions",
        description="List the variants of a run paused by `cpo run --review` (subject, body, citations, screening), "
        "or record decisions; each is a row of the run's audit chain. Then: cpo run --resume RUN_DIR.",
    )
    review.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    review.add_argument("--approve", nargs="+", default=[], metavar="ID", help="variant ids to approve")
    review.add_argument("--reject", nargs="+", default=[], metavar="ID", help="variant ids to reject (needs --reason)")
    review.add_argument("--approve-rest", action="store_true", help="approve every variant still awaiting a decision")
    review.add_argument("--reviewer", default="", metavar="NAME", help="who decides (required to decide)")
    review.add_argument("--reason", default="", metavar="TEXT", help="why (required to reject)")

    audit = commands.add_parser("audit", help="check a run's tamper-evident safety audit")
    audit_commands = audit.add_subparsers(dest="audit_command", metavar="ACTION", parser_class=_Parser, required=True)
    verify = audit_commands.add_parser(
        "verify",
        help="verify RUN_DIR/safety_audit.csv: its hash chain and its head against run.json and the ledger",
    )
    verify.add_argument("run_dir", type=Path, metavar="RUN_DIR")

    index = commands.add_parser(
        "index",
        help="(re)build the approved-content index that retrieval searches",
        description="Build the embedded SQLite FTS5 index in <runs dir>/content-index.sqlite (cpo run also "
        "rebuilds it when the content changed), or upload the content to Azure AI Search when "
        "AZURE_SEARCH_ENDPOINT and AZURE_SEARCH_INDEX are set.",
    )
    index.add_argument("--out", type=Path, metavar="DIR", help="runs directory [CPO_RUNS_DIR or ./runs]")

    check = commands.add_parser(
        "check",
        help="check the configured model: connection, structured-output method, parallel requests",
        description="Check the configured model: does it answer, which structured-output method works, and does "
        "it serve requests in parallel. What it learns is kept in <runs dir>/endpoints.json for `cpo run`.",
    )
    check.add_argument("--out", type=Path, metavar="DIR", help="runs directory [CPO_RUNS_DIR or ./runs]")
    return parser


# -- output -------------------------------------------------------------------------------------------


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Piped output is not squeezed into 80 columns: wide tables stay readable in logs and CI.
    return Console(file=stream, soft_wrap=True, width=None if stream.isatty() else 160, highlight=False, emoji=False)


def say(text: str, *, stderr: bool = False) -> None:
    """One plain line: never markup, never highlighted."""
    print(text, file=sys.stderr if stderr else sys.stdout, flush=True)


class _StderrLines(logging.Handler):
    """cpo's log records (warnings and up) as `warning: ...` lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        say(f"{record.levelname.lower()}: {record.getMessage()}", stderr=True)


def _setup_logging() -> None:
    logger = logging.getLogger("cpo")
    if not any(isinstance(h, _StderrLines) for h in logger.handlers):
        logger.addHandler(_StderrLines(logging.WARNING))
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _tick(ok: bool) -> str:
    return "✓" if ok else "✗"


def _totals_line(label: str, usage: Usage) -> str:
    refused = f", {usage.refused_calls} format refusal(s), not billed" if usage.refused_calls else ""
    return (
        f"{label}: {usage.calls} calls ({usage.failed_calls} failed{refused}), {usage.input_tokens} input + "
        f"{usage.output_tokens} output = {usage.total_tokens} tokens, {usage.cost_display}"
    )


def quality_line(variants: list[EmailVariant]) -> str:
    """'valid: 7 of 8 (5 first time, 2 after repairs; 6 with no normalization)'."""
    valid = [v for v in variants if v.valid]
    first = sum(v.attempts == 1 for v in valid)
    untouched = sum(v.valid_before_normalization for v in valid)
    return (
        f"valid: {len(valid)} of {len(variants)} ({first} first time, {len(valid) - first} after repairs; "
        f"{untouched} with no normalization)"
    )


def _variants_table(variants: list[EmailVariant], title: str) -> Any:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(title))
    for col in ("segment", "tone", "valid", "subject", "tokens", "cost", "attempts"):
        numeric = col in ("tokens", "cost", "attempts")
        table.add_column(col, justify="right" if numeric else "left", no_wrap=col != "subject")
    for v in variants:
        table.add_row(
            Text(v.segment),
            Text(v.tone),
            Text(_tick(v.valid), style="green" if v.valid else "red"),
            Text(v.subject),
            Text(str(v.usage.total_tokens)),
            Text(v.usage.cost_display),
            Text(str(v.attempts)),
        )
    return table


# -- shared set-up ------------------------------------------------------------------------------------


class _Context:
    """What every generating command sets up the same way, in an order that fails before side effects."""

    def __init__(self, args: argparse.Namespace, *, max_usd: str | None = None) -> None:
        from cpo.chains.email import build_email_chain
        from cpo.costs import CostTracker, price_book_for
        from cpo.endpoints import FILE_NAME, EndpointNotes
        from cpo.llm import build_chat_model, model_source
        from cpo.settings import Settings
        from cpo.validation import ValidationLimits

        self.settings = Settings()
        self.limits = ValidationLimits.from_file(args.limits) if args.limits else ValidationLimits()
        self.model = build_chat_model(self.settings)
        self.source = model_source(self.model)
        self.runs_dir: Path = getattr(args, "out", None) or self.settings.runs_dir
        self.notes = EndpointNotes(self.runs_dir / FILE_NAME)
        prices = price_book_for(self.settings)
        self.chain = build_email_chain(
            self.model,
            prompts_dir=args.prompts,
            max_repairs=args.max_repairs,
            limits=self.limits,
            settings=self.settings,
            prices=prices,
            judge=bool(getattr(args, "judge", False)),
            notes=self.notes,
        )
        self.tracker: CostTracker = CostTracker(prices=prices, default_model=self.settings.model_name, max_usd=max_usd)
        hint = "cpo-offline" if self.source == "offline" else self.settings.model_name
        self.tracker.check_budget_pricing(hint, self.settings.azure_deployment)

    def open_ledger(self, session_name: str, runs_dir: Path | None = None) -> Path | None:
        """Record this command's calls in the cost ledger (unless CPO_LEDGER=off); after input is checked."""
        from cpo.ledger import Ledger

        path = self.settings.ledger_file(runs_dir)
        if path is not None:
            self.tracker.use_ledger(Ledger(path), session_name=session_name)
        return path

    def announce(self, concurrency: int = 1) -> None:
        from cpo.checks import concurrency_warning
        from cpo.offline import NOT_CONFIGURED

        say(f"model: {self.settings.describe()}", stderr=True)
        if self.source == "offline":
            say(NOT_CONFIGURED, stderr=True)
            return
        say(f"structured output: {self.chain.method} ({self.method_origin()})", stderr=True)
        warning = concurrency_warning(self.notes, self.model, concurrency)
        if warning:
            say(warning, stderr=True)

    def method_origin(self) -> str:
        from cpo.endpoints import endpoint_key

        if not self.chain.remember_method:
            return "set by CPO_STRUCTURED_OUTPUT"
        if self.notes.get(endpoint_key(self.model), "method") == self.chain.method:
            return f"remembered in {self.notes.path}"
        return "to be probed on the first call"


def _bundle(args: argparse.Namespace) -> Any:
    from cpo.content import ContentBundle

    return ContentBundle.load(args.segments, args.content, args.sender)


# -- commands -----------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from cpo.campaign_cli import run_campaign

    return run_campaign(args, _Context, say=say, console=_console)


def cmd_generate(args: argparse.Namespace) -> int:
    bundle = _bundle(args)
    request = bundle.request(args.segment, args.tone, max_snippets=args.snippets)
    ctx = _Context(args)
    ctx.open_ledger(args.session_name)
    if not args.as_json:
        ctx.announce()
    try:
        variant: EmailVariant = ctx.chain.invoke(request, config={"callbacks": [ctx.tracker]})
    finally:
        ctx.tracker.close()
    if args.as_json:
        say(variant.model_dump_json(indent=2))
    else:
        _print_variant(variant)
    return 0 if variant.valid else 1


def _print_variant(v: EmailVariant) -> None:
    from rich.text import Text

    out = _console()
    out.rule(Text(f"{v.segment} / {v.tone}  {_tick(v.valid)}"))
    say(f"{v.subject}\n")
    say(v.body)
    say("")
    for c in v.citations:
        say(f"[{c.id}] {c.title} ({c.section})")
    for reason in v.validation.reasons:
        say(f"✗ {reason}")
    say(
        f"{v.model} ({v.source}{', offline fallback' if v.fallback_used else ''}), "
        f"{v.usage.total_tokens} tokens, {v.usage.cost_display}, {v.attempts} attempt(s), "
        f"prompt {v.prompt_version}"
    )


def cmd_try_prompts(args: argparse.Namespace) -> int:
    bundle = _bundle(args)
    name = args.segment or bundle.segments[0].name
    ctx = _Context(args)
    requests = [bundle.request(name, tone, max_snippets=args.snippets) for tone in TONES[:3]]
    ctx.open_ledger(args.session_name)
    ctx.announce()
    checks = ctx.limits
    failed = 0
    out = _console()
    from rich.text import Text

    try:
        for tone, request in zip(TONES[:3], requests, strict=True):
            v: EmailVariant = ctx.chain.invoke(request, config={"callbacks": [ctx.tracker]})
            codes = {i.code for i in v.validation.issues}
            out.rule(Text(f"{v.segment} / {tone}"))
            say(f"subject: {v.subject!r}")
            say(
                f"  subject length: {v.validation.subject_chars} chars "
                f"(limit {checks.subject_min_chars}-{checks.subject_max_chars}) {_tick('subject_length' not in codes)}"
            )
            say(
                f"  body word count: {v.validation.body_words} words "
                f"(limit {checks.body_min_words}-{checks.body_max_words}) {_tick('body_length' not in codes)}"
            )
            cites_ok = not codes & {"too_few_citations", "unknown_citation"}
            say(f"  citations found: {v.validation.citations} (need {checks.min_citations}) {_tick(cites_ok)}")
            other = [
                i.message
                for i in v.validation.issues
                if i.code not in ("subject_length", "body_length", "too_few_citations", "unknown_citation")
            ]
            say(f"  other checks: {'; '.join(other) or 'none failed'} {_tick(not other)}")
            say(f"  tokens: {v.usage.input_tokens} in + {v.usage.output_tokens} out, cost {v.usage.cost_display}")
            failed += not v.valid
    finally:
        ctx.tracker.close()
    out.rule("totals")
    say(_totals_line("session", ctx.tracker.session))
    if failed:
        say(f"{failed} of 3 tones failed their checks")
        return 1
    say("all 3 tones passed their checks")
    return 0


def cmd_costs(args: argparse.Namespace) -> int:
    import json

    from cpo.costs import format_usd
    from cpo.errors import InputError
    from cpo.ledger import Ledger
    from cpo.settings import Settings

    path = args.ledger or Settings().ledger_file()
    if path is None:
        raise InputError("the cost ledger is turned off (CPO_LEDGER=off); pass --ledger FILE")
    if args.emails and not args.session:
        raise InputError("--emails shows the emails of one session: add --session ID")
    book = Ledger(path, readonly=True)
    try:
        session = book.resolve_session(args.session) if args.session else None
        if session is None:
            rows = book.sessions(args.limit)
        else:
            rows = book.emails(session, args.limit) if args.emails else book.runs(session, args.limit)
    finally:
        book.close()
    if args.as_json:
        say(json.dumps(rows, default=str, indent=2))
        return 0
    from rich.table import Table
    from rich.text import Text

    kind = "emails" if args.emails else "runs"
    table = Table(title=Text(f"{kind + ' of session ' + session if session else 'sessions'} in {path}"))
    columns = ["id", "started (UTC)", "name", "calls", "failed", "tokens", "cost", "models"]
    if not session:
        columns.insert(3, "runs")
    for col in columns:
        table.add_column(col, no_wrap=col in ("id", "started (UTC)"))
    for r in rows:
        unknown = f" + {r['unknown_cost_calls']} unknown" if r["unknown_cost_calls"] else ""
        cells = {
            "id": r["id"] if session else r["id"][:12],  # `--session` takes a prefix
            "started (UTC)": str(r["started"])[:19].replace("T", " "),
            "name": r["name"] or "",
            "runs": r["runs"],
            "calls": r["calls"],
            "failed": r["failed_calls"],
            "tokens": f"{r['input_tokens']} in + {r['output_tokens']} out",
            "cost": format_usd(r["cost_usd"]) + unknown,
            "models": r["models"] or "",
        }
        table.add_row(*(Text(str(cells[c])) for c in columns))
    _console().print(table)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from cpo.checks import check_endpoint
    from cpo.costs import CostTracker, price_book_for
    from cpo.endpoints import FILE_NAME, EndpointNotes
    from cpo.ledger import Ledger
    from cpo.settings import Settings

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


def cmd_review(args: argparse.Namespace) -> int:
    from rich.text import Text

    from cpo.review import record_decisions, review_items

    items = review_items(args.run_dir)
    approve = list(args.approve)
    if args.approve_rest:
        decided = set(approve) | set(args.reject)
        approve += [i.variant.variant_id for i in items if not i.screening["blocked"] and i.decision is None
                    and i.variant.variant_id not in decided]  # fmt: skip
    if approve or args.reject:
        left = record_decisions(
            args.run_dir, approve=approve, reject=args.reject, reviewer=args.reviewer, reason=args.reason
        )
        say(f"recorded {len(approve)} approval(s) and {len(args.reject)} rejection(s) by {args.reviewer}")
        if left:
            say(f"{left} variant(s) still await a decision")
        else:
            say(f"every variant is decided: cpo run --resume {args.run_dir}")
        return 0
    out = _console()
    for item in items:
        v, screening = item.variant, item.screening
        state = "blocked" if screening["blocked"] else (item.decision or {}).get("decision", "awaiting decision")
        out.rule(Text(f"{v.variant_id}  ({v.segment} / {v.tone})  {state}"))
        say(f"{v.subject}\n")
        say(v.body)
        say("")
        for c in v.citations:
            say(f"[{c.id}] {c.title} ({c.section})")
        severities = ", ".join(f"{k} {n}" for k, n in screening.get("severities", {}).items())
        verdict = "; ".join(screening["reasons"]) or "passed"
        say(f"screening ({screening['backend']}): {severities or 'none'}; {verdict}")
    waiting = sum(1 for i in items if not i.screening["blocked"] and i.decision is None)
    say(f"{waiting} of {len(items)} variant(s) await a decision: cpo review {args.run_dir} --approve ID ... "
        "--reject ID ... --reviewer NAME --reason TEXT")  # fmt: skip
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from cpo.audit import AUDIT_FILE, recorded_heads, verify
    from cpo.errors import InputError

    if not (args.run_dir / "run.json").is_file():
        raise InputError(f"{args.run_dir} has no run.json: not a cpo run directory")
    run_id, heads = recorded_heads(args.run_dir)
    verdict = verify(args.run_dir / AUDIT_FILE, run_id, heads)
    if verdict.ok:
        anchors = " and ".join(k for k, h in heads.items() if h is not None) or "nothing (no head recorded)"
        say(f"ok: {verdict.rows} rows, head {verdict.head[:16]}, matching {anchors}")
        return 0
    say(f"error: {args.run_dir / AUDIT_FILE}: {verdict.problem}", stderr=True)
    return 1


def cmd_index(args: argparse.Namespace) -> int:
    import os

    from cpo.content import load_snippets
    from cpo.settings import Settings

    snippets = list(load_snippets().values())
    if os.environ.get("AZURE_SEARCH_ENDPOINT", "").strip():
        from cpo.agents.azure_search import AzureSearchIndex

        remote = AzureSearchIndex.from_env()
        remote.build(snippets)
        say(f"uploaded {len(snippets)} snippets to Azure AI Search index {os.environ.get('AZURE_SEARCH_INDEX')}")
        return 0
    from cpo.agents.sqlite_index import SqliteFtsIndex
    from cpo.campaign_cli import INDEX_FILE

    path = (args.out or Settings().runs_dir) / INDEX_FILE
    local = SqliteFtsIndex(path)
    try:
        local.build(snippets)
    finally:
        local.close()
    say(f"indexed {len(snippets)} snippets in {path}")
    return 0


COMMANDS = {
    "run": cmd_run,
    "review": cmd_review,
    "audit": cmd_audit,
    "index": cmd_index,
    "generate": cmd_generate,
    "try-prompts": cmd_try_prompts,
    "costs": cmd_costs,
    "check": cmd_check,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a command and turn expected errors into one line on stderr and an exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if args.command is None:
        parser.print_help()
        return 2
    _setup_logging()
    args.session_name = shlex.join(["cpo", *(sys.argv[1:] if argv is None else argv)])
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        say("interrupted", stderr=True)
        return 130
    except Exception as exc:
        return _fail(exc)


def _fail(exc: Exception) -> int:
    """The one place an error becomes a line and an exit code; anything unexpected keeps its traceback."""
    from cpo.errors import CpoError

    if isinstance(exc, CpoError):
        say(f"error: {exc}", stderr=True)
        return exc.exit_code
    import openai

    from cpo.runner import one_line

    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        say(f"error: the endpoint refused the credentials: {one_line(exc)}", stderr=True)
        return 2
    if isinstance(exc, openai.OpenAIError):
        say(f"error: the model endpoint failed: {one_line(exc)}", stderr=True)
        return 1
    raise exc


if __name__ == "__main__":
    sys.exit(main())
