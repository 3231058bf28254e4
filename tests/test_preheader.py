"""The preheader (the inbox line after the subject): written with the email, checked like the subject, and
written by cpo from approved text, for free, when the model gives none or one the checks fault."""

from __future__ import annotations

import pytest

from cpo.core.models import EmailDraft, EmailRequest
from cpo.email.chain import build_email_chain
from cpo.email.content import ContentBundle
from cpo.email.preheader import WRITTEN, settled
from cpo.email.validation import ValidationLimits, validate_draft
from cpo.llm.offline import OfflineChatModel

BUNDLE = ContentBundle.load()
LIMITS = ValidationLimits()


@pytest.fixture(scope="module")
def request_and_sent() -> tuple[EmailRequest, EmailDraft]:
    request = BUNDLE.request("New Customer", "friendly")
    variant = build_email_chain(OfflineChatModel()).invoke(request)
    assert variant.valid and variant.preheader  # the offline drafter writes one too
    sent = EmailDraft(
        subject=variant.subject,
        preheader=variant.preheader,
        body=variant.body,
        citations=[c.id for c in variant.citations],
    )
    return request, sent


@pytest.mark.parametrize(
    ("preheader", "code"),
    [
        ("Join today and get " + "every benefit of membership " * 5, "preheader_length"),
        ("Save $5 on your next order with Northwind Plus.", "ungrounded_claim"),
        ("See https://example.com/deal for the offer.", "link"),
        ("Hello {{ first_name }}, your offer is here.", "placeholder"),
        ("JOIN NOW AND SAVE ON EVERY ORDER", "preheader_caps"),
        ("**Free delivery** on every order.", "preheader_format"),
    ],
)
def test_a_faulty_preheader_is_found_and_named_as_the_preheaders(
    request_and_sent: tuple[EmailRequest, EmailDraft], preheader: str, code: str
) -> None:
    request, sent = request_and_sent
    report = validate_draft(sent.model_copy(update={"preheader": preheader}), request, LIMITS)
    found = [i for i in report.issues if i.field == "preheader"]
    assert not report.valid and code in {i.code for i in found}, report.issues


def test_a_faulty_or_missing_preheader_is_replaced_by_approved_text_without_a_call(
    request_and_sent: tuple[EmailRequest, EmailDraft],
) -> None:
    request, sent = request_and_sent
    for given in ("Save $5 on your next order today.", ""):
        fixed, report, note = settled(sent.model_copy(update={"preheader": given}), request, LIMITS)
        assert report.valid and fixed.preheader == request.offer  # the campaign's offer: checked before paying
        assert note is not None and note.code == WRITTEN
        assert ("refused" in note.detail) == bool(given)
    same, _, note = settled(sent, request, LIMITS)
    assert same == sent and note is None  # a preheader that passes is the model's own


def test_after_a_subject_the_offer_opens_with_the_preheader_is_the_rest_of_the_offer(
    request_and_sent: tuple[EmailRequest, EmailDraft],
) -> None:
    request, sent = request_and_sent
    subject = "Join Northwind Plus for $9.99 a month"  # the offer's first clause: the whole offer would say it again
    fixed, report, _ = settled(sent.model_copy(update={"subject": subject, "preheader": ""}), request, LIMITS)
    assert report.valid and fixed.preheader == "Get free 2-day delivery on every order with no minimum."


def test_when_the_offer_does_not_fit_the_preheader_is_a_cited_sentence_for_every_reader(
    request_and_sent: tuple[EmailRequest, EmailDraft],
) -> None:
    request, sent = request_and_sent
    tight = LIMITS.model_copy(update={"preheader_max_chars": 54})
    subject = "Join Northwind Plus for $9.99 a month"
    fixed, report, _ = settled(sent.model_copy(update={"subject": subject, "preheader": ""}), request, tight)
    quoted = " ".join(s.text for s in request.snippets if s.id in sent.citations)
    assert report.valid and fixed.preheader in quoted and len(fixed.preheader) <= 54


def test_with_nothing_short_enough_there_is_no_preheader_and_the_email_stays_valid(
    request_and_sent: tuple[EmailRequest, EmailDraft],
) -> None:
    request, sent = request_and_sent
    tight = LIMITS.model_copy(update={"preheader_max_chars": 10})
    fixed, report, note = settled(sent.model_copy(update={"preheader": ""}), request, tight)
    assert fixed.preheader == "" and report.valid
    assert note is not None and "none is set" in note.detail


def test_the_body_limits_do_not_count_the_preheader(request_and_sent: tuple[EmailRequest, EmailDraft]) -> None:
    request, sent = request_and_sent
    long = "Northwind Plus costs $9.99 a month or $99 a year."
    before = validate_draft(sent, request, LIMITS).body_words
    after = validate_draft(sent.model_copy(update={"preheader": long}), request, LIMITS).body_words
    assert before == after
