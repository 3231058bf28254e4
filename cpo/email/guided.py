"""Guided composition: a small model chooses; cpo writes the email from approved text.

A 1.5B model asked for a whole email pastes snippets at length, greets twice, signs off mid-body, tells the
reader they have joined and miscounts words: 2 of the 152 labelled emails were sendable (`tests/sendable/`).
Asked for only an opening and a closing sentence, it still wrote one a careful reader would not send in most
emails ("As a student or teacher, we know...", "thank you for your recent purchase from Northwind Plus", a
subject "Upgrade to Platinum Business Accounts" for customers already Platinum), and no rule can tell those
from good ones. So behind function calling or JSON mode the model writes nothing: it picks, by number, a
subject from lines cut from the offer and the snippets' titles, an opening and a closing from the tone's
approved lines (`prompts/framing.yaml`), and the facts that matter most to the reader from the snippets'
sentences that are true for every reader (`template_control.usable_sentences`). cpo lays out the email: the
opening and the campaign's offer, the chosen facts word for word grouped by snippet, the closing; it fits the
length by dropping the least important facts chosen or adding the next ones, always states the price when
the offer does not, and leaves out a fact a check finds at fault (or moves to the next subject). The email
then goes through the same checks as any draft. The arms still differ in what a reader sees: the lines of
their tone and the facts chosen for them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage

from cpo.core.errors import ConfigError
from cpo.core.models import TONES, EmailDraft, EmailRequest, GuidedDraft, Tone, ValidationReport
from cpo.core.wording import long_words, says_again
from cpo.email.grounding.text import sentences
from cpo.email.normalize import body_as_sent, word_count
from cpo.email.replies import reply_objects, unread
from cpo.email.template_control import POINTS_BACK, Quoted, subject_candidates, usable_sentences
from cpo.email.textsafety import fold
from cpo.email.validation import ValidationLimits, numbers_in

NUMBER_IN_ID = re.compile(r"\d+")
CLAUSE = re.compile(r",\s+(?:and|but|with)\s+|;\s+")  # where a sentence's clauses part
COVER_SHARE, COVER_MIN_WORDS = 0.6, 6  # a sentence that holds this share of an offer's words says it again
# A sentence that states what the membership costs; when the offer states no price, the email must.
PRICE_FACT = re.compile(r"(?P<what>[A-Z][\w ]*?)\s+costs?\b[^.]*\$\d")
PRICED = re.compile(r"\$\d[\d.,]*\s*(?:a|per|an?)\s+(?:month|year)|\$\d[\d.,]*\s+(?:annual|monthly)", re.I)
MAX_TRIMS = 6  # rounds of leaving out what a check faults: each round changes at least one part
FACTS_LOW, FACTS_HIGH = 3, 6  # the facts asked for: cpo fits the length in either direction
LENGTH_AIM = 0.4  # where in the word range a fitted body aims (above the minimum, clear of the maximum)


@dataclass(frozen=True)
class Framing:
    """A tone's approved opening and closing lines (`prompts/framing.yaml`)."""

    openings: tuple[str, ...]
    closings: tuple[str, ...]


def read_framing(data: Any, origin: str) -> dict[Tone, Framing]:
    """The framing file's lines per tone; a clear error for a file that lacks a tone or a list."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{origin}: expected a mapping of tones to openings and closings")
    out: dict[Tone, Framing] = {}
    for tone in TONES:
        entry = data.get(tone)
        lists = {key: entry.get(key) if isinstance(entry, Mapping) else None for key in ("openings", "closings")}
        for key, lines in lists.items():
            if not isinstance(lines, list) or not lines or not all(isinstance(x, str) and x.strip() for x in lines):
                raise ConfigError(f"{origin}: {tone}.{key} must be a list of one or more lines")
        out[tone] = Framing(
            tuple(" ".join(x.split()) for x in lists["openings"] or []),
            tuple(" ".join(x.split()) for x in lists["closings"] or []),
        )
    return out


def facts_of(request: EmailRequest) -> list[Quoted]:
    """The facts the model may pick, numbered from 1 in this order: each snippet's usable sentences, without
    those that restate the offer (the offer is stated once, in the campaign's words): more than half of their
    longer words are the offer's ("Gold and Platinum members of Northwind Plus get free assembly and
    installation ... on orders of $400 or more" after an offer of free assembly and installation on orders of
    $400 or more)."""
    return [s for group in usable_sentences(request) for s in group if not s.repeats and not restates(s.text, request)]


def restates(sentence: str, request: EmailRequest) -> bool:
    """Does the sentence, or a clause of it, say the offer again? More than half of its words (the retailer's
    own names aside) are the offer's, and either it adds no figure the offer lacks, or it covers most of the
    offer's words too. So "Every member return includes a free prepaid shipping label, and ..." after an offer
    "with a free prepaid shipping label on every member return" does, and so does "Platinum members receive
    a $50 welcome credit and a dedicated account manager, available weekdays from 8 a.m. ..." after an offer of
    exactly that; "Northwind Plus costs $9.99 a month or $99 a year" after a $99-a-year offer adds the monthly
    price and covers little of the offer: it does not."""
    names = {_stem(w.casefold()) for w in request.vocabulary.brand_words}
    offer, figures = _stems(request.offer) - names, numbers_in(request.offer)

    def again(text: str) -> bool:
        words = _stems(text) - names
        if not words or len(words & offer) * 2 <= len(words):
            return False
        covers = len(offer) >= COVER_MIN_WORDS and len(words & offer) >= COVER_SHARE * len(offer)
        return numbers_in(text) <= figures or covers

    return again(sentence) or any(again(clause) for clause in CLAUSE.split(sentence))


def subject_options(request: EmailRequest, limits: ValidationLimits) -> list[str]:
    """The subject lines to pick from: the offer and its first clauses, the snippets' titles, within the limit."""
    fitting = [s for s in subject_candidates(request) if len(s) <= limits.subject_max_chars]
    return fitting or [request.offer.strip()[: limits.subject_max_chars].rsplit(" ", 1)[0]]


def numbered(lines: Sequence[str]) -> str:
    return "\n".join(f"{n}. {line}" for n, line in enumerate(lines, 1))


def fact_lines(request: EmailRequest) -> str:
    """The numbered facts the prompt shows ("3. Members save 10% on every order.")."""
    return numbered([s.text for s in facts_of(request)])


def prompt_fields(request: EmailRequest, limits: ValidationLimits, framing: Framing) -> dict[str, str]:
    """The lists the guided request shows, numbered as the answer picks from them."""
    return {
        "subjects": numbered(subject_options(request, limits)),
        "openings": numbered(framing.openings),
        "facts": fact_lines(request),
        "closings": numbered(framing.closings),
    }


def read_plan(reply: AIMessage) -> tuple[GuidedDraft | None, str | None]:
    """The choices in a reply (tool-call arguments or JSON content), in the shapes small models write numbers
    in: 3, "3", "S3", [3, 1], "3, 1". A part not chosen is the list's first line; a reply that writes an
    email instead of choosing is refused (asked again): its text is not approved."""
    keys = {"subject", "opening", "facts", "closing"}
    error = unread(reply, "object with keys subject, opening, facts, closing", "answer with numbers only")
    for data in reply_objects(reply):
        if not keys & data.keys() and len(data) == 1 and isinstance(next(iter(data.values())), dict):
            data = next(iter(data.values()))  # a wrapper object: {"email": {...}}
        if "body" in data or not keys & data.keys():
            error = "the reply wrote an email instead of choosing: answer with the numbers of your choices only"
            continue
        return (
            GuidedDraft(
                subject=_first(_numbers(data.get("subject"))),
                opening=_first(_numbers(data.get("opening"))),
                facts=_numbers(data.get("facts")),
                closing=_first(_numbers(data.get("closing"))),
            ),
            None,
        )
    return None, error


def _stems(text: str) -> set[str]:
    """The longer words of a text without a plural or third-person ending: "expires" and "expire", "carries"
    and "carry", "cards" and "card" alike."""
    return {_stem(w) for w in long_words(text)}


def _stem(word: str) -> str:
    if word.endswith("ss"):
        return word
    word = re.sub(r"ies$", "y", word)
    word = re.sub(r"(?<=[a-z]{3})e?s$", "", word)
    return re.sub(r"(?<=[a-z]{3})e$", "", word)


def _first(numbers: list[int]) -> int:
    return numbers[0] if numbers else 1


def _numbers(value: Any) -> list[int]:
    """Numbers as small models write them: [3, 1], ["3", "1"], "3, 1", ["S3"], [{"number": 3}], 3."""
    items = value if isinstance(value, list) else [value] if value is not None else []
    out: list[int] = []
    for item in items:
        if isinstance(item, dict):
            item = next(iter(item.values()), None)
        if isinstance(item, bool):
            continue
        if isinstance(item, int):
            out.append(item)
        elif isinstance(item, float) and item.is_integer():
            out.append(int(item))
        elif isinstance(item, str):
            out += [int(n) for n in NUMBER_IN_ID.findall(item)]
    return out


# Words two framing lines may share without one echoing the other.
PLAIN_WORDS = frozenset(
    [
        "your",
        "with",
        "have",
        "this",
        "that",
        "would",
        "will",
        "from",
        "about",
        "there",
        "they",
        "them",
        "then",
        "than",
        "what",
        "when",
        "were",
        "been",
        "into",
        "more",
        "some",
        "such",
        "also",
        "just",
        "only",
        "each",
        "every",
        "other",
        "here",
        "offer",
    ]
)


def shares_a_word(line: str, other: str) -> bool:
    """Do two framing lines share a word of four letters or more ("We hope ... We hope ...", "glad to help.
    We would be glad to ...")? Stacked, they would read as padding."""
    ours = {w for w in re.findall(r"[a-z]{4,}", line.casefold())} - PLAIN_WORDS
    return bool(ours & set(re.findall(r"[a-z]{4,}", other.casefold())))


def _price_first(request: EmailRequest, listed: Sequence[Quoted]) -> list[int]:
    """The number of the fact that prices what the offer names ("Northwind Plus costs ..."), when the offer
    itself states no price: a reader asked to join is told what it costs."""
    if PRICED.search(request.offer):
        return []
    offer = request.offer.casefold()
    for number, fact in enumerate(listed, 1):
        priced = PRICE_FACT.match(fact.text)
        if priced and priced.group("what").casefold() in offer:
            return [number]
    return []


def _pick(lines: Sequence[str], number: int) -> str:
    """The line a number picks; one out of range picks the first (the model chose nothing we listed)."""
    return lines[number - 1] if 1 <= number <= len(lines) else lines[0]


def assemble(
    request: EmailRequest,
    plan: GuidedDraft,
    limits: ValidationLimits,
    framing: Framing,
    dropped: frozenset[str] = frozenset(),
) -> EmailDraft:
    """The email the choices describe, within the length limits where the facts allow (`dropped`: fact
    sentences a check found at fault, never used)."""
    listed = facts_of(request)  # as numbered in the prompt
    quoted = [s for group in usable_sentences(request) for s in group]  # the facts and the restating sentences
    facts = [f for f in listed if f.text not in dropped]
    lead = f"{_pick(framing.openings, plan.opening)} {request.offer.strip()}"
    closing = _pick(framing.closings, plan.closing)
    said = [written for text in (lead, closing) for _, written in sentences(text)]
    numbers = [*_price_first(request, listed), *plan.facts]
    picked: list[Quoted] = []
    for number in dict.fromkeys(numbers):
        if 1 <= number <= len(listed):
            fact = listed[number - 1]
            # A snippet is quoted from its start: a fact comes with the facts before it in its snippet ("The
            # annual plan saves $20.88" needs "Northwind Plus costs $9.99 a month or $99 a year" before it).
            # One that points back ("These ...", "Both ...") to a sentence the email cannot have is left out
            # (one the offer restates is there: the offer says it).
            before = [f for f in quoted if (f.snippet, f.index) == (fact.snippet, fact.index - 1)]
            if POINTS_BACK.search(fact.text) and (not before or before[0].text in dropped):
                continue
            earlier = [f for f in facts if f.snippet == fact.snippet and f.index < fact.index]
            for f in (*earlier, fact):
                if f not in picked and f.text not in dropped and not any(says_again(f.text, s) for s in said):
                    picked.append(f)
    spare = [f for f in _in_rounds(facts) if f not in picked and not any(says_again(f.text, s) for s in said)]
    chosen = _fitted(request, limits, lead, closing, picked, spare)
    # Still short with every fact in: the tone's other closing lines after the chosen one, as many as it takes
    # (never a snippet's sentence that restates the offer: a reader would read the offer twice).
    for other in [c for c in framing.closings if c != closing]:
        if _words(request, lead, chosen, closing) >= limits.body_min_words:
            break
        longer = _words(request, lead, chosen, f"{closing} {other}")
        if not shares_a_word(other, closing) and longer <= limits.body_max_words:
            closing = f"{closing} {other}"
    return EmailDraft(
        subject=_pick(subject_options(request, limits), plan.subject),
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


def _words(request: EmailRequest, lead: str, chosen: Sequence[Quoted], closing: str) -> int:
    """The words of the body as sent (cpo's greeting and sign-off included) that these parts lay out."""
    return word_count(body_as_sent(request, _compose(lead, chosen, closing)))


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
        return _words(request, lead, chosen, closing)

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
    request: EmailRequest,
    plan: GuidedDraft,
    limits: ValidationLimits,
    framing: Framing,
    check: Callable[[EmailDraft], ValidationReport],
) -> tuple[EmailDraft, list[str]]:
    """The choices assembled; then what a check finds at fault is changed and the email assembled again (no
    call): a faulted fact is left out, a faulted subject, opening or closing gives way to the next line of its
    list. Returns the draft and what was left out or replaced."""
    changed: list[str] = []
    left_out: frozenset[str] = frozenset()
    subjects = subject_options(request, limits)
    quoted = [s for group in usable_sentences(request) for s in group]  # the facts and restating sentences
    draft = assemble(request, plan, limits, framing)
    for _ in range(MAX_TRIMS):
        report = check(draft)
        if report.valid:
            break
        faulty = [fold(e.strip()) for i in report.issues if i.field == "body" for e in i.excerpts if e.strip()]

        def at_fault(sentence: str, faulty: list[str] = faulty) -> bool:
            folded = fold(sentence)
            return any(e in folded or folded in e for e in faulty)

        update: dict[str, int] = {}
        if any(i.field == "subject" for i in report.issues) and len(subjects) > 1:
            update["subject"] = _next(plan.subject, len(subjects))
            changed.append(f"subject: {draft.subject}")
        for part, lines in (("opening", framing.openings), ("closing", framing.closings)):
            line = _pick(lines, getattr(plan, part))
            if at_fault(line) and len(lines) > 1:
                update[part] = _next(getattr(plan, part), len(lines))
                changed.append(f"{part}: {line}")
        facts = {s.text for s in quoted if s.text in draft.body and at_fault(s.text)}
        if not update and not facts:
            break
        changed += [f"fact: {text}" for text in sorted(facts)]
        left_out |= facts
        plan = plan.model_copy(update=update)
        draft = assemble(request, plan, limits, framing, left_out)
    return draft, changed


def _next(number: int, count: int) -> int:
    """The next line of a list of `count` (after the last, the first): what a faulted pick gives way to."""
    current = number if 1 <= number <= count else 1
    return current % count + 1
