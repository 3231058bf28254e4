"""Guided composition: a small model writes the framing and picks the facts; cpo assembles the email.

A 1.5B model asked for a whole email pastes snippets at length, greets twice, signs off mid-body, tells the
reader they have joined and miscounts words (2 of 152 labelled emails were sendable, `tests/sendable/`). Asked
instead for a subject, a one- or two-sentence opening in the tone, the numbers of the facts that matter to
this reader and a closing sentence, it writes little that can be false; cpo then lays out the email:
the opening and the offer as written by the campaign, the chosen fact sentences as the snippets write them
(only those true for every reader, `template_control.usable_sentences`), grouped by snippet, and the closing.
cpo, not the model, fits the length: it drops the least important facts chosen, or adds the next ones.

The assembled draft then goes through the same path as any draft (normalize, validate, targeted repairs), so
whatever the model wrote (subject, opening, closing) is checked like any model text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.messages import AIMessage
from pydantic import ValidationError

from cpo.core.models import EmailDraft, EmailRequest, GuidedDraft, ValidationReport
from cpo.core.wording import says_again
from cpo.email.grounding.text import sentences
from cpo.email.normalize import body_as_sent, word_count
from cpo.email.replies import draft_shape, field_error, lenient_json
from cpo.email.template_control import CLOSING, Quoted, usable_sentences
from cpo.email.textsafety import fold
from cpo.email.validation import ValidationLimits, numbers_in

NUMBER_IN_ID = re.compile(r"\d+")
# What the model's framing may not state (its prompt says so; this holds it to it): a figure, or a benefit,
# price or status word. Facts come from the offer and the snippets, word for word; framing only frames them.
FRAMING_CLAIM = re.compile(
    r"[\d$%]|\b(?:save[sd]?|saving|savings|discount(?:s|ed)?|deals?|credits?|points?|free|exclusive|premium|"
    r"bonus|rewards?|refunds?|guarantee[sd]?|money|cheap(?:er|est)?|prices?|costs?|fees?|financial|"
    r"expires?|deadline|limited|only|never|always|every)\b",
    re.IGNORECASE,
)
# A sentence that states what the membership costs; when the offer states no price, the email must.
PRICE_FACT = re.compile(r"\bcosts?\b[^.]*\$\d", re.IGNORECASE)
PRICED = re.compile(r"\$\d[\d.,]*\s*(?:a|per|an?)\s+(?:month|year)|\$\d[\d.,]*\s+(?:annual|monthly)", re.I)
MAX_TRIMS = 4  # rounds of leaving out sentences at fault: each round removes at least one
FACTS_LOW, FACTS_HIGH = 3, 6  # the facts asked for: cpo fits the length in either direction
LENGTH_AIM = 0.4  # where in the word range a fitted body aims (above the minimum, clear of the maximum)


def facts_of(request: EmailRequest) -> list[Quoted]:
    """The facts the model may pick, numbered from 1 in this order: each snippet's usable sentences, without
    those that only restate the offer (the offer is stated once, by the campaign's words)."""
    return [s for group in usable_sentences(request) for s in group if not s.repeats]


def fact_lines(request: EmailRequest) -> str:
    """The numbered list the prompt shows ("3. Members save 10% on every order.")."""
    return "\n".join(f"{n}. {s.text}" for n, s in enumerate(facts_of(request), 1))


def read_plan(reply: AIMessage) -> tuple[GuidedDraft | EmailDraft | None, str | None]:
    """The plan in a reply (tool-call arguments or JSON content). A model that answered with a whole email
    (subject, body, citations) instead is taken at its word: that draft is checked like any other."""
    candidates: list[Any] = [c["args"] for c in reply.tool_calls]
    candidates += [str(c.get("args") or "") for c in reply.invalid_tool_calls]
    candidates.append(str(reply.content or ""))
    preview = " ".join(str(reply.content or "").split())[:80]
    error = f"the reply was not a JSON object with keys subject, opening, facts, closing: {preview!r}"
    if reply.response_metadata.get("finish_reason") == "length":
        error = "the reply was cut off at the output token limit (finish_reason=length); write less"
    for candidate in candidates:
        data = candidate if isinstance(candidate, dict) else lenient_json(candidate)
        if data is None:
            continue
        if "subject" not in data and len(data) == 1 and isinstance(next(iter(data.values())), dict):
            data = next(iter(data.values()))
        if "opening" not in data and "body" in data:
            try:
                return EmailDraft.model_validate(draft_shape(data)), None
            except ValidationError as exc:
                error = f"the reply's JSON is not a plan ({field_error(exc)}); keys: subject, opening, facts, closing"
                continue
        try:
            return GuidedDraft.model_validate({**data, "facts": _numbers(data.get("facts"))}), None
        except ValidationError as exc:
            error = f"the reply's JSON is not a plan ({field_error(exc)}); keys: subject, opening, facts, closing"
    return None, error


def _numbers(value: Any) -> list[int]:
    """Fact numbers as small models write them: [3, 1], ["3", "1"], "3, 1", ["S3"], [{"number": 3}]."""
    items = value if isinstance(value, list) else [value] if value is not None else []
    out: list[int] = []
    for item in items:
        if isinstance(item, dict):
            item = next(iter(item.values()), None)
        if isinstance(item, bool):
            continue
        if isinstance(item, int):
            out.append(item)
        elif isinstance(item, str):
            out += [int(n) for n in NUMBER_IN_ID.findall(item)]
    return out


def _plain(text: str) -> str:
    return " ".join(text.split())


def states_offer(opening: str, offer: str) -> bool:
    """Does the opening already state the offer (all its figures, or nearly its words)? Then cpo does not add it."""
    figures = numbers_in(offer)
    if figures:
        return figures <= numbers_in(opening)
    return says_again(opening, offer)


def assemble(
    request: EmailRequest, plan: GuidedDraft, limits: ValidationLimits, dropped: frozenset[str] = frozenset()
) -> EmailDraft:
    """The email the plan describes, within the length limits where the facts allow (`dropped`: fact sentences
    a check found at fault, never used)."""
    facts = [f for f in facts_of(request) if f.text not in dropped]
    opening, closing = _plain(plan.opening), _plain(plan.closing) or CLOSING
    lead = opening if states_offer(opening, request.offer) else _plain(f"{opening} {request.offer.strip()}")
    listed = facts_of(request)  # as numbered in the prompt
    framing = [written for text in (lead, closing) for _, written in sentences(text)]
    picked: list[Quoted] = []
    numbers = list(plan.facts)
    if not PRICED.search(request.offer):  # the reader is told what it costs, first
        numbers = [n for n, f in enumerate(listed, 1) if PRICE_FACT.search(f.text)][:1] + numbers
    for number in dict.fromkeys(numbers):
        if 1 <= number <= len(listed):
            fact = listed[number - 1]
            if fact.text in dropped:
                continue
            if not any(says_again(fact.text, said) for said in framing):
                picked.append(fact)
    spare = [f for f in _in_rounds(facts) if f not in picked and not any(says_again(f.text, s) for s in framing)]
    chosen = _fitted(request, limits, lead, closing, picked, spare)
    return EmailDraft(
        subject=_plain(plan.subject),
        body=_compose(lead, chosen, closing),
        citations=[request.snippets[n].id for n in sorted({s.snippet for s in chosen})],
    )


def _in_rounds(facts: Sequence[Quoted]) -> list[Quoted]:
    """The facts in the order cpo adds them: each snippet's first, then each one's second, ... (varied content)."""
    return sorted(facts, key=lambda s: (s.index, s.snippet))


def _compose(lead: str, chosen: Sequence[Quoted], closing: str) -> str:
    by_snippet: dict[int, list[Quoted]] = {}
    for s in sorted(chosen, key=lambda s: (s.snippet, s.index)):
        by_snippet.setdefault(s.snippet, []).append(s)
    return "\n\n".join([lead, *(" ".join(s.text for s in group) for group in by_snippet.values()), closing])


def _fitted(
    request: EmailRequest,
    limits: ValidationLimits,
    lead: str,
    closing: str,
    picked: list[Quoted],
    spare: list[Quoted],
) -> list[Quoted]:
    """The picked facts, most important first, cut or topped up so the body as sent fits its word range and
    cites at least `min_citations` snippets: cut from the least important, topped up in cpo's own order."""

    def words(chosen: Sequence[Quoted]) -> int:
        return word_count(body_as_sent(request, _compose(lead, chosen, closing)))

    def cited(chosen: Sequence[Quoted]) -> int:
        return len({s.snippet for s in chosen})

    low, high = limits.body_min_words, limits.body_max_words
    aim = low + (high - low) * LENGTH_AIM
    chosen = list(picked)
    while len(chosen) > 1 and words(chosen) > high:
        chosen.pop()
    for fact in spare:  # a snippet not yet cited first, while the email is short of citations
        if cited(chosen) >= limits.min_citations:
            break
        if fact.snippet not in {s.snippet for s in chosen}:
            while len(chosen) > 1 and words([*chosen, fact]) > high:
                chosen.pop()
            chosen.append(fact)
    for fact in spare:
        if words(chosen) >= aim:
            break
        if fact not in chosen and words([*chosen, fact]) <= high:
            chosen.append(fact)
    return chosen


def assemble_checked(
    request: EmailRequest, plan: GuidedDraft, limits: ValidationLimits, check: Callable[[EmailDraft], ValidationReport]
) -> tuple[EmailDraft, list[str]]:
    """The plan assembled; then each sentence a check finds at fault is left out and the email assembled again
    (no call): a sentence of the model's opening or closing, or a fact. Returns the draft and what was left out.

    A small model's framing sentence that breaks a rule ("Hi there!", "you've been selected") costs a repair
    call that, answered by the same model, writes a paragraph far longer than the one asked for; leaving the
    sentence out keeps the rest of what it wrote, and every sentence left is still the model's or the sources'.
    """
    tiers = [t.casefold() for t in request.vocabulary.tiers]

    def claims(sentence: str) -> bool:
        words = set(re.findall(r"[a-z]+", sentence.casefold()))
        return bool(FRAMING_CLAIM.search(sentence)) or any(t in words for t in tiers)

    dropped: list[str] = []
    parts = {name: [w for _, w in sentences(getattr(plan, name))] for name in ("opening", "closing")}
    dropped += [s for part in parts.values() for s in part if claims(s)]
    plan = plan.model_copy(update={name: " ".join(s for s in part if not claims(s)) for name, part in parts.items()})
    left_out: frozenset[str] = frozenset()
    draft = assemble(request, plan, limits)
    for _ in range(MAX_TRIMS):
        report = check(draft)
        faulty = [e.strip() for i in report.issues if i.field == "body" for e in i.excerpts if e.strip()]
        if not faulty:
            break

        def at_fault(sentence: str, faulty: list[str] = faulty) -> bool:
            folded = fold(sentence)
            return any(e in folded or folded in e for e in faulty)

        opening = [w for _, w in sentences(plan.opening)]
        closing = [w for _, w in sentences(plan.closing)]
        framing = [s for s in (*opening, *closing) if at_fault(s)]
        facts = {f.text for f in facts_of(request) if f.text in draft.body and at_fault(f.text)}
        if not framing and not facts:
            break
        dropped += [*framing, *sorted(facts)]
        left_out |= facts
        plan = plan.model_copy(
            update={
                "opening": " ".join(s for s in opening if s not in framing),
                "closing": " ".join(s for s in closing if s not in framing),
            }
        )
        draft = assemble(request, plan, limits, left_out)
    return draft, dropped
