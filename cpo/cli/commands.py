"""The CLI's smaller commands: generate, try-prompts, costs, review, audit verify, index.

Each imports what it uses when it runs, so `cpo --help` stays fast; errors are raised as cpo's errors
and turned into one line and an exit code by `cpo.cli.main`.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from cpo.cli.context import CommandContext
from cpo.cli.output import console, print_email, say, tick, totals_line
from cpo.cli.parser import TONES
from cpo.core.errors import ExitCode

if TYPE_CHECKING:
    from cpo.core.models import EmailVariant


def _bundle(args: argparse.Namespace) -> Any:
    from cpo.email.content import ContentBundle

    return ContentBundle.load(args.segments, args.content, args.sender)


def cmd_generate(args: argparse.Namespace) -> int:
    bundle = _bundle(args)
    request = bundle.request(args.segment, args.tone, max_snippets=args.snippets)
    ctx = CommandContext(args)
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
        print_variant(variant)
    return ExitCode.OK if variant.valid else ExitCode.FAILED


def print_variant(v: EmailVariant) -> None:

    print_email(f"{v.segment} / {v.tone}  {tick(v.valid)}", v)
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
    ctx = CommandContext(args)
    requests = [bundle.request(name, tone, max_snippets=args.snippets) for tone in TONES[:3]]
    ctx.open_ledger(args.session_name)
    ctx.announce()
    checks = ctx.limits
    failed = 0
    out = console()
    from rich.text import Text

    try:
        for tone, request in zip(TONES[:3], requests, strict=True):
            v: EmailVariant = ctx.chain.invoke(request, config={"callbacks": [ctx.tracker]})
            codes = {i.code for i in v.validation.issues}
            out.rule(Text(f"{v.segment} / {tone}"))
            say(f"subject: {v.subject!r}")
            say(
                f"  subject length: {v.validation.subject_chars} chars "
                f"(limit {checks.subject_min_chars}-{checks.subject_max_chars}) {tick('subject_length' not in codes)}"
            )
            say(
                f"  body word count: {v.validation.body_words} words "
                f"(limit {checks.body_min_words}-{checks.body_max_words}) {tick('body_length' not in codes)}"
            )
            cites_ok = not codes & {"too_few_citations", "unknown_citation"}
            say(f"  citations found: {v.validation.citations} (need {checks.min_citations}) {tick(cites_ok)}")
            other = [
                i.message
                for i in v.validation.issues
                if i.code not in ("subject_length", "body_length", "too_few_citations", "unknown_citation")
            ]
            say(f"  other checks: {'; '.join(other) or 'none failed'} {tick(not other)}")
            say(f"  tokens: {v.usage.input_tokens} in + {v.usage.output_tokens} out, cost {v.usage.cost_display}")
            failed += not v.valid
    finally:
        ctx.tracker.close()
    out.rule("totals")
    say(totals_line("session", ctx.tracker.session))
    if failed:
        say(f"{failed} of 3 tones failed their checks")
        return ExitCode.FAILED
    say("all 3 tones passed their checks")
    return ExitCode.OK


def cmd_costs(args: argparse.Namespace) -> int:
    import json

    from cpo.accounting.ledger import Ledger
    from cpo.core.errors import InputError
    from cpo.core.settings import Settings
    from cpo.core.usage import format_usd

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
        return ExitCode.OK
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
        unknown = f" + {r['unknown_cost_calls']} unknown (possibly billed)" if r["unknown_cost_calls"] else ""
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
    console().print(table)
    return ExitCode.OK


def cmd_review(args: argparse.Namespace) -> int:
    from cpo.campaign.rundir import locked

    with locked(args.run_dir):  # decisions and a resumed run never interleave
        return _review(args)


def _review(args: argparse.Namespace) -> int:
    from cpo.campaign.review import record_decisions, review_items

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
        return ExitCode.OK
    for item in items:
        v, screening = item.variant, item.screening
        state = "blocked" if screening["blocked"] else (item.decision or {}).get("decision", "awaiting decision")
        print_email(f"{v.variant_id}  ({v.segment} / {v.tone})  {state}", v)
        severities = ", ".join(f"{k} {n}" for k, n in screening.get("severities", {}).items())
        verdict = "; ".join(screening["reasons"]) or "passed"
        say(f"screening ({screening['backend']}): {severities or 'none'}; {verdict}")
    waiting = sum(1 for i in items if not i.screening["blocked"] and i.decision is None)
    say(f"{waiting} of {len(items)} variant(s) await a decision: cpo review {args.run_dir} --approve ID ... "
        "--reject ID ... --reviewer NAME --reason TEXT")  # fmt: skip
    return ExitCode.OK


def cmd_audit(args: argparse.Namespace) -> int:
    from cpo.campaign.agents.export import TEMPLATES_FILE
    from cpo.campaign.audit import (
        recorded_heads,
        review_rows,
        unbound_templates,
        unfaithful_previews,
        unsendable_deliveries,
        verify,
    )
    from cpo.campaign.file_binding import unbound_files
    from cpo.campaign.platform_export import export_problems
    from cpo.campaign.rundir import AUDIT_FILE, RUN_FILE, read_json, read_record
    from cpo.core.errors import InputError

    if not (args.run_dir / RUN_FILE).is_file():
        raise InputError(f"{args.run_dir} has no {RUN_FILE}: not a cpo run directory")
    run_id, heads = recorded_heads(args.run_dir)
    verdict = verify(args.run_dir / AUDIT_FILE, run_id, heads)
    if not verdict.ok:
        say(f"error: {args.run_dir / AUDIT_FILE}: {verdict.problem}", stderr=True)
        return ExitCode.FAILED
    exported = args.run_dir / TEMPLATES_FILE
    problems: list[str] = []
    previews = exports = 0
    if exported.is_file():  # what is sent must be what the audit passed (and, reviewed, approved)
        flagged = bool(read_record(args.run_dir, "cannot verify").get("inputs", {}).get("review"))
        reviewed = flagged or bool(review_rows(args.run_dir / AUDIT_FILE))  # run.json alone can be edited
        exported_templates = read_json(args.run_dir, TEMPLATES_FILE, [])
        problems = unbound_templates(args.run_dir, exported_templates, reviewed)
        problems += unsendable_deliveries(args.run_dir, exported_templates)
        problems += unbound_files(args.run_dir)
        unfaithful, previews = unfaithful_previews(args.run_dir, exported_templates)
        problems += unfaithful
        unexported, exports = export_problems(args.run_dir, exported_templates)
        problems += unexported
    for problem in problems:
        say(f"error: {args.run_dir}: {problem}", stderr=True)
    if problems:
        return ExitCode.FAILED
    anchors = " and ".join(k for k, h in heads.items() if h is not None) or "nothing (no head recorded)"
    checked = f"; {TEMPLATES_FILE} and the send list are what it passed" if exported.is_file() else ""
    checked += f", and the {previews} rendered previews are what they say" if previews else ""
    checked += f"; the {exports} platform export(s) are what cpo export writes from them" if exports else ""
    say(f"ok: {verdict.rows} rows, head {verdict.head[:16]}, matching {anchors}{checked}")
    return ExitCode.OK


def cmd_export(args: argparse.Namespace) -> int:
    from cpo.campaign.platform_export import export_platform

    say(exported_line(export_platform(args.run_dir, args.platform, args.out)))
    return ExitCode.OK


def exported_line(done: Any) -> str:
    """One line saying what `cpo export` wrote (a `PlatformExport`)."""
    left = ", ".join(f"{n} whose address is {why}" for why, n in done.left_off.items())
    return (
        f"exported for {done.platform.title}: {done.templates} templates and {done.audience} audience rows in "
        f"{done.folder} (manifest.json lists them)" + (f"; left off the audience: {left}" if left else "")
    ) + (
        "; a per-customer run: each customer's own email is in messages/ (messages.csv lists them), to send one "
        "by one through the platform's transactional API"
        if done.per_customer
        else ""
    )


def cmd_index(args: argparse.Namespace) -> int:
    from cpo.campaign.backends import INDEX_FILE, uses_azure_search
    from cpo.core.settings import Settings
    from cpo.email.content import load_snippets

    settings = Settings()
    snippets = list(load_snippets().values())
    if uses_azure_search(settings):
        from cpo.campaign.backends.azure_search import AzureSearchIndex

        remote = AzureSearchIndex.from_settings(settings)
        remote.build(snippets)
        say(f"uploaded {len(snippets)} snippets to Azure AI Search index {remote.index}")
        return ExitCode.OK
    from cpo.campaign.backends.sqlite_index import SqliteFtsIndex

    path = (args.out or settings.runs_dir) / INDEX_FILE
    local = SqliteFtsIndex(path)
    try:
        local.build(snippets)
    finally:
        local.close()
    say(f"indexed {len(snippets)} snippets in {path}")
    return ExitCode.OK
