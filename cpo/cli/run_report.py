"""What `cpo run` prints when a run ends: the summary table (customers per segment x arm, variants valid,
cost), what was substituted, withheld or invalid, the controls cpo wrote itself (`source: template`), the
totals, and how a stopped run goes on.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from cpo.campaign.agents.load import customers_line
from cpo.campaign.stages import STAGE_LABELS
from cpo.campaign.state import INVALID
from cpo.cli.output import console, printable, quality_line, say, totals_line
from cpo.core.errors import ExitCode

if TYPE_CHECKING:
    from cpo.core.usage import UsageCounts

TEMPLATE = "template"  # the source of a control cpo wrote itself


def report(result: Any, ctx: Any, strict: bool, prior: Decimal | None) -> int:
    from cpo.campaign.rundir import OUTPUTS
    from cpo.campaign.runner import produced_line
    from cpo.core.usage import format_usd

    tracker = ctx.tracker
    variants = [v for v in result.variants if v.source != TEMPLATE]  # the model's (or the offline drafter's)
    templates = {v.segment: v for v in result.variants if v.source == TEMPLATE}
    if result.segments:
        console().print(summary_table(result))
    counts = result.counts
    if counts:
        say(customers_line(counts))
    small = result.assignment.get("small_cells", [])
    if small:
        from cpo.campaign.agents.assignment import SMALL_CELL

        segment, arm, n = min(small, key=lambda cell: cell[2])
        say(
            f"warning: {len(small)} of {len(result.assignment.get('cells', []))} segment x arm cells have fewer than "
            f"{SMALL_CELL} customers, too few to learn from (smallest: {segment} / {arm}, {n})",
            stderr=True,
        )
    held = result.delivery.get("withheld") or {}
    own = {(v.segment, v.tone): v for v in variants}

    def why(v: Any) -> str:
        if v is None:
            return "not generated (see the errors below)"
        return INVALID if not v.valid else held.get(v.variant_id, "withheld")

    for segment, arm in result.delivery.get("substituted", []):
        say(
            f"{segment} / {arm}: its variant is {why(own.get((segment, arm)))}; those customers get the control instead"
        )
    missing = result.unsent_customers
    for segment, t in templates.items():
        state = "sendable" if t.valid and t.variant_id not in held else why(t)
        say(
            f"{segment} / control: the model's control is {why(own.get((segment, 'control')))}; cpo wrote one "
            f"itself from the offer and snippets (source: template, no model call): {state}"
        )
    for segment in result.delivery.get("unsent", []):
        n = missing.get(segment)
        who = f"{n} customer(s) get nothing" if n is not None else "not sent"
        if result.per_customer:
            mine = [v for v in variants if v.segment == segment and (not v.valid or v.variant_id in held)]
            reasons = sorted({why(v).split(" by ")[0].split(":")[0] for v in mine}) or ["not generated"]
            say(f"{segment}: {who}: their own emails are {', '.join(reasons)}")
        else:
            template = f" and cpo's own is {why(templates[segment])}" if segment in templates else ""
            say(
                f"{segment}: {who}: its control is {why(own.get((segment, 'control')))}{template}, "
                "with nothing to fall back on"
            )
    dropped = result.delivery.get("address_dropped") or {}
    if dropped:
        said = ", ".join(f"{n} whose address is {reason}" for reason, n in dropped.items())
        say(f"warning: left off the send list: {said} (see assignments.csv)", stderr=True)
    for v in (v for v in result.variants if not v.valid):
        label = " (template)" if v.source == TEMPLATE else ""
        say(f"invalid {v.segment} / {v.tone}{label}: {'; '.join(v.validation.reasons)}")
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
    say(totals_line("this run" if prior is not None else "session", tracker.session))
    if len(tracker.session.by_deployment) > 1:
        say("by deployment: " + "; ".join(_deployment_usage(n, u) for n, u in tracker.session.by_deployment.items()))
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
    for warning in result.warnings:
        say(f"warning: {warning}", stderr=True)
    if missing and not result.stopped_by:
        eligible = counts.get("eligible", sum(n for _, _, n in result.assignment.get("cells", [])))
        say(
            f"not sent: {sum(missing.values())} of {eligible} customers in the campaign get no email "
            f"(segments: {', '.join(missing)}); send_list.csv leaves them out",
            stderr=True,
        )
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
    if code == ExitCode.OK and strict and any(not v.valid for v in variants):
        return ExitCode.FAILED
    return code


def summary_table(result: Any) -> Any:
    """Customers per segment x arm, each cell marked with its variant's state; variants valid and cost per segment."""
    from rich.table import Table
    from rich.text import Text

    from cpo.campaign.agents.assignment import DEFAULT_ARMS, HOLDOUT
    from cpo.core.usage import format_usd

    cells = {(s, a): n for s, a, n in result.assignment.get("cells", [])}
    arms = ([HOLDOUT] if any(a == HOLDOUT for _, a in cells) else []) + list(DEFAULT_ARMS)
    by_cell: dict[tuple[str, str], list[Any]] = {}
    templates = {v.segment: v for v in result.variants if v.source == TEMPLATE}
    for v in result.variants:
        if v.source != TEMPLATE:
            by_cell.setdefault((v.segment, v.tone), []).append(v)
    substituted = {tuple(c) for c in result.delivery.get("substituted", [])}
    unsent = set(result.delivery.get("unsent", []))
    held = result.delivery.get("withheld") or {}
    table = Table(title=Text(printable(f"cpo run {result.run_dir.name}", keep_newlines=False)))
    table.add_column("segment")
    table.add_column("customers", justify="right")
    for arm in arms:
        table.add_column(arm, justify="right")
    table.add_column("variants valid", justify="right")
    table.add_column("cost", justify="right")
    for segment in result.segments:
        row = [Text(printable(segment.name, keep_newlines=False)), Text(str(segment.size))]
        for arm in arms:
            n = cells.get((segment.name, arm))
            own = by_cell.get((segment.name, arm), [])
            invalid = sum(not v.valid for v in own)
            if n is None:
                mark = "-"
            elif arm == HOLDOUT:
                mark = ""
            elif arm == "control" and segment.name in templates and segment.name not in unsent:
                mark = " ✓ template"
            elif (segment.name, arm) in substituted:
                mark = " → control"
            elif segment.name in unsent and (not own or invalid or any(v.variant_id in held for v in own)):
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


def _deployment_usage(name: str, usage: UsageCounts) -> str:
    """'sweden 29 calls, $0.0012': one deployment of several, each priced at its own price."""
    from cpo.core.usage import format_usd

    failed = f" ({usage.failed_calls} failed)" if usage.failed_calls else ""
    unknown = f" + {usage.unknown_cost_calls} of unknown cost" if usage.unknown_cost_calls else ""
    return f"{name} {usage.calls} calls{failed}, {format_usd(usage.cost_usd)}{unknown}"
