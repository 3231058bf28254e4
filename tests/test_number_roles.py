"""The role of an amount: "save $79" is not grounded by a source that says "pay $79" (issue 19).

A $ or % amount is a price, a saving, a credit, a cap or a threshold, read from the words next to it in the email
and in the source sentence. An email amount whose role fits none of the same-valued source mentions is a
`wrong_role` problem; an amount whose role no word gives, on either side, is not judged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cpo.core.models import EmailDraft, EmailRequest, Snippet
from cpo.email.content import load_snippets
from cpo.email.grounding import GroundingProblem, check_grounding
from cpo.email.grounding.numbers import quantities
from cpo.email.grounding.roles import roles_in
from cpo.email.validation import validate_draft

SNIPPETS = load_snippets()
LABELLED: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "sendable" / "labelled.json").read_text(encoding="utf-8")
)
SILVER_OFFER = "Silver members who choose the annual Northwind Plus plan by June 26, 2027 pay $79 for their first year."


def check(text: str, *ids: str, offer: str = "") -> list[GroundingProblem]:
    return check_grounding(text, [SNIPPETS[i] for i in ids], offer)


def roles(sentence: str) -> list[str]:
    """'$79: a price' for each amount of a sentence ('$1: ?' when no word gives its role)."""
    found = quantities(sentence)
    return [f"{q.display}: {r.name if r else '?'}" for q, r in zip(found, roles_in(sentence, found), strict=True)]


def labelled_email(key: str) -> tuple[dict[str, Any], list[GroundingProblem]]:
    entry = next(e for e in LABELLED if e["id"] == key)
    request = EmailRequest.model_validate(entry["request"])
    cited = [s for s in request.snippets if s.id in entry["citations"]]
    return entry, check_grounding(f"{entry['subject']}\n\n{entry['body']}", cited, request.offer)


def test_save_79_where_the_source_says_pay_79_is_a_wrong_role_naming_both_roles() -> None:
    problems = check("As a Silver member you save $79 on your first year.", "silver-annual-offer", offer=SILVER_OFFER)
    assert [(p.code, p.claim) for p in problems] == [("wrong_role", "save $79")]
    assert problems[0].message == (
        '"save $79": the cited snippet silver-annual-offer says "pay $79" (a price), not a saving'
    )
    assert problems[0].sentence == "As a Silver member you save $79 on your first year."


# Real-model emails whose label names a role error (tests/sendable/labelled.json, seed 11).
ROLE_ERRORS = {
    "real_model-labelled-r0-20261205T172128Z/Silver Annual Switcher/control": ("Save $79", "a price", "a saving"),
    "real_model-labelled-r2-20261205T173647Z/Silver Annual Switcher/control": (
        "Get $79",
        "a price",
        "a credit or reward",
    ),
    "real_model-labelled-r0-20261205T172128Z/Repeat Supply Buyer/urgent": ("for just 12%", "a saving", "a price"),
    "real_model-labelled-r2-20261205T173647Z/Repeat Supply Buyer/urgent": ("for just 12%", "a saving", "a price"),
}


@pytest.mark.parametrize("key", sorted(ROLE_ERRORS))
def test_a_real_model_role_error_is_flagged(key: str) -> None:
    entry, problems = labelled_email(key)
    claim, source_role, email_role = ROLE_ERRORS[key]
    wrong = [p for p in problems if p.code == "wrong_role"]
    assert [p.claim for p in wrong] == [claim]
    assert f"({source_role}), not {email_role}" in wrong[0].message
    assert claim in wrong[0].sentence
    assert claim.lower() in entry["why"].lower()  # the phrase the person who labelled it named


def test_no_other_labelled_email_gets_a_role_problem() -> None:
    # 80 real-model emails, each labelled by reading: the role check flags exactly the ones whose label names
    # a role error, and none of the others (their prices, savings, credits and thresholds are used rightly)
    flagged = {e["id"] for e in LABELLED if any(p.code == "wrong_role" for p in labelled_email(e["id"])[1])}
    assert flagged == set(ROLE_ERRORS)


def test_a_role_problem_is_an_ungrounded_claim_with_its_sentence_for_the_repair() -> None:
    entry = next(
        e for e in LABELLED if e["id"] == "real_model-labelled-r0-20261205T172128Z/Silver Annual Switcher/control"
    )
    draft = EmailDraft(subject=entry["subject"], body=entry["body"], citations=entry["citations"])
    report = validate_draft(draft, EmailRequest.model_validate(entry["request"]))
    issues = [i for i in report.issues if "(a price), not a saving" in i.message]
    assert [(i.code, i.field, i.excerpts) for i in issues] == [
        ("ungrounded_claim", "subject", ["Silver Plus Annual Upgrade Offer: Save $79 for Your First Year"])
    ]


@pytest.mark.parametrize(
    ("text", "ids", "claim", "message_end"),
    [
        ("Members get 10% back on every order.", ["member-discount"], "10% back", "(a saving), not a credit or reward"),
        ("Customers without Plus save $49 on shipping.", ["plus-delivery"], "save $49", "(a threshold), not a saving"),
        (
            "Members save $20 for each friend who joins.",
            ["referral-credit"],
            "save $20",
            "(a credit or reward), not a saving",
        ),
        (
            "Each member earns $240 a year.",
            ["referral-credit"],
            "earns $240 a year",
            "(a cap on a credit or reward), not a credit or reward",
        ),
        ("Save $99 a year with Plus.", ["plus-pricing"], "Save $99 a year", "(a price), not a saving"),
        ("Gold members get $25 off their first order.", ["gold-platinum-perks"], "$25 off", "not a saving"),
        (
            "Save 33% on selected supplies in the app.",
            ["app-ordering"],
            "Save 33%",
            "(a cap on a saving), not a saving",
        ),
        (
            "Customers without Plus pay $49 for standard shipping.",
            ["plus-delivery"],
            "pay $49",
            "(a threshold), not a price",
        ),
    ],
)
def test_a_paraphrase_with_the_wrong_role_is_flagged(text: str, ids: list[str], claim: str, message_end: str) -> None:
    problems = check(text, *ids)
    assert [(p.code, p.claim) for p in problems] == [("wrong_role", claim)]
    assert problems[0].message.endswith(message_end)


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("Choose the annual plan by June 26, 2027 and pay just $79 for your first year.", ["silver-annual-offer"]),
        ("Silver members get their first year for $79.", ["silver-annual-offer"]),
        ("Your first year costs $79 instead of $99.", ["silver-annual-offer", "plus-pricing"]),
        ("Save 10% on every order.", ["member-discount"]),
        ("Members get a 10% discount on every order.", ["member-discount"]),
        (
            "Business accounts get 16% off orders of $750 or more instead of the 10% member discount.",
            ["business-bulk-ordering"],
        ),
        ("Essentials are discounted by 15% instead of 10%.", ["member-discount"]),
        ("Customers without Plus get free standard shipping on orders over $49.", ["plus-delivery"]),
        ("Without Plus, spend $49 or more for free standard shipping.", ["plus-delivery"]),
        ("Gold members get a $25 credit on their first member order.", ["gold-platinum-perks"]),
        ("Earn a $20 credit for every friend who joins, up to $240 a year.", ["referral-credit"]),
        ("Members earn 5 points per $1 spent.", ["loyalty-points-multiplier"]),
        ("Other loyalty members earn 1 point per $1.", ["loyalty-points-multiplier"]),
        ("Plus costs $9.99/mo or $99/yr, and the annual plan saves you $20.88.", ["plus-pricing"]),
        ("Take up to 33% off selected supplies in the app.", ["app-ordering"]),
        ("App-only deals save you up to 33%.", ["app-ordering"]),
        ("Items priced up to $1,500 are replaced, not repaired.", ["warranty-extension"]),
        ("Set a monthly spending cap of $300 for each shared login.", ["household-sharing"]),
        ("Platinum accounts have a credit limit of $42,000.", ["platinum-business-invoicing"]),
        ("Members reported saving $212 a year on average.", ["member-satisfaction-survey"]),
        # "up to" where the source gives a flat amount claims less, not more: not judged a wrong role
        ("Member discounts of up to 10% apply to every order.", ["member-discount"]),
    ],
)
def test_the_right_role_in_other_words_passes(text: str, ids: list[str]) -> None:
    assert check(text, *ids) == []


def test_an_unknown_role_on_either_side_is_not_judged() -> None:
    bare = Snippet(id="bare", title="Bare", text="The plan is $99, billed once.")
    assert check_grounding("Save $99 with the plan.", [bare]) == []  # "is $99": the source gives no role
    assert check("Your price: $79.", "silver-annual-offer") == []  # no cue next to the email's $79
    assert check("Silver members: $79 for the first year.", "silver-annual-offer") == []


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        ("Silver members pay $79 for their first year.", ["$79: a price"]),
        ("Get your first year for $79.", ["$79: a price"]),
        ("Plans are just $9.99 a month.", ["$9.99: a price"]),
        ("It renews at $9.99 a month.", ["$9.99: a price"]),
        ("Pay $79 instead of $99.", ["$79: a price", "$99: a price"]),
        ("Northwind costs $9.99 a month or $99 a year.", ["$9.99: a price", "$99: a price"]),
        ("Save 10% on every order.", ["10%: a saving"]),
        ("Take 10% off.", ["10%: a saving"]),
        ("Get a 10% member discount.", ["10%: a saving"]),
        ("Get 5% back.", ["5%: a credit or reward"]),
        ("Receive a $20 credit.", ["$20: a credit or reward"]),
        ("Earn 2 points per $1.", ["2 points: ?", "$1: ?"]),
        ("Earn 5 points for every $1 spent.", ["5 points: ?", "$1: ?"]),
        ("Free shipping on orders over $49.", ["$49: a threshold"]),
        ("Free shipping on $49 orders.", ["$49: a threshold"]),
        ("Free installation on orders of $400 or more.", ["$400: a threshold"]),
        ("A spending cap of up to $300 a month.", ["$300: a cap"]),
        ("Members can earn up to $240 a year.", ["$240: a cap on a credit or reward"]),
        ("Take up to 33% off.", ["33%: a cap on a saving"]),
        ("In the survey, 94% said yes.", ["94%: ?"]),
    ],
)
def test_the_role_is_read_from_the_words_next_to_the_amount(sentence: str, expected: list[str]) -> None:
    assert roles(sentence) == expected
