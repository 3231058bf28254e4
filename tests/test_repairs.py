"""Emails a real model gets right: cpo's greeting and sign-off, normalizations, targeted and converging repairs,
JSON mode, method refusals and memory, the grounding judge, and the trace of one email.

These run against the project's Azure-protocol test server on loopback (its OpenAI-compatible /v1 route),
with scripted replies; nothing here reaches a real model.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import pytest
from azure_server import JSON_SCHEMA_UNSUPPORTED_BODY, error, ok
from langchain_core.tracers.base import BaseTracer
from langchain_core.tracers.schemas import Run

from cpo import ContentBundle, CostTracker, EmailRequest, EmailVariant, Settings, build_chat_model
from cpo.core.errors import ConfigError
from cpo.core.models import GREETING_TAG, EmailDraft
from cpo.email.chain import build_email_chain
from cpo.email.normalize import body_as_sent, normalize, word_count
from cpo.email.prompts import PromptSet
from cpo.email.validation import ValidationLimits, validate_draft
from cpo.llm.endpoints import EndpointNotes
from cpo.llm.offline import OfflineChatModel, draft_email, read_brief

BUNDLE = ContentBundle.load()
SEGMENT = "High-Value Recent"
MODEL = "qwen2.5"


def good(request: EmailRequest) -> dict[str, Any]:
    """A valid answer: the paragraphs only, as the prompt asks."""
    return draft_email(read_brief(PromptSet.load().render(request, ValidationLimits())))  # type: ignore[arg-type]


def chain_for(server: Any, *, notes: EndpointNotes | None = None, **extra: Any) -> Any:
    settings = Settings(openai_base_url=f"{server.endpoint}/v1", model_name=MODEL, **extra)
    return build_email_chain(build_chat_model(settings), settings=settings, notes=notes or EndpointNotes())


def as_json(draft: dict[str, Any]) -> str:
    return json.dumps(draft)


# -- greeting, sign-off and placeholders -----------------------------------------------------------


def test_cpo_writes_the_greeting_with_a_merge_tag_and_the_sign_off() -> None:
    request = BUNDLE.request(SEGMENT, "friendly")
    variant = build_email_chain(OfflineChatModel()).invoke(request)
    assert variant.valid, variant.validation.reasons
    first, *_, last = variant.body.split("\n\n")
    assert first == f"Hi {GREETING_TAG},"
    assert last == request.sender.sign_off
    # The limits apply to the body as sent, greeting and sign-off included, merge tag read as one word.
    assert variant.validation.body_words == word_count(variant.body)
    assert word_count(f"Hi {GREETING_TAG},") == 2


def test_a_known_first_name_replaces_the_merge_tag() -> None:
    request = BUNDLE.request(SEGMENT, "friendly").model_copy(update={"merge_fields": {"first_name": "Ana"}})
    variant = build_email_chain(OfflineChatModel()).invoke(request)
    assert variant.body.startswith("Hi Ana,\n\n") and GREETING_TAG not in variant.body


def test_only_cpos_own_merge_tag_is_accepted_as_a_placeholder() -> None:
    request = BUNDLE.request(SEGMENT, "control")
    paragraphs = good(request)["body"]
    sent = body_as_sent(request, paragraphs)
    draft = EmailDraft(subject="Your upgrade offer", body=sent, citations=good(request)["citations"])
    assert validate_draft(draft, request).valid
    for other in ("{{ last_name }}", "[Your Name]", "[Shop URL]", '{{ first_name | default: "friend" }}'):
        bad = draft.model_copy(update={"body": sent.replace("Best regards,", f"Best regards, {other}")})
        report = validate_draft(bad, request)
        assert "placeholder" in {i.code for i in report.issues}, other


def test_the_prompt_leaves_nothing_to_invent_and_names_the_json_keys() -> None:
    request = BUNDLE.request(SEGMENT, "urgent")
    system, _ = PromptSet.load().render(request, ValidationLimits())
    text = str(system.content)
    assert '"subject" (a string)' in text and '"body"' in text and '"citations"' in text
    assert 'We write the greeting ("Hi there,") and the sign-off' in text
    assert "The Northwind Plus team" in text and "square brackets" in text
    # 3 paragraphs of 50-60 words plus cpo's 8 words of greeting and sign-off sit inside 150-200.
    assert "3 short paragraphs" in text and "50-60 words each" in text


# -- normalizations -----------------------------------------------------------------------------------


def test_normalizations_are_a_closed_recorded_list() -> None:
    raw = EmailDraft(
        subject="**Subject:** Your Gold upgrade",
        body="Dear [Customer Name],\n\nA **great** offer for __you__.\n\nBest regards,\n[Your Name]\n[Your Position]",
        citations=[],
    )
    clean, changes = normalize(raw)
    assert clean.subject == "Your Gold upgrade"
    assert clean.body == "A great offer for you."
    assert [c.code for c in changes] == ["subject_label", "markdown_emphasis", "greeting_replaced", "sign_off_replaced"]


@pytest.mark.parametrize(
    ("subject", "body", "expected_subject", "expected_body", "codes"),
    [
        # real-model text (Qwen2.5-Coder-1.5B, held-out batch 2): a greeting run into the first sentence and a
        # sign-off run on after the last, on the same lines as the text
        (
            "Urgent: Join Northwind Plus for 2,000 Bonus Points",
            "Hi there! Your first member order is close.\n\nJoin today! Best regards, The Northwind Plus team",
            "Join Northwind Plus for 2,000 Bonus Points",
            "Your first member order is close.\n\nJoin today!",
            ["subject_label", "greeting_replaced", "sign_off_replaced"],
        ),
        (
            "Reminder - join before the next sale",
            "Hello, Bronze members! With Plus you save.",
            "Join before the next sale",
            "With Plus you save.",
            ["subject_label", "greeting_replaced"],
        ),
        # not greetings, not sign-offs, not labels: left alone
        ("Urgent news", "Hiking season is here! Yes.", "Urgent news", "Hiking season is here! Yes.", []),
        (
            "Important: save",
            "We hope you enjoy it. Cheerful help awaits",
            "Important: save",
            "We hope you enjoy it. Cheerful help awaits",
            [],
        ),
    ],
)
def test_a_greeting_sign_off_or_label_run_into_the_text_is_removed_and_nothing_else(
    subject: str, body: str, expected_subject: str, expected_body: str, codes: list[str]
) -> None:
    clean, changes = normalize(EmailDraft(subject=subject, body=body, citations=[]))
    assert (clean.subject, clean.body) == (expected_subject, expected_body)
    assert [c.code for c in changes] == codes


def test_normalization_never_truncates_or_pads() -> None:
    long_subject = "A" + " very" * 30 + " long subject"
    raw = EmailDraft(subject=long_subject, body="One short paragraph.", citations=[])
    clean, changes = normalize(raw)
    assert clean.subject == long_subject and clean.body == "One short paragraph." and changes == []


@pytest.mark.live_server
def test_a_normalized_email_is_valid_and_says_what_was_changed(live_server: Any) -> None:
    request = BUNDLE.request(SEGMENT, "informational")
    answer = good(request)
    answer["subject"] = f"Subject: {answer['subject']}"
    answer["body"] = f"Dear [Customer Name],\n\n{answer['body']}\n\nBest regards,\n[Your Name]"
    live_server.script(MODEL, ok(as_json(answer), model=MODEL))
    variant = chain_for(live_server).invoke(request)
    assert variant.valid, variant.validation.reasons
    assert {n.code for n in variant.normalizations} == {"subject_label", "greeting_replaced", "sign_off_replaced"}
    assert not variant.valid_before_normalization
    assert variant.attempts == 1 and "[" not in variant.body
    assert variant.to_row()["normalizations"] == 3


# -- targeted, converging repairs ---------------------------------------------------------------------


@pytest.mark.live_server
def test_a_subject_only_violation_gets_a_small_subject_only_call(live_server: Any) -> None:
    request = BUNDLE.request(SEGMENT, "urgent")
    answer = good(request)
    long_subject = "Gold members: your Northwind Plus upgrade offer is waiting for you right now"
    assert len(long_subject) > 60
    live_server.script(
        MODEL, ok(as_json({**answer, "subject": long_subject}), model=MODEL), ok("Your Gold upgrade offer", model=MODEL)
    )
    variant = chain_for(live_server).invoke(request)
    assert variant.valid, variant.validation.reasons
    assert variant.subject == "Your Gold upgrade offer" and variant.attempts == 2
    assert [s.step for s in variant.steps] == ["draft", "subject"]
    fix = live_server.requests[1]
    assert "response_format" not in fix and "tools" not in fix  # plain text, not a whole structured email
    assert fix.get("max_completion_tokens", fix.get("max_tokens")) == 96
    prompt = fix["messages"][-1]["content"]
    assert f"the subject is {len(long_subject)} characters; rewrite it in at most 60" in prompt
    assert answer["body"][:40] not in prompt  # the body is not sent again
    assert variant.steps[1].input_tokens < variant.steps[0].input_tokens / 3


@pytest.mark.live_server
def test_the_repair_names_each_violation_with_its_measured_value_and_target(live_server: Any) -> None:
    request = BUNDLE.request(SEGMENT, "urgent")
    answer = good(request)
    short = {**answer, "body": answer["body"].split("\n\n")[0], "citations": answer["citations"][:1]}
    live_server.script(MODEL, ok(as_json(short), model=MODEL), ok(as_json(answer), model=MODEL))
    variant = chain_for(live_server).invoke(request)
    assert variant.valid and [s.step for s in variant.steps] == ["draft", "rewrite"]
    repair = live_server.requests[1]["messages"][-1]["content"]
    words = word_count(body_as_sent(request, short["body"]))
    assert f"the body is {words} words with greeting and sign-off (limit 150-200)" in repair
    assert f"your paragraphs are {words - 8} words: add to them to 142-192 words in total" in repair
    assert "the email cites 1 valid snippet(s); cite at least 2 of:" in repair


@pytest.mark.live_server
def test_a_short_body_gets_one_more_paragraph_not_a_rewrite(live_server: Any) -> None:
    request = BUNDLE.request(SEGMENT, "urgent")
    answer = good(request)
    parts = answer["body"].split("\n\n")
    dropped = parts.pop(2)  # a whole paragraph missing: too short, nothing else wrong
    live_server.script(
        MODEL,
        ok(as_json({**answer, "body": "\n\n".join(parts)}), model=MODEL),
        ok(f"Paragraph: {dropped}", model=MODEL),
    )
    variant = chain_for(live_server).invoke(request)
    assert variant.valid, variant.validation.reasons
    assert [s.step for s in variant.steps] == ["draft", "extend"]
    extend = live_server.requests[1]
    assert "tools" not in extend and "response_format" not in extend
    assert "Write 3 sentences to add to it (47-62 words in all)" in extend["messages"][-1]["content"]
    assert extend["max_tokens"] == 180
    body_paragraphs = variant.body.split("\n\n")
    assert body_paragraphs[-3] == dropped  # inserted before the closing paragraph, label removed


@pytest.mark.live_server
def test_a_long_body_gets_its_longest_paragraph_shortened(live_server: Any) -> None:
    request = BUNDLE.request(SEGMENT, "urgent")
    answer = good(request)
    parts = answer["body"].split("\n\n")
    padding = (
        " Members tell us they value this benefit every single week of the year."
        " Busy offices plan their supply runs around it."
        " Teachers stock classrooms before term starts without a second trip."
        " Small shops keep shelves full during the holiday rush."
        " Families order school supplies in one go each autumn."
        " Our warehouses keep popular lines ready to ship."
    )
    longest = parts[1] + padding
    live_server.script(
        MODEL,
        ok(as_json({**answer, "body": "\n\n".join([parts[0], longest, *parts[2:]])}), model=MODEL),
        ok(parts[1], model=MODEL),
    )
    variant = chain_for(live_server).invoke(request)
    assert variant.valid, variant.validation.reasons
    assert [s.step for s in variant.steps] == ["draft", "shorten"]
    prompt = live_server.requests[1]["messages"][-1]["content"]
    assert f"This paragraph of it is {len(longest.split())} words" in prompt
    assert parts[0][:30] not in prompt  # only the paragraph to cut is sent


@pytest.mark.live_server
def test_a_problem_in_one_paragraph_is_repaired_in_that_paragraph_only(live_server: Any) -> None:
    request = BUNDLE.request(SEGMENT, "urgent")
    answer = good(request)
    parts = answer["body"].split("\n\n")
    broken = parts[1].replace(".", " at [Shop URL].", 1)
    live_server.script(
        MODEL,
        ok(as_json({**answer, "body": "\n\n".join([parts[0], broken, *parts[2:]])}), model=MODEL),
        ok(parts[1], model=MODEL),
    )
    variant = chain_for(live_server).invoke(request)
    assert variant.valid, variant.validation.reasons
    assert [s.step for s in variant.steps] == ["draft", "paragraph"]
    prompt = live_server.requests[1]["messages"][-1]["content"]
    assert "[Shop URL]" in prompt and parts[0][:30] not in prompt


@pytest.mark.live_server
def test_a_repeated_answer_is_not_asked_for_again_the_same_way(live_server: Any) -> None:
    request = BUNDLE.request(SEGMENT, "friendly")
    answer = good(request)
    bad = {**answer, "citations": ["nonexistent-snippet"]}
    live_server.script(
        MODEL, ok(as_json(bad), model=MODEL), ok(as_json(bad), model=MODEL), ok(as_json(answer), model=MODEL)
    )
    variant = chain_for(live_server).invoke(request)
    assert variant.valid, variant.validation.reasons
    assert [s.step for s in variant.steps] == ["draft", "rewrite", "fresh"]
    assert [s.repeated for s in variant.steps] == [False, True, False]
    _first, rewrite, fresh = live_server.requests
    assert "temperature" not in rewrite and "seed" not in rewrite
    assert fresh["temperature"] == 0.9 and fresh["seed"] == 1002  # varied sampling
    # A fresh conversation: the repeated draft is not in it to be copied again.
    assert len(fresh["messages"]) == 2 and "An earlier draft of this email broke these rules" in str(fresh["messages"])


@pytest.mark.live_server
def test_repairs_stop_at_max_repairs_and_the_paid_draft_is_kept(live_server: Any) -> None:
    request = BUNDLE.request(SEGMENT, "friendly")
    bad = {**good(request), "citations": []}
    live_server.script(MODEL, *[ok(as_json({**bad, "subject": f"Offer {i}"}), model=MODEL) for i in range(3)])
    variant = chain_for(live_server).invoke(request)
    assert not variant.valid and variant.attempts == 3 and len(live_server.requests) == 3
    assert variant.subject == "Offer 2" and "too_few_citations" in {i.code for i in variant.validation.issues}


# -- JSON mode --------------------------------------------------------------------------------------------


@pytest.mark.live_server
def test_json_mode_parses_the_shapes_small_models_answer_with(live_server: Any) -> None:
    request = BUNDLE.request(SEGMENT, "control")
    answer = good(request)
    wrapped = {"email": {**answer, "body": answer["body"].split("\n\n")}}  # seen from Qwen2.5 1.5B
    live_server.script(MODEL, ok(as_json(wrapped), model=MODEL))
    variant = chain_for(live_server, structured_output_method="json_mode", prompt_profile="full").invoke(request)
    assert variant.valid, variant.validation.reasons
    assert live_server.requests[0]["response_format"] == {"type": "json_object"}
    assert '"subject" (a string)' in live_server.requests[0]["messages"][0]["content"]


@pytest.mark.live_server
def test_a_json_error_names_the_field(live_server: Any) -> None:
    request = BUNDLE.request(SEGMENT, "control")
    answer = good(request)
    live_server.script(
        MODEL,
        ok(as_json({"subject": "Hi", "citations": answer["citations"]}), model=MODEL),
        ok(as_json(answer), model=MODEL),
    )
    # the full profile asks for the email itself (a guided one asks for a plan: tests/test_guided.py)
    variant = chain_for(live_server, structured_output_method="json_mode", prompt_profile="full").invoke(request)
    assert variant.valid and variant.attempts == 2
    repair = live_server.requests[1]["messages"][-1]["content"]
    assert "field 'body': Field required" in repair


# -- method refusals and memory -----------------------------------------------------------------------------


@pytest.mark.live_server
def test_a_refusal_is_counted_apart_and_the_method_is_remembered_across_processes(
    live_server: Any, tmp_path: Any
) -> None:
    request = BUNDLE.request(SEGMENT, "urgent")
    notes_file = tmp_path / "endpoints.json"
    live_server.script(MODEL, error(500, JSON_SCHEMA_UNSUPPORTED_BODY), ok(tool_args=good(request), model=MODEL))
    tracker = CostTracker()
    chain = chain_for(live_server, notes=EndpointNotes(notes_file), prompt_profile="full")
    variant = chain.invoke(request, {"callbacks": [tracker]})
    assert variant.valid
    assert tracker.session.refused_calls == 1 and tracker.session.failed_calls == 0 and tracker.session.calls == 1
    saved = json.loads(notes_file.read_text())["endpoints"]
    assert [v["method"] for v in saved.values()] == ["function_calling"]

    # A new process (new notes object, same file) starts with the method that worked: no second refusal.
    live_server.reset()
    live_server.script(MODEL, ok(tool_args=good(request), model=MODEL))
    again = chain_for(live_server, notes=EndpointNotes(notes_file), prompt_profile="full")
    assert again.method == "function_calling"
    assert again.invoke(request).valid and len(live_server.requests) == 1
    assert "tools" in live_server.requests[0]


@pytest.mark.live_server
def test_a_refusal_is_recorded_apart_in_the_ledger(live_server: Any, tmp_path: Any) -> None:
    from cpo.accounting.ledger import Ledger

    request = BUNDLE.request(SEGMENT, "urgent")
    live_server.script(MODEL, error(500, JSON_SCHEMA_UNSUPPORTED_BODY), ok(tool_args=good(request), model=MODEL))
    tracker = CostTracker()
    tracker.use_ledger(Ledger(tmp_path / "ledger.sqlite"), session_name="t")
    chain_for(live_server, prompt_profile="full").invoke(request, {"callbacks": [tracker]})
    (session,) = tracker.ledger.sessions()  # type: ignore[union-attr]
    tracker.close()
    assert session["calls"] == 1 and session["failed_calls"] == 0 and session["refused_calls"] == 1


# -- the grounding judge ----------------------------------------------------------------------------------


def judge_reply(sentence: int) -> str:
    return json.dumps({"unsupported": [{"sentence": sentence, "reason": "no snippet says this"}]})


@pytest.mark.live_server
def test_the_judges_unsupported_sentences_are_repaired_and_billed(live_server: Any) -> None:
    request = BUNDLE.request(SEGMENT, "informational")
    answer = good(request)
    live_server.script(
        MODEL,
        ok(tool_args=answer, model=MODEL),
        ok(judge_reply(2), model=MODEL),
        ok(tool_args=answer, model=MODEL),
        ok(json.dumps({"unsupported": []}), model=MODEL),
    )
    tracker = CostTracker()
    variant = chain_judge(live_server).invoke(request, {"callbacks": [tracker]})
    assert [s.step for s in variant.steps] == ["draft", "judge", "rewrite", "judge"]
    assert variant.valid and variant.attempts == 2
    judge_request = live_server.requests[1]
    assert judge_request["response_format"] == {"type": "json_object"}
    assert "1. " + variant.subject in judge_request["messages"][0]["content"]
    repair = live_server.requests[2]["messages"][-1]["content"]
    assert "the snippets do not support" in repair and "no snippet says this" in repair
    assert tracker.session.calls == 4 == variant.usage.calls  # the judge is billed to the email


@pytest.mark.live_server
def test_an_unreadable_verdict_fails_closed(live_server: Any) -> None:
    request = BUNDLE.request(SEGMENT, "informational")
    live_server.script(MODEL, ok(tool_args=good(request), model=MODEL), ok("I think it is fine.", model=MODEL))
    variant = chain_judge(live_server, max_repairs=0).invoke(request)
    assert not variant.valid and "judge_failed" in {i.code for i in variant.validation.issues}


def chain_judge(server: Any, **kwargs: Any) -> Any:
    settings = Settings(
        openai_base_url=f"{server.endpoint}/v1",
        model_name=MODEL,
        structured_output_method="function_calling",
        prompt_profile="full",  # whole emails, rewritten in the same conversation
    )
    return build_email_chain(build_chat_model(settings), settings=settings, judge=True, notes=EndpointNotes(), **kwargs)


def test_the_offline_drafter_cannot_judge() -> None:
    with pytest.raises(ConfigError, match="cannot judge"):
        build_email_chain(OfflineChatModel(), judge=True)


# -- traceable steps -----------------------------------------------------------------------------------


class Collect(BaseTracer):
    def __init__(self) -> None:
        super().__init__()
        self.runs: list[Run] = []

    def _persist_run(self, run: Run) -> None:
        self.runs.append(run)


def children(run: Run) -> list[str]:
    return [c.name for c in sorted(run.child_runs, key=lambda r: r.dotted_order or "")]


@pytest.mark.live_server
def test_one_email_is_one_named_run_with_a_child_run_per_step(live_server: Any) -> None:
    request = BUNDLE.request(SEGMENT, "urgent")
    answer = good(request)
    live_server.script(
        MODEL,
        ok(tool_args={**answer, "subject": "x" * 70}, model=MODEL),
        ok("Your Gold upgrade offer", model=MODEL),
    )
    tracer = Collect()
    chain = chain_for(live_server, structured_output_method="function_calling", prompt_profile="full")
    variant = chain.invoke(request, {"callbacks": [tracer]})
    (root,) = tracer.runs
    assert root.name == "email High-Value Recent / urgent" and root.run_type == "chain"
    assert children(root) == ["draft", "validate", "repair: subject", "validate"]
    draft, first_check = sorted(root.child_runs, key=lambda r: r.dotted_order or "")[:2]
    assert [c.run_type for c in draft.child_runs] == ["llm"]  # the model call sits under its step
    assert first_check.outputs is not None and first_check.outputs["valid"] is False
    assert str(root.id) == variant.run_id


def test_the_chain_has_typed_input_and_output_schemas() -> None:
    chain = build_email_chain(OfflineChatModel())
    assert chain.get_input_schema() is EmailRequest and chain.get_output_schema() is EmailVariant
    assert chain.InputType is EmailRequest and chain.OutputType is EmailVariant


def test_a_run_name_given_by_the_caller_wins() -> None:
    tracer = Collect()
    build_email_chain(OfflineChatModel()).invoke(
        BUNDLE.request(SEGMENT, "urgent"), {"callbacks": [tracer], "run_name": "mine"}
    )
    assert tracer.runs[0].name == "mine"
    assert isinstance(tracer.runs[0].id, UUID)


@pytest.mark.live_server
def test_one_repair_round_fixes_each_failing_part_once(live_server: Any) -> None:
    """A subject fix and a paragraph fix are one repair: each part that failed is rewritten once, subject first."""
    request = BUNDLE.request(SEGMENT, "urgent")
    answer = good(request)
    parts = answer["body"].split("\n\n")
    broken = parts[1].replace(".", " at [Shop URL].", 1)
    draft = {**answer, "subject": "x" * 70, "body": "\n\n".join([parts[0], broken, *parts[2:]])}
    live_server.script(
        MODEL, ok(as_json(draft), model=MODEL), ok("Your Gold upgrade", model=MODEL), ok(parts[1], model=MODEL)
    )
    settings = Settings(openai_base_url=f"{live_server.endpoint}/v1", model_name=MODEL)
    chain = build_email_chain(build_chat_model(settings), settings=settings, notes=EndpointNotes(), max_repairs=1)
    variant = chain.invoke(request)
    assert variant.valid, variant.validation.reasons
    assert [s.step for s in variant.steps] == ["draft", "subject", "paragraph"]
    assert variant.attempts == 2 and variant.usage.calls == 3


@pytest.mark.live_server
def test_an_openai_compatible_server_gets_the_output_limit_as_max_tokens(live_server: Any) -> None:
    """llama-cpp-python's server reads only `max_tokens`; `max_completion_tokens` alone was ignored there."""
    request = BUNDLE.request(SEGMENT, "friendly")
    live_server.script(MODEL, ok(as_json(good(request)), model=MODEL))
    chain_for(live_server, max_output_tokens=640).invoke(request)
    sent = live_server.requests[0]
    assert sent["max_tokens"] == 640 and "max_completion_tokens" not in sent


@pytest.mark.live_server
def test_problems_in_two_paragraphs_are_fixed_paragraph_by_paragraph_in_one_round(live_server: Any) -> None:
    request = BUNDLE.request(SEGMENT, "urgent")
    answer = good(request)
    parts = answer["body"].split("\n\n")
    first, second = (parts[i].replace(".", " at [Shop URL].", 1) for i in (1, 2))
    draft = {**answer, "body": "\n\n".join([parts[0], first, second, *parts[3:]])}
    live_server.script(MODEL, ok(as_json(draft), model=MODEL), ok(parts[1], model=MODEL), ok(parts[2], model=MODEL))
    variant = chain_for(live_server).invoke(request)
    assert variant.valid, variant.validation.reasons
    assert [s.step for s in variant.steps] == ["draft", "paragraph", "paragraph"] and variant.attempts == 2
    assert f"Paragraph: {first}\n" in live_server.requests[1]["messages"][-1]["content"]
    assert f"Paragraph: {second}\n" in live_server.requests[2]["messages"][-1]["content"]


@pytest.mark.live_server
def test_a_failed_repair_call_keeps_the_paid_draft(live_server: Any) -> None:
    """A repair answered with an HTTP 400 (not retried) does not lose the draft already paid for."""
    request = BUNDLE.request(SEGMENT, "urgent")
    answer = good(request)
    live_server.script(
        MODEL,
        ok(as_json({**answer, "subject": "x" * 70}), model=MODEL),
        error(400, {"error": {"code": "bad_request", "message": "context length exceeded"}}),
    )
    tracker = CostTracker()
    variant = chain_for(live_server).invoke(request, {"callbacks": [tracker]})
    assert not variant.valid and variant.body.startswith("Hi ")  # the paid draft, kept
    assert {i.code for i in variant.validation.issues} >= {"subject_length", "repair_failed"}
    assert tracker.session.calls == 2 and tracker.session.failed_calls == 1


@pytest.mark.live_server
def test_the_python_api_keeps_endpoint_notes_beside_a_configured_ledger(live_server: Any, tmp_path: Any) -> None:
    request = BUNDLE.request(SEGMENT, "urgent")
    live_server.script(MODEL, error(500, JSON_SCHEMA_UNSUPPORTED_BODY), ok(tool_args=good(request), model=MODEL))
    settings = Settings(
        openai_base_url=f"{live_server.endpoint}/v1", model_name=MODEL, ledger_path=str(tmp_path / "l.sqlite")
    )
    build_email_chain(build_chat_model(settings), settings=settings).invoke(request)
    (note,) = json.loads((tmp_path / "endpoints.json").read_text())["endpoints"].values()
    assert note["method"] == "function_calling"
