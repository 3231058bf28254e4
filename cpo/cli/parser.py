"""The `cpo` argument parser: every command and option, declared once; standard library only (fast `--help`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cpo.core.errors import ExitCode

# The tones as `cpo.core.models.TONES` lists them (a test keeps the two equal): the parser imports no pydantic.
TONES = ("urgent", "informational", "friendly", "control")
# The platforms `cpo export` writes for (`cpo.campaign.mail.platforms.PLATFORMS`; a test keeps the two the same).
PLATFORM_NAMES = ("liquid", "braze", "iterable", "mailchimp", "customerio", "sendgrid")
LIMITS_HELP = """\
--limits FILE is YAML with any of these keys (defaults in brackets):
  subject_min_chars [1], subject_max_chars [60]      subject length in characters
  body_min_words [150], body_max_words [200]         body length in words
  min_citations [2]                                  supplied snippets the email must cite
  urgency_phrases [act now, last chance, ...]         phrases counted in the subject
  max_urgency_phrases [1]                            more than this many in a subject is a violation
  allowed_caps [USD, FAQ, NOTE]                      all-caps words the subject may contain"""
EXIT_CODES = ExitCode.describe()


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34)


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line and exit code 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> Any:
        self.exit(ExitCode.BAD_INPUT, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _version() -> str:
    from cpo.core.version import __version__

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


def _email_options(
    p: argparse.ArgumentParser, *, repairs: int | None, shown_repairs: int | None = None, content: bool = False
) -> None:
    """How emails are drafted and checked, declared once for run, generate and try-prompts.

    `content` adds the hand-written profiles and snippets that generate and try-prompts work on. `cpo run`
    leaves --max-repairs unset (None) so that a resumed run can tell it was not given.
    """
    shown = repairs if shown_repairs is None else shown_repairs
    if content:
        p.add_argument("--segments", type=Path, metavar="FILE", help="segments file (JSON/YAML); default: the sample")
        p.add_argument("--content", type=Path, metavar="DIR", help="directory of approved snippets (*.md)")
    p.add_argument("--prompts", type=Path, metavar="DIR", help="directory overriding prompt files")
    p.add_argument("--limits", type=Path, metavar="FILE", help="YAML file overriding validation limits (below)")
    p.add_argument(
        "--max-repairs",
        type=_positive_int(0, 5),
        default=repairs,
        metavar="N",
        help=f"repair rounds for a failing draft (each rewrites every failing part once), 0-5 [{shown}]",
    )
    if content:
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cpo",
        description="Customer Personalization Orchestrator: personalized, citation-grounded upgrade emails.",
        epilog=EXIT_CODES,
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

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
    _email_options(run, repairs=None, shown_repairs=2)
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
    run.add_argument(
        "--platform",
        choices=PLATFORM_NAMES,
        metavar="NAME",
        help=f"at the end, also export for an email platform ({', '.join(PLATFORM_NAMES)}); see cpo export",
    )

    generate = commands.add_parser("generate", help="generate one email and print it", epilog=LIMITS_HELP)
    generate.add_argument("--segment", required=True, help="segment name, e.g. 'High-Value Recent'")
    generate.add_argument("--tone", choices=TONES, default="friendly", help="[friendly]")
    _email_options(generate, repairs=2, content=True)
    generate.add_argument("--json", action="store_true", dest="as_json", help="print the EmailVariant as JSON")

    tries = commands.add_parser(
        "try-prompts",
        help="try the three tone prompts on one segment; exit 1 if a check fails",
        epilog=LIMITS_HELP,
    )
    tries.add_argument("--segment", help="segment name [the first one]")
    _email_options(tries, repairs=0, content=True)

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

    export = commands.add_parser(
        "export",
        help="export a finished run's sendable emails and audience for an email platform",
        description="Write RUN_DIR/exports/<platform>/ (or --out DIR): each sendable variant's HTML and text "
        "template in the platform's merge syntax (checked by rendering it with that syntax's engine), the "
        "audience CSV in the columns its import expects, and manifest.json. Refused unless the run's templates "
        "and send list are what its audit passed. Import steps per platform: docs/platforms.md.",
    )
    export.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    export.add_argument("--platform", required=True, choices=PLATFORM_NAMES, metavar="NAME",
                        help=f"one of {', '.join(PLATFORM_NAMES)}")  # fmt: skip
    export.add_argument("--out", type=Path, metavar="DIR", help="folder to write [RUN_DIR/exports/<platform>]")

    _results_commands(commands)

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


OUTCOME_FORMATS = ("generic", "sendgrid", "customerio")
METRIC_NAMES = ("delivered", "opened", "clicked", "converted", "unsubscribed", "bounced")


def _results_commands(commands: Any) -> None:
    """`cpo analyze` and `cpo report`: the experiment's results, read back into the run directory."""
    analyze = commands.add_parser(
        "analyze",
        help="read a run's outcomes (a platform's export, or simulated) and write its statistics and report",
        description="Join outcomes to the run's assignments (by assigned arm: intention to treat) and write "
        "RUN_DIR/analysis.json, outcomes.csv and report.html: rates with Wilson intervals, lift against control "
        "with intervals, pooled z-tests with Holm-adjusted p-values, a sample-ratio check, the smallest "
        "detectable lift, the unsubscribe guardrail and a one-sentence verdict. Observed unsubscribes, bounces "
        "and spam complaints are added to suppress_next.csv for the next run's --suppress. Formats: "
        "docs/results.md.",
    )
    analyze.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    source = analyze.add_mutually_exclusive_group(required=True)
    source.add_argument("--outcomes", type=Path, metavar="FILE", help="the email platform's engagement export (CSV)")
    source.add_argument(
        "--simulate", action="store_true", help="simulate outcomes from each customer's history (no effect unless "
        "--effect says so); the report says the data is simulated",
    )  # fmt: skip
    analyze.add_argument("--platform", choices=OUTCOME_FORMATS, default="generic", metavar="NAME",
                         help=f"the export's format: one of {', '.join(OUTCOME_FORMATS)} [generic]")  # fmt: skip
    analyze.add_argument("--map", action="append", default=[], metavar="COLUMN=FIELD", dest="mapping",
                         help="name one of the file's columns (repeat for more): FIELD is customer_id, email, event, "
                         f"url, complained or a metric ({', '.join(METRIC_NAMES)})")  # fmt: skip
    analyze.add_argument("--conversions", type=Path, metavar="FILE",
                         help="customer ids that converted (CSV with a customer_id column): the only outcome the "
                         "holdout has")  # fmt: skip
    analyze.add_argument("--primary", choices=METRIC_NAMES, default="clicked", metavar="METRIC",
                         help="the metric the verdict is about [clicked]")  # fmt: skip
    sim = analyze.add_argument_group("simulation (with --simulate)")
    sim.add_argument("--seed", type=_positive_int(0, 2**32 - 1), metavar="N", help="seed of the simulated outcomes [1]")
    sim.add_argument("--effect", action="append", default=[], metavar="ARM[:METRIC]=X",
                     help="multiply an arm's chance of a metric by X (ARM=X: clicks and conversions; repeat for "
                     "more) [no effect]")  # fmt: skip
    sim.add_argument("--bounce-rate", type=float, metavar="P", help="share of emails that bounce [0.02]")
    sim.add_argument("--unsubscribe-rate", type=float, metavar="P",
                     help="share of delivered emails whose reader unsubscribes [0.003]")  # fmt: skip
    sim.add_argument("--conversion-rate", type=float, metavar="P",
                     help="share of customers who convert, holdout included [0.02]")  # fmt: skip

    report = commands.add_parser(
        "report",
        help="(re)build a run's report.html from its files and analysis.json",
        description="Write RUN_DIR/report.html: one self-contained page (charts inline, no script, opens offline) "
        "with the verdict, lift by arm and by segment, guardrail, sample-ratio check, power, the safety and "
        "review summary, each variant and the run's cost.",
    )
    report.add_argument("run_dir", type=Path, metavar="RUN_DIR")
