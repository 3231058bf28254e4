"""Prompt tokens of every shipped segment x tone, against the 700-token prompt budget.

The budget was 400 until the prompt spelled out the structure, the greeting hand-off and the JSON
keys (about 260 tokens more), which a small model needs to get an email right.

For each sample segment and tone (the default 3 snippets per request) the rendered messages are
counted with `cpo.count_tokens(messages, "gpt-4o-mini")` (o200k_base, with OpenAI's per-message
overhead). The JSON schema that structured output adds to every request is counted separately and
is NOT part of the budget figure: it is captured from the request body langchain-openai + the
openai SDK actually send for the email chain (method json_schema), through an
in-memory httpx transport, so no server or network is involved.

Usage: python benchmarks/prompt_tokens.py [--budget 700]
Exit code 1 if the largest prompt exceeds the budget.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from typing import Any

import httpx
from langchain_core.utils.function_calling import convert_to_openai_tool

from cpo import ContentBundle, EmailDraft, Settings, build_chat_model, build_email_chain, count_tokens
from cpo.core.models import TONES
from cpo.email.prompts import PromptSet
from cpo.email.validation import ValidationLimits

MODEL = "gpt-4o-mini"


class _Captured(Exception):
    """Raised by the capture transport once the request body is recorded."""


def wire_response_format() -> dict[str, Any]:
    """The `response_format` of a structured-output request exactly as it goes on the wire."""
    bodies: list[dict[str, Any]] = []

    def capture(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        raise _Captured

    settings = Settings(
        azure_endpoint="http://capture.invalid",
        azure_deployment=MODEL,
        azure_api_key="capture",
        max_retries=0,
    )
    with httpx.Client(transport=httpx.MockTransport(capture)) as client:
        chain = build_email_chain(build_chat_model(settings, http_client=client), settings=settings)
        with contextlib.suppress(Exception):  # the capture transport always aborts the call
            chain.invoke(ContentBundle.load().request("High-Value Recent", "urgent"))
    if not bodies or "response_format" not in bodies[0]:
        raise SystemExit("could not capture the structured-output request body")
    return bodies[0]["response_format"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=700, help="prompt-token budget per request (default 700)")
    args = parser.parse_args(argv)

    bundle = ContentBundle.load()
    prompts = PromptSet.load()
    limits = ValidationLimits()

    rows: list[tuple[str, str, int, int]] = []
    for segment in bundle.segments:
        for tone in TONES:
            request = bundle.request(segment.name, tone)
            messages = prompts.render(request, limits)
            rows.append((segment.name, tone, len(request.snippets), count_tokens(messages, MODEL)))

    width = max(len("segment"), *(len(r[0]) for r in rows))
    print(f"Prompt tokens per request ({MODEL}, o200k_base, cpo.count_tokens incl. message overhead)")
    print(f"{'segment':<{width}}  {'tone':<13}  {'snippets':>8}  {'tokens':>6}")
    print(f"{'-' * width}  {'-' * 13}  {'-' * 8}  {'-' * 6}")
    for name, tone, snippets, tokens in rows:
        print(f"{name:<{width}}  {tone:<13}  {snippets:>8}  {tokens:>6}")
    counts = [r[3] for r in rows]
    low, high = min(counts), max(counts)
    print()
    print(f"requests: {len(counts)}   min {low}   mean {statistics.fmean(counts):.1f}   max {high}")

    response_format = wire_response_format()
    schema = response_format["json_schema"]["schema"]
    schema_tokens = count_tokens(json.dumps(schema), MODEL)
    format_tokens = count_tokens(json.dumps(response_format), MODEL)
    tool_tokens = count_tokens(json.dumps([convert_to_openai_tool(EmailDraft)]), MODEL)
    print()
    strict = response_format["json_schema"].get("strict")
    overhead = [
        (f"json_schema schema as sent (strict={strict})", schema_tokens),
        ("whole response_format object as sent", format_tokens),
        ("function_calling fallback: tools=[EmailDraft]", tool_tokens),
        ("max prompt + json_schema schema", high + schema_tokens),
    ]
    print("Structured-output overhead per request (not included in the budget figure):")
    for label, tokens in overhead:
        print(f"  {label:<46} {tokens:>4}")
    print()
    verdict = "PASS" if high <= args.budget else "FAIL"
    print(f"budget {args.budget}: {verdict} (max {high})")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
