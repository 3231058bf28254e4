"""What a finished or failed call billed, read from LangChain's result or the openai SDK's error.

A reply without usage is counted locally with tiktoken (and flagged estimated). A failed call is one
of: billed with usage (a `length` or `content_filter` finish), a refusal of the structured-output
format (no tokens, not billed), of unknown cost (timed out or cancelled after it was sent: the provider
may have billed it without saying), or an ordinary error that billed nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.outputs import ChatGeneration, LLMResult

from cpo.accounting.ledger import OK, REFUSED, UNKNOWN_COST
from cpo.core.usage import TokenCounts
from cpo.net.faults import is_format_refusal, may_have_been_billed
from cpo.net.tokens import count_text_tokens, count_tokens


@dataclass(frozen=True)
class Reading:
    """A call's outcome as the accounts record it; `counts` None means "count the reply locally"."""

    reported_model: str | None
    counts: TokenCounts | None
    status: str = OK
    text: str = ""


def read_result(response: LLMResult) -> Reading:
    """A successful call: the model the reply names and its usage (None when the provider sent none)."""
    generation = response.generations[0][0] if response.generations and response.generations[0] else None
    message = generation.message if isinstance(generation, ChatGeneration) else None
    usage = getattr(message, "usage_metadata", None)
    reported = (getattr(message, "response_metadata", None) or {}).get("model_name") or (response.llm_output or {}).get(
        "model_name"
    )
    counts = counts_from_metadata(usage) if usage else None
    return Reading(reported, counts, OK, generation.text if generation else "")


def read_error(error: BaseException) -> Reading:
    """A failed call: billed tokens if the error carries them, else a refusal, an unknown cost or nothing."""
    completion = getattr(error, "completion", None)
    usage = getattr(completion, "usage", None)
    reported = getattr(completion, "model", None)
    kind = type(error).__name__
    if usage is not None:
        return Reading(reported, counts_from_openai_usage(usage), f"error:{kind}")
    if is_format_refusal(error):
        return Reading(reported, TokenCounts(), f"{REFUSED}:{kind}")
    if may_have_been_billed(error) or isinstance(error, asyncio.CancelledError | KeyboardInterrupt):
        return Reading(reported, TokenCounts(), f"{UNKNOWN_COST}:{kind}")
    return Reading(reported, TokenCounts(), f"error:{kind}")


def counted_locally(messages: Sequence[Any], text: str, model: str) -> TokenCounts:
    """Tokens of a reply whose provider reported no usage, counted with tiktoken."""
    return TokenCounts(input_tokens=count_tokens(messages, model), output_tokens=count_text_tokens(text, model))


def counts_from_metadata(usage: dict[str, Any]) -> TokenCounts:
    details_in = usage.get("input_token_details") or {}
    details_out = usage.get("output_token_details") or {}
    return TokenCounts(
        input_tokens=int(usage.get("input_tokens") or 0),
        cached_input_tokens=int(details_in.get("cache_read") or 0),
        output_tokens=int(usage.get("output_tokens") or 0),
        reasoning_tokens=int(details_out.get("reasoning") or 0),
    )


def counts_from_openai_usage(usage: Any) -> TokenCounts:
    prompt_details = getattr(usage, "prompt_tokens_details", None)
    completion_details = getattr(usage, "completion_tokens_details", None)
    return TokenCounts(
        input_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        cached_input_tokens=int(getattr(prompt_details, "cached_tokens", 0) or 0),
        output_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        reasoning_tokens=int(getattr(completion_details, "reasoning_tokens", 0) or 0),
    )
