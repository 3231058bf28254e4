"""The closed list of changes cpo makes to a model's email text, and the body as sent.

The model writes the subject and the paragraphs; cpo writes the greeting and the sign-off from the
request's `Sender`. Before checking, cpo applies only these normalizations, each recorded on the
variant so nobody mistakes cpo's edits for the model's work:

- `unicode_compatibility`: compatibility characters (full-width letters, ligatures, non-breaking spaces)
  replaced by their plain form (Unicode NFKC), so what is checked is what is kept.
- `subject_label`: a leading `Subject:` label removed from the subject, or a `Subject: ...` line from
  the top of the body; or a label brands do not send (`Urgent:`, `Reminder -`) before a subject of at least
  three words.
- `markdown_emphasis`: `**bold**`, `__bold__` and `*italic*` markers removed, the words kept.
- `greeting_replaced`: a greeting the model wrote anyway (`Dear [Customer Name],` on a line of its own, or
  `Hi there!` opening the first sentence) removed, because cpo's own greeting is added.
- `sign_off_replaced`: a sign-off the model wrote anyway (`Best regards,\\n[Your Name]`, or run on after the
  last sentence: `... today! Best regards, The team`) removed, because cpo's own sign-off is added.

Under guided composition (`cpo.email.guided`), where a small model only chooses and cpo writes the email
from approved text, one more is recorded: `choice_changed`, a chosen fact a check found at fault and left
out, or a chosen subject, opening or closing line that gave way to the next one in its list.

Nothing else: text is never truncated, padded or reworded here. A draft that is too long or too short
goes back to the model with the measured length and the target.
"""

from __future__ import annotations

import re
import unicodedata

from cpo.core.models import EmailDraft, EmailRequest, Normalization

SUBJECT_LABEL = re.compile(r"^\s*[*_#>\s]*subject\s*[*_]*\s*:\s*[*_]*\s*", re.IGNORECASE)
# A label before the subject that brands mark mail with ("Urgent:", "Reminder -", "Last chance!").
TONE_LABEL = re.compile(
    r"^\W*(?:urgent|important|reminder|alert|attention|announcement|news|notice|final notice|last chance|"
    r"act now|hurry|limited time|action required|update)\s*[:!\-\u2013\u2014|]",
    re.IGNORECASE,
)
BODY_SUBJECT_LINE = re.compile(r"\A\s*[*_#>\s]*subject\s*[*_]*\s*:[^\n]*\n+", re.IGNORECASE)
EMPHASIS = (
    re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*", re.DOTALL),
    re.compile(r"(?<![\w_])__(?=\S)(.+?)(?<=\S)__(?![\w_])", re.DOTALL),
    re.compile(r"(?<![\w*])\*(?=[^\s*])([^*\n]+?)(?<=[^\s*])\*(?![\w*])"),
)
GREETING = re.compile(
    r"^(?:dear|hi|hello|hey|greetings|good (?:morning|afternoon|evening))\b[^\n.!?]{0,60}?[,:!.]?[ \t]*$",
    re.IGNORECASE,
)
CLOSING = re.compile(
    r"^(?:(?:best|kind|warm|warmest|with)?\s*regards|best(?: wishes)?|warm(?:est)? wishes|sincerely|"
    r"yours(?: sincerely| truly)?|cheers|thanks|thank you|many thanks|all the best|talk soon)\b[^\n]{0,30}[,!.]?$",
    re.IGNORECASE,
)
# A greeting run into the first line ("Hi there! We're ...", "Hello, Bronze members! With ..."): a short
# greeting phrase ended by punctuation, then a new sentence.
LEADING_GREETING = re.compile(
    r"\A(?:dear|hi|hello|hey|greetings|good (?:morning|afternoon|evening))\b[^.!?:,\n]{0,40}(?:,[^.!?:,\n]{0,40})?[!.:]"
    r"[ \t]+(?=[A-Z])",
    re.IGNORECASE,
)
# A sign-off run on after the last sentence ("... join today! Best regards, The Northwind Plus team").
TRAILING_SIGN_OFF = re.compile(
    r"(?<=[.!?])[ \t]+(?:(?:best|kind|warm|warmest)\s+regards|regards|sincerely|cheers|best wishes|warm wishes|"
    r"all the best)\b[^.!?\n]{0,50}[.!]?\s*\Z",
    re.IGNORECASE,
)
SIGNATURE_LINE_WORDS = 7
MERGE_TAG = re.compile(r"\{\{\s*[A-Za-z_][\w.]*\s*(?:\|\s*default:\s*\"(?P<fallback>[^\"]*)\"\s*)?\}\}")


def _strip_greeting(body: str) -> tuple[str, str | None]:
    lines = body.lstrip().split("\n")
    first = lines[0].strip()
    if first and len(first.split()) <= 8 and GREETING.match(first):
        return "\n".join(lines[1:]).lstrip("\n"), first
    run_in = LEADING_GREETING.match(body.lstrip())
    if run_in and len(run_in.group(0).split()) <= 8:
        return body.lstrip()[run_in.end() :], run_in.group(0).strip()
    return body, None


def _strip_sign_off(body: str) -> tuple[str, str | None]:
    """A closing line near the end followed only by short signature lines (names, titles, placeholders), or a
    sign-off run on after the last sentence."""
    run_on = TRAILING_SIGN_OFF.search(body.rstrip())
    if run_on:
        return body.rstrip()[: run_on.start()].rstrip(), run_on.group(0).strip()
    lines = body.rstrip().split("\n")
    for i in range(len(lines) - 1, max(-1, len(lines) - 6), -1):
        line = lines[i].strip()
        if CLOSING.match(line) and len(line.split()) <= 5:
            tail = [t.strip() for t in lines[i + 1 :] if t.strip()]
            if all(len(t.split()) <= SIGNATURE_LINE_WORDS for t in tail):
                return "\n".join(lines[:i]).rstrip(), "\n".join([line, *tail])
            return body, None
    return body, None


def normalize(draft: EmailDraft) -> tuple[EmailDraft, list[Normalization]]:
    """The draft after the closed list of normalizations, and what was changed."""
    done: list[Normalization] = []
    subject, body = draft.subject.strip(), draft.body.strip()

    plain = unicodedata.normalize("NFKC", subject), unicodedata.normalize("NFKC", body)
    if plain != (subject, body):
        compat = sorted({c for c in subject + body if unicodedata.normalize("NFKC", c) != c})
        shown = ", ".join(f"U+{ord(c):04X}" for c in compat[:8]) or "combining sequences"
        subject, body = plain[0].strip(), plain[1].strip()
        done.append(
            Normalization(code="unicode_compatibility", detail=f"replaced with their plain form (NFKC): {shown}")
        )

    if SUBJECT_LABEL.match(subject):
        subject = SUBJECT_LABEL.sub("", subject, count=1).strip()
        done.append(Normalization(code="subject_label", detail="removed a 'Subject:' label from the subject"))
    label = TONE_LABEL.match(subject)
    rest = subject[label.end() :].strip(" -:|\u2013\u2014") if label else ""
    if label and len(rest.split()) >= 3:
        subject = rest[:1].upper() + rest[1:]
        done.append(
            Normalization(code="subject_label", detail=f"removed a {label.group(0).strip()!r} label from the subject")
        )
    if BODY_SUBJECT_LINE.match(body):
        body = BODY_SUBJECT_LINE.sub("", body, count=1).strip()
        done.append(Normalization(code="subject_label", detail="removed a 'Subject: ...' line from the body"))

    marked = 0
    for pattern in EMPHASIS:
        subject, n_subject = pattern.subn(r"\1", subject)
        body, n_body = pattern.subn(r"\1", body)
        marked += n_subject + n_body
    if marked:
        done.append(
            Normalization(code="markdown_emphasis", detail=f"removed {marked} markdown emphasis marker pair(s)")
        )

    body, greeting = _strip_greeting(body)
    if greeting is not None:
        done.append(Normalization(code="greeting_replaced", detail=f"replaced the model's greeting {greeting!r}"))
    body, sign_off = _strip_sign_off(body)
    if sign_off is not None:
        done.append(Normalization(code="sign_off_replaced", detail=f"replaced the model's sign-off {sign_off!r}"))
    return draft.model_copy(update={"subject": subject, "body": body}), done


def paragraphs(text: str) -> list[str]:
    """Paragraphs separated by blank lines, each with its inner whitespace kept."""
    return [p.strip() for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]


def body_as_sent(request: EmailRequest, model_body: str) -> str:
    """cpo's greeting, the model's paragraphs, cpo's sign-off: the text the limits apply to."""
    sender = request.sender
    greeting = sender.greeting_line(request.merge_fields.get("first_name"))
    return "\n\n".join([greeting, *paragraphs(model_body), sender.sign_off])


def model_part(body: str, request: EmailRequest) -> str:
    """The body without cpo's greeting line and sign-off, when they are there as cpo writes them: the inverse
    of `body_as_sent`, what the rubric reads as the model's own text."""
    sender = request.sender
    greeting = sender.greeting_line(request.merge_fields.get("first_name"))
    text = body.strip()
    if text.startswith(greeting):
        text = text[len(greeting) :]
    if text.rstrip().endswith(sender.sign_off.strip()):
        text = text.rstrip()[: -len(sender.sign_off.strip())]
    return text.strip()


def as_read(text: str) -> str:
    """The text as a customer reads it: each Liquid merge tag shown as its fallback (or removed)."""
    return MERGE_TAG.sub(lambda m: m.group("fallback") or "", text)


def word_count(text: str) -> int:
    """Words as a reader sees them, so `{{ first_name | default: "there" }}` counts as one word."""
    return len(as_read(text).split())


def frame_words(request: EmailRequest) -> int:
    """Words cpo adds around the model's paragraphs."""
    return word_count(body_as_sent(request, ""))
