"""The draft checks: each rule catches what it is for, and a clean draft passes."""

from __future__ import annotations

from pathlib import Path

import pytest

from cpo import ConfigError, ContentBundle, EmailDraft, EmailRequest, ValidationLimits, validate_draft
from cpo.email.validation import numbers_in

REQUEST = ContentBundle.load().request("High-Value Recent", "urgent")
# Eleven sentences with no claims in them, each saying something else: the rubric refuses a thing said twice.
FILLER = " ".join(
    [
        "Our team is here to help you make the most of your membership.",
        "Questions about an order are answered by people who know our catalog well.",
        "Many customers tell us they plan their office supplies around our weekly deals.",
        "Shopping takes less time when your favourite items are saved in your account.",
        "Our warehouses restock popular paper and ink lines before they run low.",
        "Delivery windows are shown at checkout so you can plan around them.",
        "Returns are simple, and our support staff will walk you through them.",
        "Every product page lists the details you need before you decide.",
        "We keep looking for ways to make reordering faster for busy teams.",
        "Thank you for being part of our growing community of customers.",
        "Our catalog grows each season with tools and furniture chosen for small offices.",
    ]
)
BODY = (
    "Customers who upgrade by March 31, 2027 pay $4.99 a month for their first 3 months. "
    "Gold members receive a $25 welcome credit. " + FILLER
)


def draft(**changes: object) -> EmailDraft:
    values: dict[str, object] = {
        "subject": "Your Gold upgrade offer is waiting",
        "body": BODY,
        "citations": ["upgrade-promo-2027", "gold-platinum-perks"],
    }
    values.update(changes)
    return EmailDraft.model_validate(values)


def codes(d: EmailDraft, request: EmailRequest = REQUEST, limits: ValidationLimits | None = None) -> set[str]:
    return {i.code for i in validate_draft(d, request, limits).issues}


def test_a_clean_draft_passes() -> None:
    report = validate_draft(draft(), REQUEST)
    assert report.valid, report.reasons
    assert report.citations == 2
    assert 150 <= report.body_words <= 200


@pytest.mark.parametrize(
    "subject",
    ["**Subject:** Your upgrade awaits", "Subject: Your upgrade awaits", "# Your upgrade", "Your `upgrade`"],
)
def test_labels_and_markdown_in_the_subject_are_rejected(subject: str) -> None:
    assert "subject_format" in codes(draft(subject=subject))


def test_markdown_labels_in_the_body_are_rejected() -> None:
    assert "body_format" in codes(draft(body="**Body:**\n" + BODY))


def test_subject_length_limits() -> None:
    assert "subject_length" in codes(draft(subject="x" * 61))
    assert "subject_length" in codes(draft(subject="  "))
    assert "subject_length" not in codes(draft(subject="x" * 60))


def test_body_word_limits() -> None:
    assert "body_length" in codes(draft(body=BODY + " more" * 60))
    assert "body_length" in codes(draft(body="Customers who upgrade pay $4.99 a month."))


def test_invented_citation_is_rejected_and_does_not_count() -> None:
    report = validate_draft(draft(citations=["upgrade-promo-2027", "press-release-2026"]), REQUEST)
    assert {"unknown_citation", "too_few_citations"} <= {i.code for i in report.issues}
    assert any("press-release-2026" in reason for reason in report.reasons)


def test_unsupported_numbers_are_rejected() -> None:
    report = validate_draft(draft(body=BODY.replace("$25 welcome credit", "$40 welcome credit and 20% off")), REQUEST)
    ungrounded = " ".join(i.message for i in report.issues if i.code == "ungrounded_claim")
    assert "$40" in ungrounded and "20%" in ungrounded


def test_a_number_is_grounded_only_by_a_cited_snippet() -> None:
    # 10% is in the member-discount snippet, which is supplied but not cited here
    assert "ungrounded_claim" in codes(draft(body=BODY + " Members save 10% on every order."))
    cited = draft(body=BODY + " Members save 10% on every order.", citations=[*draft().citations, "member-discount"])
    assert "ungrounded_claim" not in codes(cited)


@pytest.mark.parametrize("placeholder", ["[Customer Name]", "{first_name}", "{{ first_name }}", "<first_name>"])
def test_unresolved_placeholders_are_rejected(placeholder: str) -> None:
    assert "placeholder" in codes(draft(body=BODY.replace("at checkout", f"at checkout, {placeholder}")))


@pytest.mark.parametrize(
    ("subject", "code"),
    [
        ("UPGRADE NOW AND SAVE BIG TODAY", "subject_caps"),
        ("Your upgrade is FREE", "subject_caps"),
        ("Upgrade now!!!", "subject_punctuation"),
        ("Last chance: act now, limited time", "subject_urgency"),
    ],
)
def test_subject_spam_lint(subject: str, code: str) -> None:
    assert code in codes(draft(subject=subject))


def test_one_urgency_phrase_is_allowed() -> None:
    assert "subject_urgency" not in codes(draft(subject="Last chance for your Gold upgrade offer"))


def test_numbers_are_normalised() -> None:
    assert numbers_in("Save $4.99, 2,418 members, 35% less, March 31, 2027.") == {"4.99", "2418", "35", "31", "2027"}


def test_limits_are_configurable_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "limits.yaml"
    path.write_text("body_min_words: 10\nbody_max_words: 400\nmin_citations: 1\n")
    limits = ValidationLimits.from_file(path)
    assert "body_length" not in codes(
        draft(body="Customers who upgrade pay $4.99 a month for 3 months."), limits=limits
    )
    path.write_text("body_min_word: 10\n")
    with pytest.raises(ConfigError, match=r"limits\.yaml: body_min_word"):
        ValidationLimits.from_file(path)
