"""First-draft prompt tokens of every shipped segment x tone, in both prompt profiles, side by side.

- compact: what an endpoint that enforces json_schema gets (Azure; CPO_PROMPT_PROFILE=auto):
  `system-compact.txt` + `user-compact.txt` and the slim json_schema schema. Budget: 400 tokens for
  everything but the snippet text (rules, offer, profile and schema).
- full: the whole-email guidance (`system.txt` + `user.txt`) and the `tools=[EmailDraft]` function, sent on a
  first try of json_schema at an OpenAI-compatible server or when CPO_PROMPT_PROFILE=full. Budget: 700 tokens
  for its messages (the schema aside, as before).
- guided: what a small model behind function calling or JSON mode gets (`system-guided.txt` +
  `user-guided.txt`, `tools=[GuidedDraft]`): it writes the framing and picks facts by number.

Each request (the default 3 snippets) is counted as the project's test server bills it: the rendered
messages with `cpo.count_tokens(messages, "gpt-4o-mini")` (o200k_base, OpenAI's per-message overhead) plus
the JSON of the schema the method sends. The schema is captured from the request body langchain-openai +
the openai SDK actually send for the email chain, through an in-memory httpx transport, so no server or
network is involved. "non-snippet" is the total minus the snippet lines (`[id] text`).

Usage: python benchmarks/prompt_tokens.py [--compact-budget 400] [--budget 700]
Exit code 1 if a profile exceeds its budget.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from typing import Any

import httpx

from cpo import ContentBundle, Settings, build_chat_model, build_email_chain, count_tokens
from cpo.core.models import TONES
from cpo.email.guided import fact_lines
from cpo.email.prompts import Profile, PromptSet, snippet_block
from cpo.email.validation import ValidationLimits

MODEL = "gpt-4o-mini"
PROFILES: tuple[Profile, ...] = ("compact", "full", "guided")


class _Captured(Exception):
    """Raised by the capture transport once the request body is recorded."""


def wire_body(settings: Settings) -> dict[str, Any]:
    """The first request body the email chain sends with these settings (aborted before it leaves)."""
    bodies: list[dict[str, Any]] = []

    def capture(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        raise _Captured

    with httpx.Client(transport=httpx.MockTransport(capture)) as client:
        chain = build_email_chain(build_chat_model(settings, http_client=client), settings=settings)
        with contextlib.suppress(Exception):  # the capture transport always aborts the call
            chain.invoke(ContentBundle.load().request("High-Value Recent", "urgent"))
    if not bodies:
        raise SystemExit("could not capture the email request body")
    return bodies[0]


def schema_tokens() -> dict[Profile, tuple[str, int]]:
    """Per profile: what its method adds to every request, and its tokens as the test server counts them."""
    azure = Settings(
        azure_endpoint="http://capture.invalid", azure_deployment=MODEL, azure_api_key="capture", max_retries=0
    )

    def small(profile: str) -> Settings:
        return Settings(
            openai_base_url="http://capture.invalid/v1",
            model_name=MODEL,
            structured_output_method="function_calling",
            prompt_profile=profile,
            max_retries=0,
        )

    compact = wire_body(azure).get("response_format") or {}
    tools, plan_tools = wire_body(small("full")).get("tools"), wire_body(small("guided")).get("tools")
    if compact.get("type") != "json_schema" or not tools or not plan_tools:
        raise SystemExit("could not capture the json_schema schema and the function-calling tools")
    schema = compact["json_schema"]["schema"]
    return {
        "compact": ("json_schema schema", count_tokens(json.dumps(schema), MODEL)),
        "full": ("tools=[EmailDraft]", count_tokens(json.dumps(tools), MODEL)),
        "guided": ("tools=[GuidedDraft]", count_tokens(json.dumps(plan_tools), MODEL)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compact-budget", type=int, default=400, help="compact non-snippet tokens (default 400)")
    parser.add_argument("--budget", type=int, default=700, help="full profile's messages, per request (default 700)")
    args = parser.parse_args(argv)

    bundle = ContentBundle.load()
    prompts = PromptSet.load()
    limits = ValidationLimits()
    schemas = schema_tokens()

    rows: list[tuple[str, str, int, dict[Profile, tuple[int, int]]]] = []
    full_messages: list[int] = []
    for segment in bundle.segments:
        for tone in TONES:
            request = bundle.request(segment.name, tone)
            snippets = count_tokens(snippet_block(request), MODEL)
            figures: dict[Profile, tuple[int, int]] = {}
            for profile in PROFILES:
                messages = count_tokens(prompts.render(request, limits, profile), MODEL)
                total = messages + schemas[profile][1]
                # the guided prompt lists the facts (snippet sentences, numbered) in place of the snippets
                source = count_tokens(fact_lines(request), MODEL) if profile == "guided" else snippets
                figures[profile] = (total - source, total)
                if profile == "full":
                    full_messages.append(messages)
            rows.append((segment.name, tone, snippets, figures))

    width = max(len("segment"), *(len(r[0]) for r in rows))
    print(f"First-draft prompt tokens per request ({MODEL}, o200k_base, as the test server bills them)")
    for profile, what in (
        ("compact", "json_schema endpoints (Azure)"),
        ("full", "CPO_PROMPT_PROFILE=full, or a first try of json_schema on an OpenAI-compatible server"),
        ("guided", "function calling / JSON mode on an OpenAI-compatible server (a small model)"),
    ):
        label, tokens = schemas[profile]
        print(f"  {profile:<7} = {what}, schema sent: {label} ({tokens} tokens)")
    print("  guided's non-snippet part leaves out its numbered fact lines (the snippets' sentences) instead")
    print()
    print(f"{'':<{width}}  {'':<13}  {'snippet':>7}" + "".join(f"  {p:>19}" for p in PROFILES))
    columns = f"{'non-snippet':>11} {'total':>7}"
    print(f"{'segment':<{width}}  {'tone':<13}  {'tokens':>7}" + f"  {columns}" * len(PROFILES))
    print(f"{'-' * width}  {'-' * 13}  {'-' * 7}" + f"  {'-' * 11} {'-' * 7}" * len(PROFILES))
    for name, row_tone, snippets, figures in rows:
        cells = "".join(f"  {figures[p][0]:>11} {figures[p][1]:>7}" for p in PROFILES)
        print(f"{name:<{width}}  {row_tone:<13}  {snippets:>7}{cells}")
    print()
    for profile in PROFILES:
        non = [r[3][profile][0] for r in rows]
        totals = [r[3][profile][1] for r in rows]
        print(
            f"{profile:<7}  non-snippet: min {min(non)}  mean {statistics.fmean(non):.1f}  max {max(non)}   "
            f"total: min {min(totals)}  mean {statistics.fmean(totals):.1f}  max {max(totals)}"
        )
    print(f"full     messages only (schema aside): max {max(full_messages)}")
    print()
    compact_max = max(r[3]["compact"][0] for r in rows)
    verdicts = [
        (f"compact non-snippet budget {args.compact_budget}", compact_max <= args.compact_budget, compact_max),
        (f"full messages budget {args.budget}", max(full_messages) <= args.budget, max(full_messages)),
    ]
    for label, ok, high in verdicts:
        print(f"{label}: {'PASS' if ok else 'FAIL'} (max {high})")
    return 0 if all(ok for _, ok, _ in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
