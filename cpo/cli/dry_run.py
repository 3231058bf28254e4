"""`cpo run --dry-run`: check every input, show the segments and what the emails would cost; write nothing.

The customers are loaded and segmented in memory exactly as a real run would, so a bad file fails here
with the same one-line error. The cost is a range for the first drafts, computed from their prompts
(counted locally) and the output limit; repairs add calls only for failing drafts and are not guessed.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from cpo.campaign.agents.assignment import DEFAULT_ARMS
from cpo.campaign.agents.load import customers_line
from cpo.campaign.planning import plan_campaign
from cpo.campaign.state import Inputs
from cpo.cli.output import console, printable, say
from cpo.core.errors import ExitCode
from cpo.core.usage import TokenCounts, format_usd
from cpo.net.tokens import count_tokens


def dry_run(inputs: Inputs, ctx: Any, index: Any) -> int:
    """Print the segments, their snippets and the first drafts' cost range; return the exit code (0)."""
    import duckdb
    from rich.table import Table
    from rich.text import Text

    con = duckdb.connect()
    try:
        loaded, segments, found, requests = plan_campaign(inputs, con, index)
    finally:
        con.close()

    table = Table(title=Text(printable(f"dry run: {Path(inputs['customers']).name}", keep_newlines=False)))
    for col in ("segment", "rule", "customers", "share", "emails", "snippets (retrieved)"):
        table.add_column(col, justify="right" if col in ("customers", "share", "emails") else "left")
    for s in segments:
        emails = len(DEFAULT_ARMS) if s.size else 0
        if inputs.get("per_customer"):
            emails = sum(r.segment.name == s.name for r in requests)
        used = ", ".join(found[s.name].used) if s.name in found else ""
        table.add_row(
            Text(printable(s.name, keep_newlines=False)),
            Text(printable(s.rule, keep_newlines=False)),
            Text(str(s.size)),
            Text(f"{s.share:.1%}"),
            Text(str(emails)),
            Text(printable(used, keep_newlines=False)),
        )
    console().print(table)
    say(customers_line(loaded.counts()))
    for warning in loaded.warnings():
        say(f"warning: {warning}", stderr=True)

    model = "cpo-offline" if ctx.source == "offline" else ctx.tracker.model_hint({"model": ctx.settings.model_name})
    prompts = ctx.chain.prompts
    profile = prompts.profile_for(ctx.chain.methods.enforced)  # the first drafts' profile: compact with json_schema
    prompt_tokens = sum(count_tokens(prompts.render(r, ctx.limits, profile), model) for r in requests)
    output_limit = ctx.settings.max_output_tokens
    low = ctx.tracker.prices.cost(model, TokenCounts(input_tokens=prompt_tokens), warn=False) if model else None
    high = (
        ctx.tracker.prices.cost(
            model, TokenCounts(input_tokens=prompt_tokens, output_tokens=output_limit * len(requests)), warn=False
        )
        if model
        else None
    )
    say(
        f"emails: {len(requests)} first drafts, {prompt_tokens} prompt tokens (counted locally), at most "
        f"{output_limit} output tokens each"
    )
    if low is None or high is None:
        say(f"cost: unknown, no price for model {model or '(not named: set CPO_MODEL_NAME)'}")
    else:
        say(f"cost of the first drafts: {format_usd(low)} to {format_usd(high)} ({model})")
    repairs = ctx.chain.max_repairs
    if repairs and (high is None or high > Decimal(0)):
        say(f"repairs (up to {repairs} rounds) add calls for drafts that fail their checks; cap them with --max-usd")
    say("dry run: nothing was written and no model was called")
    return ExitCode.OK
