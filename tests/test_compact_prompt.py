"""The compact first prompt for endpoints that enforce json_schema: its size, when it is sent, and that it works.

The guided prompt (a small model writes the framing and picks facts, `tests/test_guided.py`) is for function
calling and JSON mode on an OpenAI-compatible server; the full prompt for a first try of json_schema there;
CPO_PROMPT_PROFILE overrides the choice.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from azure_server import JSON_SCHEMA_UNSUPPORTED_BODY, error, ok
from conftest import azure_settings, sent_bodies

from cpo import ContentBundle, EmailRequest, Settings, ValidationLimits, build_chat_model, build_email_chain
from cpo.core.errors import ConfigError
from cpo.core.models import TONES
from cpo.core.resources import bundled
from cpo.email.methods import COMPACT_JSON_SCHEMA_RESPONSE_FORMAT
from cpo.email.prompts import Profile, PromptSet, snippet_block
from cpo.llm.endpoints import EndpointNotes, endpoint_key
from cpo.llm.offline import draft_email, read_brief
from cpo.net.tokens import count_tokens

BUNDLE = ContentBundle.load()
PROMPTS = PromptSet.load()
LIMITS = ValidationLimits()
SEGMENT = "High-Value Recent"
BUDGET = 400
MODEL = "gpt-4o-mini"
CHOICES = {"subject": 1, "opening": 1, "facts": [1, 2, 3], "closing": 1}  # a guided answer
COMPACT_SCHEMA_TOKENS = count_tokens(json.dumps(COMPACT_JSON_SCHEMA_RESPONSE_FORMAT["json_schema"]["schema"]), MODEL)


def non_snippet_tokens(request: EmailRequest, profile: Profile, schema_tokens: int) -> int:
    """Rules, offer, profile and schema: the request as the test server bills it, less the snippet lines."""
    billed = count_tokens(PROMPTS.render(request, LIMITS, profile), MODEL) + schema_tokens
    return billed - count_tokens(snippet_block(request), MODEL)


def sent_profile(body: dict[str, Any], request: EmailRequest) -> str:
    """Which profile's first prompt a request body carries."""
    system = body["messages"][0]["content"]
    found = [p for p in ("compact", "full", "guided") if system == PROMPTS.render(request, LIMITS, p)[0].content]  # type: ignore[arg-type]
    return found[0] if found else "neither"


def good_draft(request: EmailRequest, profile: Profile) -> dict[str, Any]:
    """A valid answer, written by the offline drafter from that profile's prompt (it reads the same labels)."""
    brief = read_brief(PROMPTS.render(request, LIMITS, profile))
    assert brief is not None
    return draft_email(brief)


def openai_compatible(endpoint: str, model: str = "qwen2.5", **extra: Any) -> Settings:
    return Settings(openai_base_url=f"{endpoint}/v1", model_name=model, **extra)


@pytest.mark.parametrize("segment", [s.name for s in BUNDLE.segments])
def test_the_compact_prompt_besides_the_snippets_is_at_most_400_tokens(segment: str) -> None:
    for tone in TONES:
        request = BUNDLE.request(segment, tone)
        compact = non_snippet_tokens(request, "compact", COMPACT_SCHEMA_TOKENS)
        assert compact <= BUDGET, f"{segment} / {tone}: {compact} tokens"
        # The full guidance, counted the same way with the same schema, is what the compact one replaces.
        assert non_snippet_tokens(request, "full", COMPACT_SCHEMA_TOKENS) - compact >= 150


@pytest.mark.vcr
def test_with_json_schema_the_compact_prompt_is_sent_and_its_answer_passes_the_checks(
    azure_server: Any, vcr: Any, cassette_billed: Any
) -> None:
    request = BUNDLE.request(SEGMENT, "urgent")
    azure_server.script(MODEL, ok(tool_args=good_draft(request, "compact")))
    settings = azure_settings()
    variant = build_email_chain(build_chat_model(settings), settings=settings).invoke(request)
    (sent,) = sent_bodies(azure_server, vcr)
    assert sent_profile(sent, request) == "compact"
    assert sent["response_format"] == COMPACT_JSON_SCHEMA_RESPONSE_FORMAT
    # What the server billed, less the snippet lines, is within the budget: the counter is the server's.
    (billed,) = cassette_billed()
    snippets = count_tokens(snippet_block(request), MODEL)
    assert billed["prompt_tokens"] == non_snippet_tokens(request, "compact", COMPACT_SCHEMA_TOKENS) + snippets
    assert billed["prompt_tokens"] - snippets <= BUDGET
    assert variant.valid and variant.attempts == 1, variant.validation.reasons
    assert variant.prompt_version == PROMPTS.version("urgent", "compact") != PROMPTS.version("urgent", "full")


def test_with_function_calling_on_an_openai_compatible_server_the_guided_prompt_is_sent(live_server: Any) -> None:
    request = BUNDLE.request(SEGMENT, "friendly")
    live_server.script("qwen2.5", ok(tool_args=CHOICES, model="qwen2.5"))
    settings = openai_compatible(live_server.endpoint, structured_output_method="function_calling")
    variant = build_email_chain(build_chat_model(settings), settings=settings).invoke(request)
    (sent,) = live_server.requests
    assert "tools" in sent and "response_format" not in sent
    assert sent_profile(sent, request) == "guided"
    assert variant.valid and variant.prompt_version == PROMPTS.version("friendly", "guided")


@pytest.mark.parametrize(
    ("setting", "method", "expected"),
    [
        ("full", "json_schema", "full"),
        ("compact", "function_calling", "compact"),
        ("full", "json_mode", "full"),
        ("auto", "json_mode", "guided"),
    ],
)
def test_the_prompt_profile_setting_overrides_the_method(
    setting: str, method: str, expected: str, live_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CPO_PROMPT_PROFILE", setting)
    request = BUNDLE.request(SEGMENT, "informational")
    answer = CHOICES if expected == "guided" else good_draft(request, expected)  # type: ignore[arg-type]
    reply = ok(tool_args=answer, model="qwen2.5") if method == "function_calling" else ok(json.dumps(answer))
    live_server.script("qwen2.5", reply)
    settings = openai_compatible(live_server.endpoint, structured_output_method=method)
    variant = build_email_chain(build_chat_model(settings), settings=settings).invoke(request)
    (sent,) = live_server.requests
    assert sent_profile(sent, request) == expected
    assert variant.valid, variant.validation.reasons


def test_a_bad_prompt_profile_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPO_PROMPT_PROFILE", "small")
    with pytest.raises(
        ConfigError, match=r"^CPO_PROMPT_PROFILE: .*'auto', 'compact', 'full' or 'guided' \(got 'small'\)$"
    ):
        Settings()


def test_a_first_try_of_json_schema_keeps_the_full_prompt_until_the_server_answers_it(live_server: Any) -> None:
    """A small model behind an OpenAI-compatible server may refuse json_schema: the first try is sent as it
    always was; once json_schema has been answered, the emails after it get the compact prompt."""
    first, second = BUNDLE.request(SEGMENT, "urgent"), BUNDLE.request(SEGMENT, "control")
    live_server.script(
        "qwen2.5",
        ok(json.dumps(good_draft(first, "full")), model="qwen2.5"),
        ok(json.dumps(good_draft(second, "compact")), model="qwen2.5"),
    )
    settings = openai_compatible(live_server.endpoint)
    chain = build_email_chain(build_chat_model(settings), settings=settings, notes=EndpointNotes())
    assert chain.invoke(first).valid and chain.invoke(second).valid
    before, after = live_server.requests
    assert [sent_profile(before, first), sent_profile(after, second)] == ["full", "compact"]
    assert before["response_format"]["json_schema"]["schema"]["description"]  # today's schema, unchanged
    assert after["response_format"] == COMPACT_JSON_SCHEMA_RESPONSE_FORMAT


def test_after_a_move_down_from_json_schema_mid_email_the_next_calls_use_the_guided_prompt(live_server: Any) -> None:
    """The refused draft is asked again by function calling, in that method's profile (guided); the whole-email
    repair after it carries the guided prompt too, from the start (a fresh plan)."""
    request = BUNDLE.request(SEGMENT, "urgent")
    good = good_draft(request, "full")
    spoiled = {**good, "citations": [good["citations"][0], "press-kit-2026"]}  # an unknown id: rewrite the email
    live_server.script(
        "qwen2.5",
        error(500, JSON_SCHEMA_UNSUPPORTED_BODY),
        ok(tool_args=spoiled, model="qwen2.5"),  # an email where choices were asked for: asked again
        ok(tool_args=CHOICES, model="qwen2.5"),
    )
    settings = openai_compatible(live_server.endpoint)
    model = build_chat_model(settings)
    notes = EndpointNotes()
    notes.note(endpoint_key(model), method="json_schema")  # answered before: known to take json_schema
    variant = build_email_chain(model, settings=settings, notes=notes).invoke(request)
    refused, draft, rewrite = live_server.requests
    assert "response_format" in refused and "tools" in draft and "tools" in rewrite
    assert [sent_profile(b, request) for b in (refused, draft, rewrite)] == ["compact", "guided", "guided"]
    assert variant.valid and [s.step for s in variant.steps] == ["draft", "fresh"]


def test_a_prompts_folder_that_changes_only_the_full_prompt_keeps_it_with_json_schema(tmp_path: Path) -> None:
    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / "system.txt").write_text(PROMPTS.texts["system.txt"] + "\nMention the spring sale.", encoding="utf-8")
    assert PromptSet.load(folder).profile_for(True) == "full"  # the user's edit is not silently dropped
    assert PromptSet.load(folder, "compact").profile_for(True) == "compact"  # unless they ask for compact
    shutil.copy(bundled("prompts") / "system-compact.txt", folder / "system-compact.txt")
    assert PromptSet.load(folder).profile_for(True) == "compact"
    assert PromptSet.load(folder).profile_for(False) == "full"


def test_the_full_prompt_version_does_not_depend_on_the_compact_files(tmp_path: Path) -> None:
    """Runs made with the full prompt keep their prompt_version; a compact edit changes only the compact one."""
    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / "system-compact.txt").write_text(PROMPTS.texts["system-compact.txt"] + " Be brief.", encoding="utf-8")
    edited = PromptSet.load(folder)
    assert edited.version("urgent", "full") == PROMPTS.version("urgent", "full") == PROMPTS.version("urgent")
    assert edited.version("urgent", "compact") != PROMPTS.version("urgent", "compact")
