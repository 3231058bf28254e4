"""The email chain: tones, structured output, repair, honest invalid results, per-run costs."""

from __future__ import annotations

import json
import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from azure_server import JSON_SCHEMA_UNSUPPORTED_BODY, email_drafter, error, ok, server_error
from conftest import RECORD_ENDPOINT, azure_settings, http_requests, sent_bodies

from cpo import (
    ContentBundle,
    CostTracker,
    EmailRequest,
    EmailVariant,
    Settings,
    ValidationLimits,
    build_chat_model,
    build_email_chain,
)
from cpo.core.models import TONES
from cpo.core.resources import bundled
from cpo.email.normalize import body_as_sent
from cpo.email.prompts import PromptSet
from cpo.llm.offline import draft_email, read_brief

BUNDLE = ContentBundle.load()
SEGMENT = "High-Value Recent"


def good_draft(request: EmailRequest) -> dict[str, Any]:
    """A valid answer for a request (what a well-behaved model would return)."""
    return draft_email(read_brief(PromptSet.load().render(request, ValidationLimits())))  # type: ignore[arg-type]


def azure_chain(deployment: str = "gpt-4o-mini", **kwargs: Any) -> Any:
    settings = azure_settings(deployment=deployment)
    return build_email_chain(build_chat_model(settings), settings=settings, **kwargs)


@pytest.mark.vcr
@pytest.mark.parametrize("tone", ["urgent", "informational", "friendly", "control"])
def test_each_tone_yields_a_valid_cited_email(tone: str, azure_server: Any, cassette_billed: Any) -> None:
    request = BUNDLE.request(SEGMENT, tone)  # type: ignore[arg-type]
    azure_server.script("gpt-4o-mini", ok(tool_args=good_draft(request)))
    tracker = CostTracker()
    variant: EmailVariant = azure_chain().invoke(request, config={"callbacks": [tracker]})
    assert variant.valid, variant.validation.reasons
    assert variant.tone == tone and variant.segment == SEGMENT
    assert variant.source == "azure" and variant.model == "gpt-4o-mini-2024-07-18"
    assert len(variant.citations) >= 2
    for citation in variant.citations:
        assert request.snippet(citation.id).text == citation.quote  # type: ignore[union-attr]
    assert variant.attempts == 1
    billed = cassette_billed()
    assert variant.usage.input_tokens == billed[0]["prompt_tokens"]
    assert variant.usage.cost_usd is not None and variant.usage.cost_usd > 0
    same = {"latency_s", "by_model", "by_deployment"}  # the breakdowns carry latencies of their own
    assert variant.usage.model_dump(exclude=same) == tracker.session.model_dump(exclude=same)
    assert variant.usage.by_deployment.keys() == tracker.session.by_deployment.keys() and variant.usage.by_deployment


def test_the_request_sent_uses_json_schema_and_the_tone_prompt(live_server: Any) -> None:
    request = BUNDLE.request(SEGMENT, "friendly")
    live_server.script("gpt-4o-mini", ok(tool_args=good_draft(request)))
    settings = azure_settings(live_server.endpoint)
    build_email_chain(build_chat_model(settings), settings=settings).invoke(request)
    sent = live_server.requests[0]
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["name"] == "EmailDraft"
    user = sent["messages"][1]["content"]
    assert "Tone: friendly." in user and "tier: Gold" in user
    assert all(f"[{s.id}]" in user for s in request.snippets)


# flaw -> (the flawed answer, the repair step cpo should choose, the answer to that repair)
BAD_ANSWERS = {
    "shouting_subject": (
        lambda d: {**d, "subject": d["subject"].upper()},
        "subject",
        lambda d: ok(d["subject"]),
    ),
    "invented_citation": (
        lambda d: {**d, "citations": [d["citations"][0], "press-kit-2026"]},
        "rewrite",
        lambda d: ok(tool_args=d),
    ),
    "unsupported_number": (
        lambda d: {**d, "body": f"Save 45% today. {d['body']}"},
        "paragraph",
        lambda d: ok(d["body"].split("\n\n")[0]),
    ),
}


@pytest.mark.vcr
@pytest.mark.parametrize("flaw", list(BAD_ANSWERS))
def test_a_flawed_first_answer_is_repaired_and_both_calls_are_billed(
    flaw: str, azure_server: Any, cassette_billed: Any
) -> None:
    request = BUNDLE.request(SEGMENT, "urgent")
    good = good_draft(request)
    spoil, step, fix = BAD_ANSWERS[flaw]
    azure_server.script("gpt-4o-mini", ok(tool_args=spoil(good)), fix(good))
    tracker = CostTracker()
    variant = azure_chain().invoke(request, config={"callbacks": [tracker]})
    billed = cassette_billed()
    assert variant.valid and variant.attempts == 2, variant.validation.reasons
    assert [s.step for s in variant.steps] == ["draft", step]
    assert variant.subject == good["subject"]
    assert variant.usage.calls == 2 == len(billed)
    assert variant.usage.input_tokens == sum(b["prompt_tokens"] for b in billed)
    if step == "rewrite":
        assert billed[1]["prompt_tokens"] > billed[0]["prompt_tokens"]  # the whole conversation plus violations
    else:
        assert billed[1]["prompt_tokens"] < billed[0]["prompt_tokens"] / 2  # only the part that failed
    (run,) = tracker.runs.values()
    assert run.calls == 2 and run.total_tokens == variant.usage.total_tokens


@pytest.mark.vcr
def test_a_truncated_answer_is_billed_and_retried(azure_server: Any, cassette_billed: Any, vcr: Any) -> None:
    request = BUNDLE.request(SEGMENT, "informational")
    good = good_draft(request)
    azure_server.script("gpt-4o-mini", ok(tool_args=good, finish_reason="length"), ok(tool_args=good))
    tracker = CostTracker()
    variant = azure_chain().invoke(request, config={"callbacks": [tracker]})
    billed = cassette_billed()
    assert variant.valid and variant.attempts == 2
    assert tracker.session.output_tokens == sum(b["completion_tokens"] for b in billed)
    assert billed[0]["completion_tokens"] > 0  # the cut-off answer was billed, and is counted
    repair = sent_bodies(azure_server, vcr)[1]["messages"][-1]["content"]
    assert "cut off at the output token limit" in repair


@pytest.mark.vcr
def test_repairs_exhausted_returns_invalid_with_reasons(azure_server: Any) -> None:
    request = BUNDLE.request(SEGMENT, "friendly")
    bad = BAD_ANSWERS["invented_citation"][0](good_draft(request))
    azure_server.script("gpt-4o-mini", *[ok(tool_args=bad)] * 3)
    variant = azure_chain(max_repairs=2).invoke(request)
    assert not variant.valid
    assert variant.attempts == 3 and variant.usage.calls == 3
    assert any("press-kit-2026" in reason for reason in variant.validation.reasons)
    assert [c.id for c in variant.citations] == [bad["citations"][0]]  # the invented one is not resolved


@pytest.mark.vcr
def test_unparseable_answer_is_invalid_not_a_crash(azure_server: Any) -> None:
    request = BUNDLE.request(SEGMENT, "informational")
    azure_server.script("gpt-4o-mini", ok("Sure! Here is your email: Subject: Hi"))
    tracker = CostTracker()
    variant = azure_chain(max_repairs=0).invoke(request, config={"callbacks": [tracker]})
    assert not variant.valid
    assert variant.validation.issues[0].code == "unparseable"
    assert tracker.session.calls == 1 and tracker.session.input_tokens > 0  # billed, so counted


@pytest.mark.vcr
def test_batch_and_abatch_make_one_run_per_email(azure_server: Any, cassette_billed: Any) -> None:
    requests = [BUNDLE.request(s.name, t) for s in BUNDLE.segments[:2] for t in TONES]
    # Each answer drafted from the prompt it answers: the requests arrive in any order, 4 at a time.
    azure_server.responder = email_drafter
    tracker = CostTracker()
    variants = azure_chain().batch(requests, config={"callbacks": [tracker], "max_concurrency": 4})
    assert all(v.valid for v in variants), [
        (v.tone, [s.step for s in v.steps], v.validation.reasons) for v in variants if not v.valid
    ]
    assert len(tracker.runs) == len(requests)
    for v in variants:
        assert tracker.run_usage(v.run_id).total_tokens == v.usage.total_tokens  # type: ignore[arg-type]
    assert tracker.session.input_tokens == sum(b["prompt_tokens"] for b in cassette_billed())


async def test_abatch_offline_runs_concurrently_with_one_run_each() -> None:
    requests = [BUNDLE.request(s.name, t) for s in BUNDLE.segments for t in TONES]
    tracker = CostTracker()
    variants = await build_email_chain().abatch(requests, config={"callbacks": [tracker], "max_concurrency": 8})
    assert len(tracker.runs) == len(requests) == len(variants)
    assert sum(v.usage.total_tokens for v in variants) == tracker.session.total_tokens


@pytest.mark.parametrize("segment", [s.name for s in BUNDLE.segments])
@pytest.mark.parametrize("tone", TONES)
def test_offline_model_output_passes_validation(segment: str, tone: str) -> None:
    variant = build_email_chain().invoke(BUNDLE.request(segment, tone))  # type: ignore[arg-type]
    assert variant.valid, variant.validation.reasons
    assert variant.source == "offline" and variant.model == "cpo-offline"
    assert variant.attempts == 1
    assert variant.usage.cost_usd == Decimal(0) and variant.usage.input_tokens > 0


def test_offline_model_is_deterministic_and_tones_differ() -> None:
    chain = build_email_chain()
    first = [chain.invoke(BUNDLE.request(SEGMENT, t)) for t in TONES]
    again = [chain.invoke(BUNDLE.request(SEGMENT, t)) for t in TONES]
    assert [v.body for v in first] == [v.body for v in again]
    assert len({v.subject for v in first}) == len(TONES)
    assert "Gold" not in first[-1].subject  # the control email is generic


def test_prompt_version_changes_when_a_prompt_file_changes(tmp_path: Path) -> None:
    shutil.copytree(bundled("prompts"), tmp_path / "prompts")
    request = BUNDLE.request(SEGMENT, "friendly")
    before = build_email_chain(prompts_dir=str(tmp_path / "prompts")).invoke(request).prompt_version
    (tmp_path / "prompts" / "friendly.txt").write_text("Warm, brief, and thankful.")
    after = build_email_chain(prompts_dir=str(tmp_path / "prompts")).invoke(request).prompt_version
    untouched = build_email_chain(prompts_dir=str(tmp_path / "prompts")).invoke(BUNDLE.request(SEGMENT, "urgent"))
    assert before != after
    assert untouched.prompt_version == build_email_chain().invoke(BUNDLE.request(SEGMENT, "urgent")).prompt_version


def test_a_prompt_with_an_unknown_placeholder_is_a_config_error(tmp_path: Path) -> None:
    from cpo import ConfigError

    (tmp_path / "user.txt").write_text("Segment: {segmnt}")
    with pytest.raises(ConfigError, match=r"user.txt: unknown placeholder \{segmnt\}"):
        build_email_chain(prompts_dir=str(tmp_path))


def test_empty_segment_features_are_refused() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="at least one feature"):
        EmailRequest.model_validate(
            {**BUNDLE.request(SEGMENT, "urgent").model_dump(), "segment": {"name": "x", "features": {}}}
        )


@pytest.mark.vcr
def test_openai_compatible_server_refusing_json_schema_falls_back_to_function_calling(azure_server: Any) -> None:
    """llama.cpp's server answers HTTP 500 "response_format type must be one of ..." to json_schema; that is
    a refusal of the method, not a fault: not retried, and function calling is used instead."""
    request = BUNDLE.request(SEGMENT, "urgent")
    azure_server.script(
        "llama-3.1-8b",
        error(500, JSON_SCHEMA_UNSUPPORTED_BODY),
        # asked again by function calling, in its (guided) profile: the model's choices
        ok(tool_args={"subject": 1, "opening": 1, "facts": [1, 2, 3], "closing": 1}, model="llama-3.1-8b"),
    )
    settings = Settings(openai_base_url=f"{RECORD_ENDPOINT}/v1", model_name="llama-3.1-8b")
    chain = build_email_chain(build_chat_model(settings), settings=settings)
    variant = chain.invoke(request)
    assert variant.valid and variant.source == "openai-compatible"
    # The refusal billed nothing: counted apart, not as a failed call.
    assert variant.usage.calls == 1 and variant.usage.failed_calls == 0 and variant.usage.refused_calls == 1
    assert variant.usage.cost_usd is None  # a self-hosted model has no list price: unknown, not $0


@pytest.mark.vcr
def test_json_with_raw_newlines_is_parsed_leniently(azure_server: Any) -> None:
    request = BUNDLE.request(SEGMENT, "friendly")
    good = good_draft(request)
    subject, body, cites = json.dumps(good["subject"]), good["body"].replace('"', '\\"'), json.dumps(good["citations"])
    raw = f'{{"subject": {subject}, "body": "{body}", "citations": {cites}}}'
    assert "\n" in raw  # literal newlines inside a JSON string: invalid for a strict parser
    azure_server.script("qwen2.5", ok(raw, model="qwen2.5"))
    settings = Settings(
        openai_base_url=f"{RECORD_ENDPOINT}/v1",
        model_name="qwen2.5",
        structured_output_method="json_mode",
        prompt_profile="full",  # the whole email in JSON, as the cassette recorded it
    )
    variant = build_email_chain(build_chat_model(settings), settings=settings).invoke(request)
    assert variant.valid, variant.validation.reasons
    assert variant.body == body_as_sent(request, good["body"])


@pytest.mark.vcr
def test_offline_fallback_is_used_and_marked_when_the_endpoint_keeps_failing(azure_server: Any, vcr: Any) -> None:
    settings = azure_settings(deployment="always-503", max_retries=1, offline_fallback=True)
    variant = build_email_chain(build_chat_model(settings), settings=settings).invoke(BUNDLE.request(SEGMENT, "urgent"))
    assert http_requests(azure_server, vcr) == 2  # the endpoint really was tried (and retried) first
    assert variant.valid
    assert variant.fallback_used and variant.source == "offline" and variant.model == "cpo-offline"


@pytest.mark.vcr
def test_without_fallback_a_failing_endpoint_raises(azure_server: Any) -> None:
    import openai

    settings = azure_settings(deployment="always-503", max_retries=1)
    with pytest.raises(openai.InternalServerError):
        build_email_chain(build_chat_model(settings), settings=settings).invoke(BUNDLE.request(SEGMENT, "urgent"))


def openai_compatible_chain(endpoint: str, model: str = "qwen2.5", **extra: Any) -> Any:
    settings = Settings(openai_base_url=f"{endpoint}/v1", model_name=model, **extra)
    return build_email_chain(build_chat_model(settings), settings=settings)


@pytest.mark.live_server
def test_a_burst_of_transient_500s_does_not_downgrade_the_structured_output_method(live_server: Any) -> None:
    """Before: 500s that outlasted the retries downgraded json_schema for every later call of the process."""
    import openai

    first, second = (BUNDLE.request(SEGMENT, tone) for tone in ("urgent", "friendly"))
    live_server.script(
        "qwen2.5",
        server_error(500, 10),
        server_error(500, 10),
        ok(json.dumps(good_draft(second)), model="qwen2.5"),
    )
    chain = openai_compatible_chain(live_server.endpoint, max_retries=1)
    with pytest.raises(openai.InternalServerError):
        chain.invoke(first)  # a fault, reported as one: not answered by another method
    assert chain.invoke(second).valid
    formats = [(r.get("response_format") or {}).get("type") for r in live_server.requests]
    assert formats == ["json_schema"] * 3


@pytest.mark.live_server
def test_a_400_content_filter_is_not_a_refusal_of_the_method(live_server: Any) -> None:
    import openai
    from azure_server import PROMPT_FILTERED_BODY

    live_server.script("qwen2.5", error(400, PROMPT_FILTERED_BODY))
    chain = openai_compatible_chain(live_server.endpoint)
    with pytest.raises(openai.BadRequestError) as caught:
        chain.invoke(BUNDLE.request(SEGMENT, "urgent"))
    assert caught.value.code == "content_filter"
    assert len(live_server.requests) == 1  # not retried as another structured-output method


def test_every_email_call_carries_max_tokens(live_server: Any) -> None:
    request = BUNDLE.request(SEGMENT, "friendly")
    live_server.script("gpt-4o-mini", ok(tool_args=good_draft(request)))
    settings = azure_settings(live_server.endpoint, max_output_tokens=640)
    build_email_chain(build_chat_model(settings), settings=settings).invoke(request)
    assert live_server.requests[0]["max_tokens"] == 640
