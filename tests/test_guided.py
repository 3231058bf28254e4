"""Guided composition for small models: the model writes a subject, an opening and a closing and picks facts by
number; cpo lays out the email from the offer and the snippets' own sentences, fits its length, and checks it
like any draft. Chain tests run against the project's loopback test server (`tests/azure_server.py`).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from azure_server import ok
from langchain_core.messages import AIMessage

from cpo import ContentBundle, Settings, ValidationLimits, build_chat_model, build_email_chain
from cpo.core.models import EmailDraft, EmailRequest, GuidedDraft, ValidationIssue
from cpo.email.guided import PRICED, assemble, assemble_checked, facts_of, read_plan, states_offer
from cpo.email.normalize import body_as_sent, normalize, paragraphs, word_count
from cpo.email.prompts import PromptSet, profile_for
from cpo.email.validation import validate_draft
from cpo.llm.endpoints import EndpointNotes

BUNDLE = ContentBundle.load()
PROMPTS = PromptSet.load()
LIMITS = ValidationLimits()
MODEL = "qwen2.5"


def request_for(segment: str = "New Customer", tone: str = "friendly") -> EmailRequest:
    return BUNDLE.request(segment, tone)


def plan(**changes: Any) -> GuidedDraft:
    base = {
        "subject": "Free 2-day delivery on every order",
        "opening": "Thank you for shopping with us this year.",
        "facts": [1, 2, 6],
        "closing": "Join Northwind Plus from your account page whenever it suits you.",
    }
    return GuidedDraft.model_validate({**base, **changes})


def sent(request: EmailRequest, draft: EmailDraft) -> EmailDraft:
    clean, _ = normalize(draft)
    return clean.model_copy(update={"body": body_as_sent(request, clean.body)})


# -- assembly ---------------------------------------------------------------------------------------------


def test_the_email_is_the_opening_and_the_offer_then_the_chosen_facts_as_written_then_the_closing() -> None:
    request = request_for()
    facts = facts_of(request)
    draft = assemble(request, plan(), LIMITS)
    parts = paragraphs(draft.body)

    assert parts[0] == f"Thank you for shopping with us this year. {request.offer}"
    assert parts[-1] == "Join Northwind Plus from your account page whenever it suits you."
    middle = " ".join(parts[1:-1])
    for number in (1, 2, 6):
        assert facts[number - 1].text in middle  # word for word, as the snippet says it
    assert set(draft.citations) == {request.snippets[f.snippet].id for f in facts if f.text in middle}
    report = validate_draft(sent(request, draft), request, LIMITS)
    assert report.valid, report.reasons


def test_facts_sit_with_their_snippet_in_the_snippets_order_whatever_order_they_were_picked_in() -> None:
    request = request_for()
    facts = facts_of(request)
    body = assemble(request, plan(facts=[6, 2, 1]), LIMITS).body
    positions = [body.index(facts[n - 1].text) for n in (1, 2, 6)]
    assert positions == sorted(positions)


def test_an_opening_that_states_the_offers_figures_is_not_followed_by_the_offer_again() -> None:
    request = request_for()
    opening = "For $9.99 a month, Northwind Plus brings free 2-day delivery on every order with no minimum."
    assert states_offer(opening, request.offer)
    draft = assemble(request, plan(opening=opening), LIMITS)
    assert paragraphs(draft.body)[0] == opening and request.offer not in draft.body


def test_too_many_facts_are_cut_from_the_least_important_and_too_few_are_topped_up() -> None:
    request = request_for()
    facts = facts_of(request)
    every = assemble(request, plan(facts=list(range(len(facts), 0, -1))), LIMITS)  # all, least useful first
    assert word_count(body_as_sent(request, every.body)) <= LIMITS.body_max_words
    assert facts[-1].text in every.body  # picked first: kept
    one = assemble(request, plan(facts=[3]), LIMITS)
    words = word_count(body_as_sent(request, one.body))
    assert LIMITS.body_min_words <= words <= LIMITS.body_max_words
    assert facts[2].text in one.body and len(one.citations) >= LIMITS.min_citations


def test_numbers_out_of_range_and_repeats_are_ignored_and_a_fact_the_opening_says_is_not_said_twice() -> None:
    request = request_for()
    facts = facts_of(request)
    opening = f"Here is something new. {facts[1].text}"
    draft = assemble(request, plan(opening=opening, facts=[0, 99, 2, 2, -1, 1]), LIMITS)
    assert draft.body.count(facts[1].text) == 1
    assert draft.body.count(facts[0].text) == 1


def test_facts_true_for_only_some_readers_are_never_offered() -> None:
    """A segment of several tiers: a sentence naming one tier's benefit is not in the list (it is not true for
    every reader), as in the template control."""
    request = request_for("High-Value Recent")
    mixed = request.model_copy(update={"segment": request.segment.model_copy(update={"audience": ["Gold", "Silver"]})})
    assert any("Gold members" in f.text for f in facts_of(request))
    assert not any("Gold members" in f.text for f in facts_of(mixed))


# -- reading the reply ------------------------------------------------------------------------------------


def test_a_plan_is_read_from_tool_arguments_or_json_in_the_shapes_small_models_write() -> None:
    args = {"subject": "S", "opening": "O.", "facts": [3, 1], "closing": "C."}
    tool = AIMessage("", tool_calls=[{"name": "GuidedDraft", "args": args, "id": "1"}])
    assert read_plan(tool)[0] == GuidedDraft.model_validate(args)
    loose = {**args, "facts": ["S3", "1"]}
    wrapped = AIMessage("Here it is:\n```json\n" + json.dumps({"email": loose}) + "\n```")
    assert read_plan(wrapped)[0] == GuidedDraft.model_validate(args)
    assert read_plan(AIMessage(json.dumps({**args, "facts": "3, 1"})))[0] == GuidedDraft.model_validate(args)


def test_a_whole_email_instead_of_a_plan_is_taken_as_the_draft_and_a_broken_plan_names_the_field() -> None:
    whole = {"subject": "S", "body": "B.", "citations": ["plus-pricing"]}
    assert read_plan(AIMessage(json.dumps(whole)))[0] == EmailDraft.model_validate(whole)
    plan_, error = read_plan(AIMessage(json.dumps({"subject": "S", "facts": [1], "closing": "C."})))
    assert plan_ is None and error is not None and "field 'opening': Field required" in error


# -- which prompt ----------------------------------------------------------------------------------------------


def test_the_guided_profile_is_for_small_models_behind_function_calling_or_json_mode() -> None:
    assert profile_for(False, "auto", small_model=True) == "guided"
    assert profile_for(False, "auto", small_model=False) == "full"  # a first try of json_schema
    assert profile_for(True, "auto", small_model=False) == "compact"
    assert profile_for(False, "full", small_model=True) == "full"  # the setting decides
    system, user = PROMPTS.render(request_for(), LIMITS, "guided")
    assert '"opening"' in str(system.content) and "Facts:\n1. " in str(user.content)
    assert "[plus-pricing]" not in str(user.content)  # facts by number: no snippet id to paste into the email


@pytest.mark.live_server
@pytest.mark.parametrize("method", ["function_calling", "json_mode"])
def test_a_small_model_is_sent_the_guided_prompt_and_its_plan_becomes_a_valid_email(
    method: str, live_server: Any
) -> None:
    request = request_for("New Customer", "urgent")
    answer = plan(opening="Hi there! Good news is one decision away.").model_dump()
    reply = ok(tool_args=answer, model=MODEL) if method == "function_calling" else ok(json.dumps(answer), model=MODEL)
    live_server.script(MODEL, reply)
    settings = Settings(openai_base_url=f"{live_server.endpoint}/v1", model_name=MODEL, structured_output_method=method)
    variant = build_email_chain(build_chat_model(settings), settings=settings, notes=EndpointNotes()).invoke(request)

    (body,) = live_server.requests
    assert body["messages"][0]["content"].startswith("You help write one marketing email")
    if method == "function_calling":
        assert body["tool_choice"]["function"]["name"] == "GuidedDraft"
    assert variant.valid, variant.validation.reasons
    assert variant.prompt_version == PROMPTS.version("urgent", "guided") != PROMPTS.version("urgent", "full")
    assert "Hi there!" not in variant.body  # the model's greeting was replaced by cpo's, and recorded
    assert [n.code for n in variant.normalizations] == ["greeting_replaced"]
    assert request.offer in variant.body and facts_of(request)[0].text in variant.body


@pytest.mark.live_server
def test_a_plan_that_cannot_be_read_is_asked_for_again_from_the_start_with_what_failed(live_server: Any) -> None:
    """A whole-email problem gets a fresh plan, in the guided prompt: the assembled email is not a plan the model
    could edit, so nothing of it is sent back."""
    request = request_for("New Customer", "friendly")
    live_server.script(
        MODEL, ok("Sure! Here is your email.", model=MODEL), ok(tool_args=plan().model_dump(), model=MODEL)
    )
    settings = Settings(
        openai_base_url=f"{live_server.endpoint}/v1", model_name=MODEL, structured_output_method="json_mode"
    )
    variant = build_email_chain(build_chat_model(settings), settings=settings, notes=EndpointNotes()).invoke(request)
    assert variant.valid, variant.validation.reasons
    assert [s.step for s in variant.steps] == ["draft", "fresh"]
    again = live_server.requests[-1]["messages"]
    assert len(again) == 2 and again[0]["content"].startswith("You help write")
    assert "keys subject, opening, facts, closing" in again[-1]["content"]  # what failed, named


# -- what a check finds at fault is left out, not sent back --------------------------------------------------


def check_for(request: EmailRequest) -> Any:
    return lambda draft: validate_draft(sent(request, draft), request, LIMITS)


def test_a_framing_sentence_at_fault_is_left_out_and_the_rest_of_the_models_words_kept() -> None:
    """Real-model openings (held-out batch 2): a status claim beside a sentence that is fine."""
    request = request_for()
    bad = plan(
        opening="You have been selected for Northwind Plus. Good news is one decision away.",
        closing="Congratulations, you've joined the Northwind Plus family! Start shopping today.",
    )
    assert not check_for(request)(assemble(request, bad, LIMITS)).valid  # as assembled, it fails
    draft, left_out = assemble_checked(request, bad, LIMITS, check_for(request))
    assert left_out == [
        "You have been selected for Northwind Plus.",
        "Congratulations, you've joined the Northwind Plus family!",
    ]
    assert draft.body.startswith("Good news is one decision away. " + request.offer)
    assert paragraphs(draft.body)[-1] == "Start shopping today."
    assert check_for(request)(draft).valid


def test_an_opening_left_out_entirely_leaves_the_offer_to_open_the_email() -> None:
    request = request_for()
    draft, left_out = assemble_checked(
        request, plan(opening="You've joined Northwind Plus!"), LIMITS, check_for(request)
    )
    assert left_out == ["You've joined Northwind Plus!"]
    assert paragraphs(draft.body)[0] == request.offer and check_for(request)(draft).valid


def test_a_fact_at_fault_is_left_out_and_the_length_fitted_again() -> None:
    request = request_for()
    facts = facts_of(request)
    target = facts[0].text

    def check(draft: EmailDraft) -> Any:  # a check that finds fault with one fact sentence
        report = validate_draft(sent(request, draft), request, LIMITS)
        if target not in draft.body:
            return report
        issue = ValidationIssue(code="offer_condition", message="m", field="body", excerpts=[target])
        return report.model_copy(update={"valid": False, "issues": [*report.issues, issue]})

    draft, left_out = assemble_checked(request, plan(facts=[1, 2, 6]), LIMITS, check)
    assert left_out == [target] and target not in draft.body
    assert LIMITS.body_min_words <= word_count(body_as_sent(request, draft.body)) <= LIMITS.body_max_words


@pytest.mark.live_server
def test_sentences_left_out_are_recorded_and_no_repair_is_paid_for(live_server: Any) -> None:
    request = request_for("New Customer", "friendly")
    live_server.script(
        MODEL,
        ok(tool_args={**plan().model_dump(), "opening": "You've joined us! Delivery just got easier."}, model=MODEL),
    )
    settings = Settings(
        openai_base_url=f"{live_server.endpoint}/v1", model_name=MODEL, structured_output_method="function_calling"
    )
    variant = build_email_chain(build_chat_model(settings), settings=settings, notes=EndpointNotes()).invoke(request)
    assert variant.valid, variant.validation.reasons
    assert [(n.code, n.detail) for n in variant.normalizations] == [("sentence_left_out", "You've joined us!")]
    assert not variant.valid_before_normalization and len(live_server.requests) == 1  # no repair call paid for


@pytest.mark.parametrize(
    "sentence",
    [  # real-model framing (held-out batch 2), each false or unsupported for its reader
        "Join Northwind Plus today and start enjoying all the benefits of our Silver membership while saving "
        "$20.88 annually.",
        "We're excited to offer you a special upgrade to Bronze membership at Northwind Plus.",
        "Join Northwind Plus today and start enjoying the benefits of our premium membership, including access to "
        "exclusive deals and discounts.",
        "Join now and start your journey towards financial freedom.",
    ],
)
def test_framing_that_states_a_figure_a_benefit_or_a_tier_is_left_out(sentence: str) -> None:
    request = BUNDLE.request("Lapsed Silver", "friendly")
    draft, left_out = assemble_checked(
        request, plan(opening="Here is something worth a look.", closing=sentence), LIMITS, check_for(request)
    )
    assert left_out == [sentence] and sentence not in draft.body
    assert "Here is something worth a look." in draft.body


def test_an_offer_without_a_price_is_followed_by_the_price_whatever_facts_were_picked() -> None:
    segment = BUNDLE.segments[0].model_copy(update={"offer": "Gold members who join Northwind Plus get a $25 credit."})
    request = request_for().model_copy(update={"offer": segment.offer})
    facts = facts_of(request)
    price = next(f.text for f in facts if f.text.startswith("Northwind Plus costs"))
    draft = assemble(request, plan(facts=[6]), LIMITS)
    assert price in draft.body
    assert PRICED.search(request_for().offer)  # "$9.99 a month" in the offer: nothing is forced in
