"""What a repair asks for: the calls the email loop makes, and how a targeted answer goes into the draft.

A repair round rewrites each failing part once (see `part_of`); an answer that gives back what it was
asked to change is a repeat (`repeats`), and the next call for it is varied.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage

from cpo.core.models import EmailDraft, Step, ValidationReport
from cpo.email.normalize import paragraphs
from cpo.email.replies import paragraph_text, subject_line

SUBJECT_FIX_MAX_TOKENS = 96  # three candidate lines


PARAGRAPH_MAX_TOKENS = 300  # one paragraph of at most ~100 words, with room to spare


SENTENCE_MAX_TOKENS = 60  # one sentence of an extension, with room to spare


# A varied retry after a repeated answer: warmer sampling and a new seed per attempt.
VARIED_TEMPERATURE = 0.9


# Problems a targeted repair cannot fix: the whole email is asked for again.
WHOLE_EMAIL = frozenset({"unparseable", "unknown_citation", "too_few_citations", "body_format"})


@dataclass
class Call:
    """One model call the loop wants made."""

    step: Step
    model: BaseChatModel
    messages: list[BaseMessage]
    kind: str = "email"  # "email" (structured), "text" (plain), "judge" (JSON object)
    vary: dict[str, Any] = field(default_factory=dict)
    index: int = -1  # the paragraph a "paragraph" or "shorten" call rewrites
    max_tokens: int | None = None  # a plain-text call's own output limit
    method: str | None = None  # the structured-output method it was last sent with
    shape: str = "email"  # what a structured call asks for: "email" (EmailDraft) or "plan" (GuidedDraft)
    # Re-renders a first prompt for the method in use after the server refused the one it was sent with
    # (`EmailChain._step` asks again in the same step): the new method's profile, not the refused one's.
    rebase: Callable[[Call], None] | None = None

    @property
    def name(self) -> str:
        return self.step if self.step in ("draft", "judge") else f"repair: {self.step}"


@dataclass
class Check:
    """A validation the driver records as its own trace run (inputs and report)."""

    report: ValidationReport
    subject: str
    body: str


def fingerprint(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", "", text.casefold()).split())


def apply_answer(call: Call, draft: EmailDraft, text: str) -> EmailDraft:
    """The draft with a targeted repair's answer put in its place (an empty answer changes nothing).

    A subject answer is a list of candidates; the chain picks among them before this is called.
    """
    if call.step == "subject":
        subject = subject_line(text)
        return draft.model_copy(update={"subject": subject}) if subject else draft
    new = paragraph_text(text)
    if not new:
        return draft
    parts = paragraphs(draft.body)
    if call.step == "extend":
        parts.insert(max(len(parts) - 1, 0) if len(parts) > 1 else len(parts), new)
    elif 0 <= call.index < len(parts):
        parts[call.index] = new
    return draft.model_copy(update={"body": "\n\n".join(parts)})


def part_of(call: Call) -> str:
    """The part of the email a call writes: the subject, one paragraph ("p2"), the length, or all of it."""
    if call.step == "paragraph":
        return f"p{call.index}"
    return {"subject": "subject", "extend": "length", "shorten": "length"}.get(call.step, "email")


def repeats(call: Call, draft: EmailDraft, previous: ValidationReport | None, seen: set[str]) -> bool:
    """Did the answer give back what it was asked to change (a subject or paragraph already written)?"""
    subject_seen = f"s:{fingerprint(draft.subject)}" in seen
    parts = paragraphs(draft.body)
    if call.step == "subject":
        return subject_seen
    if call.step in ("paragraph", "shorten", "extend"):
        index = call.index if call.step != "extend" else max(len(parts) - 2, 0)
        return 0 <= index < len(parts) and f"p:{fingerprint(parts[index])}" in seen
    fields = {i.field for i in previous.issues} if previous is not None else set()
    opening_seen = bool(parts) and f"p:{fingerprint(parts[0])}" in seen
    return ("subject" in fields and subject_seen) or (bool(fields - {"subject"}) and opening_seen)
