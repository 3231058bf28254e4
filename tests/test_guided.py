"""Guided composition for small models: the model chooses by number (a subject, an opening and a closing line
of its tone, the facts that matter to the reader); cpo writes the email from approved text, fits its length,
and checks it like any draft. Chain tests run against the project's loopback test server
(`tests/azure_server.py`); every shipped and benchmark segment is covered for the approved lines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from azure_server import ok
from langchain_core.messages import AIMessage

from cpo import ContentBundle, Settings, ValidationLimits, build_chat_model, build_email_chain
from cpo.core.errors import ConfigError
from cpo.core.models import TONES, EmailDraft, EmailRequest, GuidedDraft, ValidationIssue
from cpo.core.wording import says_again
from cpo.email.content import build_request, load_segments, load_snippets
from cpo.email.grounding.text import sentences
from cpo.email.guided import (
    PRICED,
    assemble,
    assemble_checked,
    facts_of,
    read_plan,
    restates,
    shares_a_word,
    subject_options,
)
from cpo.email.normalize import body_as_sent, normalize, paragraphs, word_count
from cpo.email.prompts import PromptSet, profile_for
from cpo.email.template_control import usable_sentences
from cpo.email.validation import validate_draft
from cpo.llm.endpoints import EndpointNotes

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ContentBundle.load()
PROMPTS = PromptSet.load()
LIMITS = ValidationLimits()
MODEL = "qwen2.5"
SEGMENT_FILES = [ROOT / "data" / "segments.json", *sorted((ROOT / "benchmarks" / "segments").glob("*.json"))]
CASES = [(f.stem, s) for f in SEGMENT_FILES for s in load_segments(f)]


def request_for(segment: str = "New Customer", tone: str = "friendly") -> EmailRequest:
    return BUNDLE.request(segment, tone)


def plan(**changes: Any) -> GuidedDraft:
    return GuidedDraft.model_validate({"subject": 1, "opening": 1, "facts": [1, 2, 6], "closing": 1, **changes})


def sent(request: EmailRequest, draft: EmailDraft) -> EmailDraft:
    clean, _ = normalize(draft)
    return clean.model_copy(update={"body": body_as_sent(request, clean.body)})


def check_for(request: EmailRequest) -> Any:
    return lambda draft: validate_draft(sent(request, draft), request, LIMITS)


def framing(tone: str = "friendly") -> Any:
    return PROMPTS.framings[tone]  # type: ignore[index]


# -- the email from the choices ----------------------------------------------------------------------------


def test_the_email_is_the_chosen_opening_and_the_offer_then_the_chosen_facts_as_written_then_the_closing() -> None:
    request = request_for()
    facts = facts_of(request)
    draft = assemble(request, plan(opening=2, closing=2), LIMITS, framing())
    parts = paragraphs(draft.body)

    assert parts[0] == f"{framing().openings[1]} {request.offer}"
    assert parts[-1] == framing().closings[1]
    middle = " ".join(parts[1:-1])
    for number in (1, 2, 6):
        assert facts[number - 1].text in middle  # word for word, as the snippet says it
    assert draft.subject == subject_options(request, LIMITS)[0]
    assert set(draft.citations) == {request.snippets[f.snippet].id for f in facts if f.text in middle}
    report = validate_draft(sent(request, draft), request, LIMITS)
    assert report.valid, report.reasons


def test_facts_sit_with_their_snippet_in_the_snippets_order_whatever_order_they_were_chosen_in() -> None:
    request = request_for()
    facts = facts_of(request)
    body = assemble(request, plan(facts=[6, 2, 1]), LIMITS, framing()).body
    positions = [body.index(facts[n - 1].text) for n in (1, 2, 6)]
    assert positions == sorted(positions)


def test_too_many_facts_are_cut_from_the_least_important_and_too_few_are_topped_up() -> None:
    request = request_for()
    facts = facts_of(request)
    every = assemble(request, plan(facts=list(range(len(facts), 0, -1))), LIMITS, framing())  # least useful first
    assert word_count(body_as_sent(request, every.body)) <= LIMITS.body_max_words
    assert facts[-1].text in every.body  # chosen first: kept
    one = assemble(request, plan(facts=[3]), LIMITS, framing())
    words = word_count(body_as_sent(request, one.body))
    assert LIMITS.body_min_words <= words <= LIMITS.body_max_words
    assert facts[2].text in one.body and len(one.citations) >= LIMITS.min_citations


def test_numbers_out_of_range_pick_the_first_line_and_repeated_facts_are_used_once() -> None:
    request = request_for()
    facts = facts_of(request)
    draft = assemble(request, plan(subject=99, opening=0, closing=-3, facts=[0, 99, 2, 2, -1]), LIMITS, framing())
    assert draft.subject == subject_options(request, LIMITS)[0]
    assert paragraphs(draft.body)[0].startswith(framing().openings[0])
    assert paragraphs(draft.body)[-1] == framing().closings[0]
    assert draft.body.count(facts[1].text) == 1


def test_an_offer_to_join_without_a_price_is_followed_by_the_price_whatever_facts_were_chosen() -> None:
    short = ValidationLimits(body_min_words=10, body_max_words=12, min_citations=1)  # never a top-up
    joining = request_for().model_copy(update={"offer": "Join Northwind Plus and get a $20 credit."})
    price = next(f.text for f in facts_of(joining) if f.text.startswith("Northwind Plus costs"))
    assert price in assemble(joining, plan(facts=[6]), short, framing()).body
    # an offer that names no membership (a scheduling discount), or states its price: nothing is forced in
    other = joining.model_copy(update={"offer": "Schedule repeat deliveries and save 12% on every shipment."})
    assert price not in assemble(other, plan(facts=[6]), short, framing()).body
    assert (
        PRICED.search(request_for().offer)
        and price not in assemble(request_for(), plan(facts=[6]), short, framing()).body
    )


def test_facts_true_for_only_some_readers_are_never_offered() -> None:
    """A segment of several tiers: a sentence naming one tier's benefit is not in the list (it is not true for
    every reader), as in the template control."""
    request = request_for("High-Value Recent")
    mixed = request.model_copy(update={"segment": request.segment.model_copy(update={"audience": ["Gold", "Silver"]})})
    assert any("Gold members" in f.text for f in facts_of(request))
    assert not any("Gold members" in f.text for f in facts_of(mixed))


@pytest.mark.parametrize(("source", "segment"), CASES, ids=[f"{f}:{s.name}" for f, s in CASES])
def test_every_approved_line_and_subject_option_passes_the_checks_in_every_segment_and_tone(
    source: str, segment: Any
) -> None:
    """The framing file's lines and the subject options are what a small model's emails are made of: each one,
    in every shipped and benchmark segment, makes a valid email with the default facts."""
    for tone in TONES:
        request = build_request(segment, tone, load_snippets())
        lines = framing(tone)
        subjects = subject_options(request, LIMITS)
        for n in range(1, max(len(lines.openings), len(lines.closings), len(subjects)) + 1):
            draft, changed = assemble_checked(
                request, plan(subject=n, opening=n, closing=n, facts=[]), LIMITS, lines, check_for(request)
            )
            report = check_for(request)(draft)
            assert report.valid, (tone, n, report.reasons)
            assert not [c for c in changed if not c.startswith("subject:")], changed  # lines and facts all pass
            # closing lines stacked to reach the length never echo each other ("We hope ... We hope ...")
            stacked = [s for _, s in sentences(paragraphs(draft.body)[-1])]
            assert not any(shares_a_word(a, b) for i, a in enumerate(stacked) for b in stacked[i + 1 :]), stacked


# -- what a check faults is changed, not sent back ----------------------------------------------------------


def test_a_faulted_subject_gives_way_to_the_next_option_and_a_faulted_fact_is_left_out() -> None:
    request = request_for()
    facts = facts_of(request)
    target = facts[0].text

    def check(draft: EmailDraft) -> Any:  # faults one fact sentence and the first subject option
        report = check_for(request)(draft)
        issues = list(report.issues)
        if target in draft.body:
            issues.append(ValidationIssue(code="offer_condition", message="m", field="body", excerpts=[target]))
        if draft.subject == subject_options(request, LIMITS)[0]:
            issues.append(ValidationIssue(code="subject_figure", message="m", field="subject"))
        return report.model_copy(update={"valid": not issues, "issues": issues})

    draft, changed = assemble_checked(request, plan(facts=[1, 2, 6]), LIMITS, framing(), check)
    assert target not in draft.body and draft.subject == subject_options(request, LIMITS)[1]
    assert changed == [f"subject: {subject_options(request, LIMITS)[0]}", f"fact: {target}"]
    assert LIMITS.body_min_words <= word_count(body_as_sent(request, draft.body)) <= LIMITS.body_max_words


# -- reading the reply ------------------------------------------------------------------------------------


def test_choices_are_read_in_the_shapes_small_models_write_numbers_in() -> None:
    want = plan(subject=2, opening=1, facts=[3, 1], closing=2)
    args = {"subject": 2, "opening": 1, "facts": [3, 1], "closing": 2}
    tool = AIMessage("", tool_calls=[{"name": "GuidedDraft", "args": args, "id": "1"}])
    assert read_plan(tool)[0] == want
    loose = {"subject": "2", "opening": "Opening 1", "facts": ["S3", "1"], "closing": 2.0}
    wrapped = AIMessage("Here it is:\n```json\n" + json.dumps({"email": loose}) + "\n```")
    assert read_plan(wrapped)[0] == want
    assert read_plan(AIMessage(json.dumps({**args, "facts": "3, 1"})))[0] == want
    assert read_plan(AIMessage(json.dumps({"facts": [3, 1]})))[0] == plan(subject=1, opening=1, facts=[3, 1], closing=1)


def test_a_reply_that_writes_an_email_instead_of_choosing_is_refused() -> None:
    whole = {"subject": "S", "body": "B.", "citations": ["plus-pricing"]}
    assert read_plan(AIMessage(json.dumps(whole))) == (
        None,
        "the reply wrote an email instead of choosing: answer with the numbers of your choices only",
    )
    assert read_plan(AIMessage("Sure! Here is your email."))[0] is None


def test_a_framing_file_without_a_tone_or_with_an_empty_list_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / "framing.yaml").write_text("urgent:\n  openings: [Hello.]\n  closings: []\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"framing\.yaml: urgent\.closings must be a list of one or more lines"):
        PromptSet.load(folder)
    (folder / "framing.yaml").write_text("urgent: [", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"framing\.yaml: not valid YAML"):
        PromptSet.load(folder)


# -- which prompt ----------------------------------------------------------------------------------------------


def test_the_guided_profile_is_for_small_models_behind_function_calling_or_json_mode() -> None:
    assert profile_for(False, "auto", small_model=True) == "guided"
    assert profile_for(False, "auto", small_model=False) == "full"  # a first try of json_schema
    assert profile_for(True, "auto", small_model=False) == "compact"
    assert profile_for(False, "full", small_model=True) == "full"  # the setting decides
    system, user = PROMPTS.render(request_for(), LIMITS, "guided")
    assert '"opening" (a number)' in str(system.content)
    for heading in ("Subjects:\n1. ", "Openings:\n1. ", "Facts:\n1. ", "Closings:\n1. "):
        assert heading in str(user.content)
    assert "[plus-pricing]" not in str(user.content)  # no snippet id to paste anywhere
    assert PROMPTS.version("urgent", "guided") != PROMPTS.version("urgent", "full")


@pytest.mark.live_server
@pytest.mark.parametrize("method", ["function_calling", "json_mode"])
def test_a_small_model_is_sent_the_guided_prompt_and_its_choices_become_a_valid_email(
    method: str, live_server: Any
) -> None:
    request = request_for("New Customer", "urgent")
    answer = {"subject": 1, "opening": 2, "facts": [1, 4], "closing": 2}
    reply = ok(tool_args=answer, model=MODEL) if method == "function_calling" else ok(json.dumps(answer), model=MODEL)
    live_server.script(MODEL, reply)
    settings = Settings(openai_base_url=f"{live_server.endpoint}/v1", model_name=MODEL, structured_output_method=method)
    variant = build_email_chain(build_chat_model(settings), settings=settings, notes=EndpointNotes()).invoke(request)

    (body,) = live_server.requests
    assert body["messages"][0]["content"].startswith("You help write one marketing email")
    if method == "function_calling":
        assert body["tool_choice"]["function"]["name"] == "GuidedDraft"
    assert variant.valid, variant.validation.reasons
    assert variant.prompt_version == PROMPTS.version("urgent", "guided")
    assert framing("urgent").openings[1] in variant.body and framing("urgent").closings[1] in variant.body
    assert request.offer in variant.body and facts_of(request)[3].text in variant.body
    assert variant.normalizations == [] and variant.attempts == 1


@pytest.mark.live_server
def test_a_reply_that_cannot_be_read_is_asked_for_again_from_the_start_with_what_failed(live_server: Any) -> None:
    """Choices are asked for again in a new conversation with what failed: no text repair, whose words would
    not be approved text."""
    request = request_for("New Customer", "friendly")
    whole = {"subject": "Hi", "body": "Our own words.", "citations": []}
    live_server.script(MODEL, ok(json.dumps(whole), model=MODEL), ok(json.dumps(plan().model_dump()), model=MODEL))
    settings = Settings(
        openai_base_url=f"{live_server.endpoint}/v1", model_name=MODEL, structured_output_method="json_mode"
    )
    variant = build_email_chain(build_chat_model(settings), settings=settings, notes=EndpointNotes()).invoke(request)
    assert variant.valid, variant.validation.reasons
    assert [s.step for s in variant.steps] == ["draft", "fresh"]
    again = live_server.requests[-1]["messages"]
    assert len(again) == 2 and again[0]["content"].startswith("You help write")
    assert "wrote an email instead of choosing" in again[-1]["content"]
    assert "Our own words." not in variant.body


def test_a_fact_that_points_back_comes_with_the_sentence_before_it() -> None:
    """ "These ..." chosen alone would point at nothing: the sentence before it comes too."""
    request = request_for()
    snippet = request.snippets[0].model_copy(
        update={"text": "Members get a prepaid label for every return. These labels work at any post office."}
    )
    request = request.model_copy(update={"snippets": [snippet, *request.snippets[1:]]})
    facts = facts_of(request)
    assert facts[1].text.startswith("These labels")
    short = ValidationLimits(body_min_words=20, body_max_words=80, min_citations=1)  # no top-up needed
    body = assemble(request, plan(facts=[2]), short, framing()).body
    assert body.index(facts[0].text) < body.index(facts[1].text)
    without = assemble(request, plan(facts=[3]), short, framing()).body
    assert facts[0].text not in without  # so it came with the sentence that points back, not as a top-up


@pytest.mark.parametrize("tone", TONES)
def test_no_opening_and_closing_of_a_tone_say_the_same_thing(tone: str) -> None:
    """Real-model run (tests/sendable/guided.json): 'If this offer suits you, now is a good time to take it up.'
    then 'If it suits you, today is a good day to take it up.' The lines of a tone never pair like that."""
    lines = framing(tone)
    for opening in lines.openings:
        for closing in lines.closings:
            assert not says_again(closing, opening) and not shares_a_word(closing, opening), (opening, closing)


def test_a_fact_that_says_the_offer_again_is_not_offered() -> None:
    """Real-model run (tests/sendable/guided.json, Gold Office Fit-Out): the offer, then the snippet's sentence
    saying it again with who and what added; a reader reads the offer twice."""
    segment = next(s for f, s in CASES if s.name == "Gold Office Fit-Out")
    request = build_request(segment, "friendly", load_snippets())
    again = "Gold and Platinum members of Northwind Plus get free assembly and installation"
    assert any(again in s.text for g in usable_sentences(request) for s in g)  # usable, true for Gold readers
    assert not any(again in f.text for f in facts_of(request))


def test_a_fact_comes_with_the_facts_before_it_in_its_snippet() -> None:
    """Real-model run (acceptance-2 run 3, Holiday Gift Shopper): 'The annual plan saves $20.88 compared with
    paying monthly' sent after a $9.99-a-month offer without the sentence that prices the plans."""
    segment = next(s for f, s in CASES if s.name == "Holiday Gift Shopper")
    request = build_request(segment, "friendly", load_snippets())
    facts = facts_of(request)
    saves = next(n for n, f in enumerate(facts, 1) if f.text.startswith("The annual plan saves"))
    price = next(f.text for f in facts if f.text.startswith("Northwind Plus costs"))
    short = ValidationLimits(body_min_words=10, body_max_words=90, min_citations=1)  # no top-up
    body = assemble(request, plan(facts=[saves]), short, framing()).body
    assert body.index(price) < body.index(facts[saves - 1].text)


def test_a_sentence_restates_the_offer_only_if_it_adds_no_figure() -> None:
    gold = next(s for f, s in CASES if s.name == "Gold Office Fit-Out")
    request = build_request(gold, "friendly", load_snippets())
    assert restates(
        "Gold and Platinum members of Northwind Plus get free assembly and installation of desks, shelving, and "
        "printers on orders of $400 or more.",
        request,
    )
    # the monthly price is news after "Join Northwind Plus for $99 a year ...": kept (acceptance-2 run 3 lost it)
    assert not restates("Northwind Plus costs $9.99 a month or $99 a year.", request)
    assert any(f.text.startswith("Northwind Plus costs") for f in facts_of(request))


def test_a_fact_with_a_clause_that_says_the_offer_again_is_not_offered() -> None:
    """Real-model run (heldout-3, Gift Card Giver): the offer's free prepaid label, then 'Every member return
    includes a free prepaid shipping label, and refunds are issued ...': the label twice in a row."""
    segment = next(s for f, s in CASES if s.name == "Gift Card Giver")
    request = build_request(segment, "friendly", load_snippets())
    assert restates("Every member return includes a free prepaid shipping label, and refunds are issued.", request)
    assert not any(f.text.startswith("Every member return includes") for f in facts_of(request))


def test_gift_card_holder_real_model_faults_do_not_recur() -> None:
    """Real-model run (heldout-4, Gift Card Holder, all 8 emails rejected by the reading): the subject 'Join
    Northwind Plus for $99 a year and pay for it' (the offer cut before 'with a Northwind Supply gift card'),
    and 'Gift cards never expire, carry no fees, ...' after an offer saying the card 'never expires and
    carries no fees'."""
    segment = next(s for f, s in CASES if s.name == "Gift Card Holder")
    request = build_request(segment, "friendly", load_snippets())
    assert not any(s.endswith("pay for it") for s in subject_options(request, LIMITS))
    assert "Join Northwind Plus for $99 a year" in subject_options(request, LIMITS)
    again = "Gift cards never expire, carry no fees, and can pay for orders or for a Northwind Plus membership."
    assert restates(again, request)
    assert again not in [f.text for f in facts_of(request)]


@pytest.mark.parametrize(
    ("segment", "again"),
    [  # real-model runs (heldout-5), each sentence right after the offer it says again
        (
            "Platinum Welcome",
            "Platinum members receive a $50 welcome credit and a dedicated account manager, available weekdays from "
            "8 a.m. to 6 p.m. Eastern time.",
        ),
        (
            "Low-Waste Household",
            "Every Northwind Plus delivery ships carbon neutral, with emissions offset through certified forestry and "
            "renewable energy projects.",
        ),
    ],
)
def test_a_sentence_that_adds_a_detail_to_the_offer_said_again_is_not_offered(segment: str, again: str) -> None:
    request = build_request(next(s for f, s in CASES if s.name == segment), "friendly", load_snippets())
    assert restates(again, request)
    assert again not in [f.text for f in facts_of(request)]
