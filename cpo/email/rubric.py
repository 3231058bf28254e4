"""Rules of the sendability rubric (`docs/sendable.md`) that read the email as one piece of writing.

Each finds what a careful reader would not send, in the model's own paragraphs (cpo's greeting and sign-off
taken off): a second greeting or a sign-off inside the body, a sentence said twice, text about the writing
(meta-text), a claim that the reader already joined or was selected, a name no source uses, and a subject
that wears a label ("Urgent:", "Announcement!"). Each problem is (code, message, excerpts): the message doubles as the
repair request, the excerpts locate the paragraph to rewrite. Found on real-model emails (tests/sendable/).
"""

from __future__ import annotations

import re

from cpo.core.models import EmailRequest
from cpo.core.wording import NEAR_REPEAT, long_words, overlap
from cpo.email.normalize import CLOSING, TONE_LABEL, model_part, paragraphs

Problem = tuple[str, str, list[str]]
SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")
# A greeting opening a paragraph: "Hi there, Bronze members!", "Hello!", "Dear customer,".
OPENING_GREETING = re.compile(
    r"^(?:dear|hi|hello|hey|greetings|good (?:morning|afternoon|evening))\b[^.!?\n]{0,60}[,!]", re.IGNORECASE
)
REPEAT_MIN_WORDS = 6
# Note-taking shorthand no brand email uses: "$9.99/mo", "/yr", "desks & shelving", "w/".
SHORTHAND = re.compile(r"\d\s*/\s*(?:mo|yr|wk|mth)\b|\s&\s|\bw/\s|\bincl\.|\bapprox\.", re.IGNORECASE)
# The reader told they already did or got something the email is offering ("you've joined", "you have been
# selected", "you've already earned"): an upgrade email goes to people who have not upgraded.
STATUS_CLAIM = re.compile(
    r"\byou(?:'ve|\u2019ve| have)\s+(?:just\s+|already\s+|now\s+)?(?:joined|been\s+selected|been\s+chosen|"
    r"reached|earned|upgraded|become|unlocked|qualified)\b",
    re.IGNORECASE,
)
# Text about the writing, addressed to the sender rather than the customer: "Here is the revised paragraph",
# "To add to the email, you can say:", "Note:", "(52 words)". Found in real-model repair answers.
META_TEXT = re.compile(
    r"\b(?:here(?: is|'s|\u2019s) (?:the|your|a|an|my) (?:revised|rewritten|updated|new|improved|shorter|longer|"
    r"email|paragraph|subject|sentence|version|draft|text)|(?:you|we) (?:can|could|might) (?:say|write|add|use)\b|"
    r"to add to (?:the|this|your) (?:email|paragraph|message)|add (?:this|the following) (?:to|sentence|paragraph)|"
    r"(?:revised|rewritten|updated) (?:paragraph|version|email|subject|text)|i hope this (?:helps|meets|works)|"
    r"let me know if (?:you|this)|as an ai\b|word count|feel free to (?:adjust|edit|modify|change))"
    r"|^\s*(?:note|sure|certainly|of course|okay|paragraph|sentence|option|version)\s*\d*\s*[:!,]"
    r"|\(\s*\d+\s+words?\s*\)",
    re.IGNORECASE | re.MULTILINE,
)
# Thanks for having chosen, joined or supported a named programme ("Thank you for your continued support of
# Northwind Plus"): said to people the email asks to join it.
THANKS_FOR = re.compile(
    r"\bthank(?:s| you)(?: so much)? for (?:choosing|joining|being (?:a |an )?(?:part of |member of )?|"
    r"your (?:continued |ongoing )?(?:support|loyalty|membership|trust)(?: (?:of|to|in|with))?)\s+(?:our |the )?"
    r"(?P<name>[A-Z][\w-]*(?:\s+[A-Z][\w-]*){1,3})",
    re.IGNORECASE,
)
# A capitalised name of two or more words: a product, plan or programme.
FIGURE = re.compile(r"\$?\d[\d,]*(?:\.\d+)?%?")
SUBJECT_RULES = frozenset({"subject_label", "subject_figure", "subject_unfinished"})
# Words a subject cannot end on: they point past the end ("Join Northwind Plus for $99 a year and pay for it").
UNFINISHED = frozenset(
    ["it", "them", "this", "that", "these", "those", "for", "with", "and", "or", "to", "of", "on", "by", "the", "a"]
)  # the rules that judge the subject line
NAME = re.compile(r"\b[A-Z][a-z]+(?:\s+[A-Z][a-z]+)+\b")


def said_again(parts: list[str]) -> str | None:
    """The first sentence that repeats an earlier one, word for word or nearly (most of its longer words the
    same: "compared with" for "compared to", "$9.99/mo" for "$9.99 a month" restated)."""
    earlier: list[set[str]] = []
    for part in parts:
        for sentence in SENTENCE.split(part):
            words = long_words(sentence)
            if len(sentence_key(sentence).split()) < REPEAT_MIN_WORDS or len(words) < REPEAT_MIN_WORDS // 2:
                continue
            if any(overlap(words, seen) >= NEAR_REPEAT for seen in earlier):
                return sentence.strip()
            earlier.append(words)
    return None


def sentence_key(sentence: str) -> str:
    """A sentence compared without case, punctuation or spacing."""
    return " ".join(re.sub(r"[^\w\s]", " ", sentence.casefold()).split())


def rubric_problems(subject: str, body: str, request: EmailRequest) -> list[Problem]:
    """What the rubric's writing rules find in an email as sent (subject, body with cpo's frame)."""
    problems: list[Problem] = []
    own = model_part(body, request)
    parts = paragraphs(own)
    greetings = [p for p in parts if OPENING_GREETING.match(p)]
    if greetings:
        first = OPENING_GREETING.match(greetings[0])
        assert first is not None
        problems.append(
            (
                "second_greeting",
                f'the body greets the reader again ("{first.group(0)}"); cpo writes the only greeting: start '
                "with the message itself",
                [first.group(0)],
            )
        )
    sign_offs = [found for line in own.split("\n") if (found := sign_off_in(line, request.sender.sign_off)) is not None]
    if sign_offs:
        problems.append(
            (
                "sign_off_in_body",
                f'the body signs off ("{sign_offs[0]}"); cpo writes the only sign-off after your paragraphs: '
                "end with your last sentence",
                sign_offs[:1],
            )
        )
    again = said_again(parts)
    if again is not None:
        problems.append(
            (
                "repeated_sentence",
                f'a sentence says again what an earlier one said ("{again[:80]}"); say each thing once',
                [again],
            )
        )
    short = SHORTHAND.search(own)
    if short:
        problems.append(
            (
                "shorthand",
                f'the body writes in shorthand ("{short.group(0).strip()}"); write whole words',
                [short.group(0).strip()],
            )
        )
    claim = STATUS_CLAIM.search(f"{subject}\n{own}")
    said = claim.group(0).strip() if claim else thanked_for_the_offer(own, request)
    if said:
        problems.append(
            (
                "status_claim",
                f'the email tells the reader "{said}"; they have not: describe what they can do',
                [said],
            )
        )
    invented = invented_names(f"{subject}\n{own}", request)
    if invented:
        problems.append(
            (
                "invented_name",
                f'"{invented[0]}" is not a product, plan or programme the offer or the snippets name; use only '
                "the names they use",
                invented[:1],
            )
        )
    meta = META_TEXT.search(f"{subject}\n{own}")
    if meta:
        problems.append(
            (
                "meta_text",
                f'the email talks about its own writing ("{meta.group(0).strip()}"); write only what the customer '
                "should read",
                [meta.group(0).strip()],
            )
        )
    stray = subject_figures(subject, request.offer)
    if stray:
        problems.append(
            (
                "subject_figure",
                f'the subject states "{stray[0]}", which the offer does not: a subject headlines the offer; use '
                "its figures or none",
                [],
            )
        )
    return problems + headline_problems(subject)


def headline_problems(line: str, what: str = "subject") -> list[Problem]:
    """A subject's (or the preheader's, `what`) shape: cut off on a word that points past it, or led by a label."""
    problems: list[Problem] = []
    last = line.rstrip(" .!?").split()[-1:] if line.strip() else []
    if last and last[0].casefold().strip(",;:") in UNFINISHED:
        problems.append(
            (f"{what}_unfinished", f'the {what} stops on "{last[0]}", as if cut off; end it on the thing it names', [])
        )
    label = TONE_LABEL.match(line)
    if label:
        problems.append(
            (
                f"{what}_label",
                f'the {what} starts with a label ("{label.group(0).strip()}"); write the {what} as a plain phrase',
                [],
            )
        )
    return problems


def subject_figures(subject: str, offer: str) -> list[str]:
    """Figures in the subject that the offer does not state ("save $20.88" headlining a $9.99-a-month offer,
    where only the annual plan saves it): read as the offer's, they mislead."""

    def value(figure: str) -> str:
        return figure.strip("$%").replace(",", "").rstrip(".")

    offered = {value(f) for f in FIGURE.findall(offer)}
    return [f for f in FIGURE.findall(subject) if value(f) not in offered]


def retailer_words(request: EmailRequest) -> set[str]:
    """The words of the retailer's brand and tier names, case-folded: what an invented name is built from."""
    vocabulary = request.vocabulary
    return {w.casefold() for name in (*vocabulary.brand_words, *vocabulary.tiers) for w in name.split()}


def thanked_for_the_offer(text: str, request: EmailRequest) -> str | None:
    """Thanks for a programme named with two of the retailer's words that is not the sender's own name (the
    shop): the thing on offer, so the reader has not chosen it."""
    own_words = retailer_words(request)
    shop = " ".join(request.sender.brand.split()).casefold()
    for match in THANKS_FOR.finditer(text):
        words = match.group("name").split()
        if not words[0][:1].isupper():
            continue  # "thank you for choosing us", lower case: no name
        named = [w for w in words if w.casefold() in own_words]
        if (
            len(named) >= 2
            and " ".join(words).casefold() not in shop
            and not shop.startswith(" ".join(named).casefold())
        ):
            return match.group(0).strip()
    return None


def sign_off_in(line: str, sign_off: str) -> str | None:
    """The sign-off a line holds, as written there: a short closing line ("Best regards,"), or the sender's own
    sign-off text run into a sentence ("... every shipment! Best regards, The Northwind Plus team")."""
    if CLOSING.match(line.strip()) and len(line.split()) <= 5:
        return line.strip()
    words = sign_off.split()
    if not words:
        return None
    found = re.search(r"\s+".join(re.escape(w) for w in words), line, re.IGNORECASE)
    return found.group(0) if found else None


def invented_names(text: str, request: EmailRequest) -> list[str]:
    """Capitalised names built on two of the retailer's words (brand words, tiers: "Silver Plus", "Bronze Plus
    Plan") that no source names. A capitalised phrase with fewer is often just a title-case subject."""
    own_words = retailer_words(request)
    sources = " ".join([request.offer, *(s.text for s in request.snippets), request.sender.brand])
    known = " ".join(sources.split()).casefold()
    found: list[str] = []
    for match in NAME.finditer(text):
        run: list[str] = []
        for word in [*match.group(0).split(), ""]:  # "" ends the last run
            if word and word.casefold() in own_words:
                run.append(word)
                continue
            name = " ".join(run)
            # "Silver Plus" builds a name on two of the retailer's words; "Your Gold Upgrade" does not.
            if len(run) >= 2 and name.casefold() not in known and name not in found:
                found.append(name)
            run = []
    return found
