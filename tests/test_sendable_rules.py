"""The sendability rubric's rules (docs/sendable.md), each on a real-model email that broke it, and the guards
that keep a repair answer's junk out of an email.

The real-model emails are read from the labelled set (tests/sendable/labelled.json: Qwen2.5-Coder-1.5B on
llama-cpp-python, each labelled by reading); each rule is shown flagging the text a person flagged, and not
flagging the same email once that text is gone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cpo.core.models import EmailDraft, EmailRequest
from cpo.email.normalize import model_part, paragraphs
from cpo.email.splice_guard import junk_in
from cpo.email.validation import validate_draft
from tests.test_email_loop import REQUEST, codes, email, good, make_loop, send, text, with_unbacked_number

LABELLED = json.loads((Path(__file__).parent / "sendable" / "labelled.json").read_text(encoding="utf-8"))
BY_ID = {e["id"]: e for e in LABELLED}
R0 = "real_model-labelled-r0-20261205T170150Z"
R2 = "real_model-labelled-r2-20261205T171527Z"
R2B = "real_model-labelled-r2-20261205T173647Z"
HELD = json.loads((Path(__file__).parent / "sendable" / "heldout.json").read_text(encoding="utf-8"))
HELD_BY_ID = {e["id"]: e for e in HELD}
HELD_2 = json.loads((Path(__file__).parent / "sendable" / "heldout-2.json").read_text(encoding="utf-8"))


def stored(key: str) -> tuple[EmailDraft, EmailRequest, dict[str, Any]]:
    entry = BY_ID[key]
    request = EmailRequest.model_validate(entry["request"])
    draft = EmailDraft(subject=entry["subject"], body=entry["body"], citations=entry["citations"])
    return draft, request, entry


def found(draft: EmailDraft, request: EmailRequest, code: str) -> list[list[str]]:
    return [i.excerpts for i in validate_draft(draft, request).issues if i.code == code]


# (email id, rule code, the text the reading flagged, that text replaced by)
REAL_MODEL_BREAKS = [
    (f"{R0}/Repeat Supply Buyer/urgent", "second_greeting", "Hi there, Bronze members!", ""),
    (f"{R0}/Referral-Ready Regular/informational", "sign_off_in_body", "Best regards, The Northwind Plus team", ""),
    (f"{R0}/Gold Office Fit-Out/informational", "repeated_sentence", "This means you can focus on what matters", ""),
    (f"{R0}/Repeat Supply Buyer/control", "status_claim", "you've been selected", "you can"),
    (f"{R0}/Silver Annual Switcher/control", "invented_name", "Silver Plus", "Northwind Plus"),
    (f"{R0}/Silver Annual Switcher/friendly", "placeholder", "[your account page]", "your account page"),
    (f"{R0}/Silver Annual Switcher/urgent", "placeholder", "[member-discount]", "checkout"),
]


@pytest.mark.parametrize(("key", "code", "flagged", "fixed"), REAL_MODEL_BREAKS, ids=[r[1] for r in REAL_MODEL_BREAKS])
def test_each_rule_flags_the_real_model_text_a_reader_flagged(key: str, code: str, flagged: str, fixed: str) -> None:
    draft, request, entry = stored(key)
    assert entry["sendable"] is False
    hits = found(draft, request, code)
    assert hits, f"{code} not found"
    assert any(flagged in e or e in flagged for excerpts in hits for e in excerpts) or code == "subject_label"

    if code == "repeated_sentence":
        own = paragraphs(draft.body)
        first = next(i for i, p in enumerate(own) if flagged in p)
        last = max(i for i, p in enumerate(own) if flagged in p)
        sentence = next(s for s in own[last].split(". ") if flagged in s)
        body = "\n\n".join([*own[:last], own[last].replace(sentence, "", 1), *own[last + 1 :]])
        assert first != last or body != draft.body
    elif code == "sign_off_in_body":
        body = draft.body.replace(flagged, fixed, 1)  # the one run into the text; cpo's own stays
    else:
        body = draft.body.replace(flagged, fixed)
    assert not found(
        draft.model_copy(update={"body": body, "subject": draft.subject.replace(flagged, fixed)}), request, code
    )


def test_a_subject_with_a_label_is_refused_and_the_plain_phrase_passes() -> None:
    draft, request, _ = stored(f"{R0}/Gold Office Fit-Out/urgent")
    assert draft.subject.startswith("Urgent:")
    assert [i for i in validate_draft(draft, request).issues if i.code == "subject_label" and i.field == "subject"]
    plain = draft.model_copy(update={"subject": "Free assembly on orders of $400 or more"})
    assert not found(plain, request, "subject_label")


def test_a_subject_headlining_a_figure_the_offer_does_not_state_is_refused() -> None:
    """Real model (guided, held-out batch 2 segment, benchmarks/results/real_model-heldout-2-r2-20261205T204803Z):
    the offer is $9.99 a month, and only the annual plan saves $20.88."""
    entry = next(e for e in HELD_2 if e["request"]["segment"]["name"] == "Price-Conscious Silver")
    request = EmailRequest.model_validate(entry["request"])
    draft = EmailDraft(
        subject="Join Northwind Plus for $9.99 a month and save $20.88", body=entry["body"], citations=[]
    )
    issues = [i for i in validate_draft(draft, request).issues if i.code == "subject_figure"]
    assert issues and issues[0].field == "subject" and '"$20.88"' in issues[0].message
    plain = draft.model_copy(update={"subject": "Join Northwind Plus for $9.99 a month"})
    assert not found(plain, request, "subject_figure")


def test_a_subject_that_stops_as_if_cut_off_is_refused() -> None:
    """Real model (guided, heldout-4, Gift Card Holder): the offer cut before 'with a Northwind Supply gift card'."""
    held = json.loads((Path(__file__).parent / "sendable" / "heldout-4.json").read_text(encoding="utf-8"))
    entry = next(e for e in held if e["subject"].endswith("and pay for it"))
    request = EmailRequest.model_validate(entry["request"])
    draft = EmailDraft(subject=entry["subject"], body=entry["body"], citations=entry["citations"])
    issues = [i for i in validate_draft(draft, request).issues if i.code == "subject_unfinished"]
    assert issues and issues[0].field == "subject" and '"it"' in issues[0].message
    whole = draft.model_copy(update={"subject": "Join Northwind Plus for $99 a year"})
    assert not found(whole, request, "subject_unfinished")


def test_a_fact_said_again_in_other_words_is_a_repeated_sentence() -> None:
    # Real model (r2): the loyalty-points sentence said twice, "compared with" then "compared to".
    draft, request, _ = stored(f"{R2B}/Referral-Ready Regular/urgent")
    hits = found(draft, request, "repeated_sentence")
    assert hits and "compared to 1 point per $1" in hits[0][0]


def test_shorthand_a_brand_would_not_send_is_refused() -> None:
    # Real model (r2): "Plus plan costs $9.99/mo or $99/yr ... from day joined & listed prices".
    draft, request, _ = stored(f"{R2B}/Gold Office Fit-Out/control")
    assert found(draft, request, "shorthand")
    words = draft.body.replace("/mo", " a month").replace("/yr", " a year").replace(" & ", " and ")
    assert not found(draft.model_copy(update={"body": words}), request, "shorthand")


def test_meta_text_in_an_email_is_refused() -> None:
    # The extension repair's answer a real model gave (issue 19): its instructions pasted into the body.
    draft, request, _ = stored(f"{R0}/Silver Annual Switcher/friendly")
    own = model_part(draft.body, request)
    pasted = own + '\n\nTo add to the email, you can say: "Members also save on every order."'
    hits = found(draft.model_copy(update={"body": pasted}), request, "meta_text")
    assert hits and any(p in hits[0][0].casefold() for p in ("you can say", "to add to the email"))
    assert not found(draft, request, "meta_text")


def test_thanks_for_choosing_the_programme_on_offer_is_a_status_claim() -> None:
    # Real model (r2): "Thank you for choosing Northwind Plus" to Gold customers the email asks to join it.
    draft, request, entry = stored(f"{R2}/Gold Office Fit-Out/friendly")
    assert "Thank you for choosing Northwind Plus" in draft.body and not entry["sendable"]
    assert ["Thank you for choosing Northwind Plus"] in found(draft, request, "status_claim")
    shop = draft.body.replace("Thank you for choosing Northwind Plus", "Thank you for choosing Northwind Supply")
    assert not found(draft.model_copy(update={"body": shop}), request, "status_claim")


def test_an_offer_for_some_keeps_its_condition_wherever_its_figure_is_stated() -> None:
    # Real model, held-out batch (r2, seed 7): "the chance to join Northwind Plus for just $59 a year!" to every
    # reader, though only students and teachers who verify a school email address get that rate. This batch
    # showed the rule, so a second held-out batch measures it (tests/sendable/heldout-2.json).
    entry = HELD_BY_ID["real_model-heldout-r2-20261205T185633Z/School Supplies Buyer/urgent"]
    request = EmailRequest.model_validate(entry["request"])
    draft = EmailDraft(subject=entry["subject"], body=entry["body"], citations=entry["citations"])
    issues = [i for i in validate_draft(draft, request).issues if i.code == "offer_condition"]
    assert {i.field for i in issues} == {"subject", "body"}
    assert any("join Northwind Plus for just $59 a year" in e for i in issues for e in i.excerpts)
    assert "verify a school email address" in issues[0].message

    with_condition = draft.model_copy(
        update={
            "subject": "Students and teachers: Northwind Plus for $59 a year",
            "body": entry["body"]
            .replace(
                "We're excited to offer you the chance to join Northwind Plus for just $59 a year!",
                "Students and teachers who verify a school email address can join Northwind Plus for $59 a year.",
            )
            .replace(  # the closing said the figure again, without the condition
                "Join now and enjoy the benefits of Northwind Plus for just $59 a year.",
                "Join now and enjoy the benefits of Northwind Plus.",
            ),
        }
    )
    assert not found(with_condition, request, "offer_condition")


def test_an_offer_open_to_all_has_no_condition_to_keep() -> None:
    from cpo.email.offer_terms import condition_of

    assert (
        condition_of("Join Northwind Plus for $9.99 a month and get free 2-day delivery.", ("Northwind", "Plus"))
        is None
    )
    terms = condition_of(
        "Silver members who choose the annual Northwind Plus plan by June 26, 2027 pay $79 for their first year.",
        ("Northwind", "Plus"),
    )
    assert terms is not None and terms.figures == {"$79"} and {"annual", "june", "choose"} <= terms.words


def test_the_names_the_sources_use_are_not_invented() -> None:
    draft, request, _ = stored(f"{R0}/Silver Annual Switcher/control")
    named = draft.model_copy(
        update={
            "subject": "Our Northwind Plus annual plan",
            "body": draft.body.replace("Silver Plus", "Northwind Plus"),
        }
    )
    assert not found(named, request, "invented_name")


# -- repair answers are read on their own before they are spliced in ------------------------------------

JUNK = [
    ('To add to the email, you can say: "Notably, members save 10% on every order."', "writing"),
    ('"Members save 10% on every order, applied automatically at checkout."', "quotes"),
    ("Hi there! Members save 10% on every order, applied automatically at checkout.", "greets"),
    ("Members save 10% on every order.\n\nBest regards,\nThe Northwind Plus team", "signs off"),
    ("Members save 10% on every order; see [member-discount] for details.", "placeholder"),
    ("Members save 10% on every order, as member-discount explains.", "snippet id"),
    ("Here is the revised paragraph: members save 10% on every order.", "writing"),
]


@pytest.mark.parametrize(("answer", "why"), JUNK, ids=[j[1] for j in JUNK])
def test_the_guard_names_what_a_repair_answer_must_not_carry(answer: str, why: str) -> None:
    reason = junk_in(answer, REQUEST)
    assert reason is not None and why in reason


def test_a_snippet_id_that_is_also_a_word_of_the_sources_is_not_junk() -> None:
    from pathlib import Path as _Path

    from cpo.email.content import ContentBundle

    bundle = ContentBundle.load(segments_file=_Path(__file__).parent.parent / "benchmarks/segments/heldout-2.json")
    request = bundle.request("Price-Conscious Silver", "friendly")
    assert "price-match" in {s.id for s in request.snippets}
    assert junk_in("Each member can make up to 13 price-match requests a year.", request) is None
    assert junk_in("See [price-match] for the rules.", request) is not None  # bracketed: a placeholder


def test_a_plain_paragraph_answer_passes_the_guard_with_or_without_its_label() -> None:
    assert junk_in("Members save 10% on every order, applied automatically at checkout.", REQUEST) is None
    assert junk_in("Paragraph: Members save 10% on every order.", REQUEST) is None


@pytest.mark.parametrize(("answer", "why"), JUNK, ids=[j[1] for j in JUNK])
def test_a_paragraph_answer_with_junk_is_discarded_counted_and_asked_again_varied(answer: str, why: str) -> None:
    loop = make_loop()
    data = good(send(loop))
    loop.answered(email(with_unbacked_number(data)))
    assert codes(loop) == {"ungrounded_claim"}
    before = loop.draft
    call = send(loop)
    assert call.step == "paragraph"

    loop.answered(text(answer))

    assert loop.draft == before  # nothing spliced in
    step = loop.steps[-1]
    assert step.step == "paragraph" and step.discarded is not None and why in step.discarded
    again = send(loop)
    assert again.step == "paragraph" and again.vary  # the next call is varied, not the same ask


def test_an_extension_answer_with_junk_is_discarded() -> None:
    loop = make_loop()
    data = good(send(loop))
    short = paragraphs(data["body"])
    loop.answered(email({**data, "body": "\n\n".join([short[0], short[-1]])}))
    assert codes(loop) == {"body_length"}
    call = send(loop)
    assert call.step == "extend"
    before = loop.draft
    loop.answered(text('To add to the email, you can say: "Members save 10% on every order."'))
    assert loop.draft == before and loop.steps[-1].discarded


def test_a_subject_answer_keeps_only_clean_candidates() -> None:
    loop = make_loop()
    data = good(send(loop))
    loop.answered(
        email({**data, "subject": "A thank-you for our Gold members, with an upgrade offer made just for you"})
    )
    assert codes(loop) == {"subject_length"}
    call = send(loop)
    assert call.step == "subject"
    loop.answered(text("Here is your new subject:\n[Customer Name], your Gold upgrade\nYour Gold upgrade offer"))
    assert loop.draft is not None and loop.draft.subject == "Your Gold upgrade offer"
    assert loop.report is not None and loop.report.valid
