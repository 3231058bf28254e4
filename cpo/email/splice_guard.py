"""What a targeted repair's answer must not carry before cpo splices it into an email.

A repair asks the model for one piece (a subject, a paragraph, sentences to add); a small model often answers
with more than the piece: "To add to the email, you can say: "Notably, ..."", a greeting, a sign-off, the
text in quotes, a placeholder or a snippet id. Spliced in, that junk would pass as the customer's email when
the rest of the checks happen not to see it. So each answer is read on its own first; one that carries any of
these is discarded (the draft is left as it was, the call is recorded with the reason, and the next call is
varied), never inserted.
"""

from __future__ import annotations

import re

from cpo.core.models import EmailRequest
from cpo.email.normalize import GREETING
from cpo.email.replies import REPLY_LABEL
from cpo.email.rubric import META_TEXT, OPENING_GREETING, sign_off_in
from cpo.email.validation import PLACEHOLDER

QUOTES = "\"'`\u201c\u201d\u2018\u2019"
WRAPPED = re.compile(rf"^\s*[{QUOTES}][\s\S]*[{QUOTES}]\s*$")
LABELLED = re.compile(
    r"^\s*(?:new\s+|revised\s+|rewritten\s+)?(?:subject(?: line)?|paragraph|sentences?|body|email)\s*\d*\s*:",
    re.IGNORECASE | re.MULTILINE,
)


def junk_in(answer: str, request: EmailRequest, *, subject: bool = False) -> str | None:
    """Why a repair answer cannot be spliced in as it is, or None when it is only the piece asked for."""
    text = REPLY_LABEL.sub("", answer.strip(), count=1).strip()  # "Paragraph:" before the answer is only taken off
    if not text:
        return None
    if len(text) > 1 and WRAPPED.match(text) and text[0] in QUOTES and text[-1] in QUOTES:
        return "the answer is wrapped in quotes"
    meta = META_TEXT.search(text)
    if meta:
        return f'the answer talks about the writing ("{meta.group(0).strip()}")'
    label = LABELLED.search(text)
    if label and not subject:
        return f'the answer carries a label ("{label.group(0).strip()}")'
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if any(OPENING_GREETING.match(line) or GREETING.match(line) for line in lines):
        return "the answer greets the reader"
    closing = next((found for line in lines if (found := sign_off_in(line, request.sender.sign_off))), None)
    if closing:
        return f'the answer signs off ("{closing}")'
    placeholder = PLACEHOLDER.search(text)
    if placeholder:
        return f'the answer has a placeholder ("{placeholder.group(0)}")'
    # An id that is also a word of the sources ("price-match requests") is not a pasted id.
    sources = " ".join([request.offer, *(s.text for s in request.snippets)]).casefold()
    ids = [
        s.id
        for s in request.snippets
        if s.id.casefold() not in sources and re.search(rf"(?<![\w-]){re.escape(s.id)}(?![\w-])", text)
    ]
    if ids:
        return f'the answer names a snippet id ("{ids[0]}")'
    return None
