"""`cpo analyze` and `cpo report`: a run's results, printed in brief and written in full to the run directory."""

from __future__ import annotations

import argparse
from typing import Any

from cpo.cli.output import console, say
from cpo.core.errors import CpoError, ExitCode, InputError


def cmd_analyze(args: argparse.Namespace) -> int:
    from cpo.campaign.agents.outcomes import parse_map
    from cpo.campaign.agents.simulation import SimulationRates, parse_effects
    from cpo.campaign.analysis import analyze_run, planned_shares
    from cpo.campaign.report_page import REPORT_FILE, build_report

    simulation = {"bounce": args.bounce_rate, "unsubscribe": args.unsubscribe_rate, "conversion": args.conversion_rate}
    given = {k: v for k, v in simulation.items() if v is not None}
    rates = None
    if args.simulate:
        arms = tuple(planned_shares(args.run_dir))
        rates = SimulationRates(**given, effects=parse_effects(args.effect, arms))
    elif args.effect or given or args.seed is not None:
        say("error: --seed, --effect and the --*-rate options go with --simulate, not with --outcomes", stderr=True)
        return ExitCode.BAD_INPUT
    analysis = analyze_run(
        args.run_dir,
        outcomes=args.outcomes,
        platform=args.platform,
        mapping=parse_map(args.mapping),
        conversions=args.conversions,
        simulate_seed=(1 if args.seed is None else args.seed) if args.simulate else None,
        rates=rates,
        primary=args.primary,
    )
    print_analysis(analysis)
    try:
        report = build_report(args.run_dir)
    except CpoError as exc:  # the analysis stands; a report of the analysis before it must not pass for this one
        (args.run_dir / REPORT_FILE).unlink(missing_ok=True)
        raise InputError(
            f"analysis.json and outcomes.csv are written, but report.html could not be: {exc} "
            f"(fix it, then: cpo report {args.run_dir})"
        ) from None
    files = ["analysis.json", "outcomes.csv", report.name]
    if analysis["data"].get("suppression_file"):
        files.append(f"{analysis['data']['suppression_file']} (for the next run's --suppress)")
    say(f"wrote {args.run_dir}: {', '.join(files)}")
    return ExitCode.OK


def print_analysis(analysis: dict[str, Any]) -> None:
    """The verdict, the primary metric by arm, and every warning a reader must not miss."""
    from rich.table import Table

    from cpo.campaign.agents.experiment import LABELS, signed_points
    from cpo.campaign.agents.report_tables import pct, span

    verdict = analysis["verdict"]
    metric = verdict["primary_metric"]
    say(verdict["text"])
    table = Table(title=f"{LABELS[metric]} by assigned arm")
    for column in ("arm", "n", metric, "95% CI", "vs control (points)", "95% CI ", "p (Holm)"):
        table.add_column(column, justify="left" if column == "arm" else "right")
    compared = {c["arm"]: c for c in analysis["comparisons"] if c["metric"] == metric and c["control"] == "control"}
    cells = analysis["arms"].get(metric, {})
    for arm, cell in cells.items():
        c = compared.get(arm)
        table.add_row(
            arm,
            str(cell["n"]),
            pct(cell["rate"]),
            span(cell["ci_low"], cell["ci_high"], pct),
            signed_points(c["abs_lift"]) if c else "",
            span(c["abs_ci_low"], c["abs_ci_high"]) if c else "",
            f"{c['p_holm']:.3g}" if c else "",
        )
    if cells:
        console().print(table)
    for line in warnings(analysis):
        say(f"warning: {line}")


def warnings(analysis: dict[str, Any]) -> list[str]:
    """What could make the numbers mislead: lost or unknown data, a sample-ratio mismatch, low power."""
    data, srm, out = analysis["data"], analysis["srm"], []
    if analysis["guardrail"]["tripped"]:
        out.append(f"guardrail: {analysis['guardrail']['text']}")
    if srm["flagged"]:
        out.append(
            f"sample-ratio mismatch (chi-square p = {srm['p_value']:.2g}): the arms in the outcome data are not "
            "the sizes assigned; outcomes were lost unevenly, and the comparisons may be biased"
        )
    for key, text in (
        ("missing", "assigned customers are missing from the outcome export"),
        ("unknown_ids", "ids in the export match no customer of this run"),
        ("duplicates", "rows of the export repeat a customer or an event (each counted once)"),
        ("holdout_in_export", "held-out customers appear in the export: were they emailed?"),
        ("rows_without_id", "rows of the export have no id (not counted)"),
        ("not_sent", "assigned customers were sent nothing by the run (variant withheld or rejected): counted in "
         "their arm with no engagement (intention to treat)"),
        ("complained", "spam complaints: added to the suppression list"),
    ):  # fmt: skip
        if data.get(key):
            out.append(f"{data[key]} {text}")
    unmatched = (data.get("conversions") or {}).get("unknown_ids")
    if unmatched:
        out.append(f"{unmatched} ids in the conversions file match no customer of this run")
    if data.get("ignored_events"):
        names = ", ".join(f"{k} ({n})" for k, n in data["ignored_events"].items())
        out.append(f"event types not counted as any metric: {names}")
    primary = analysis["verdict"]["primary_metric"]
    weak = [m for m in analysis["mde"] if m["metric"] == primary and m["underpowered"]]
    if weak:
        out.append(weak[0]["warning"] + (f" (and {len(weak) - 1} more comparisons)" if len(weak) > 1 else ""))
    return out


def cmd_report(args: argparse.Namespace) -> int:
    from cpo.campaign.report_page import build_report

    say(f"wrote {build_report(args.run_dir)}")
    return ExitCode.OK
