"""Reading a model's replies: JSON emails in the shapes small models give, plain-text subjects and paragraphs."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from langchain_core.messages import AIMessage
from pydantic import ValidationError

from cpo.core.models import EmailDraft, ValidationIssue
from cpo.email.normalize import paragraphs

LIST_MARK = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+")


REPLY_LABEL = re.compile(r"^\s*(?:new\s+)?(?:subject(?: line)?|paragraph)\s*:\s*", re.IGNORECASE)


SUBJECT_PARTS = re.compile(r"\s*(?::|\s[-\u2013\u2014|]\s)\s*")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'])")


def lenient_json(text: str) -> dict[str, Any] | None:
    """Parse a JSON object out of model text: tolerates code fences, prose around it, raw newlines."""
    match = re.search(r"\{.*\}", text, re.DOTALL)
    if not match:
        return None
    try:
        value = json.loads(match.group(0), strict=False)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def draft_shape(data: dict[str, Any]) -> dict[str, Any]:
    """Accept the shapes small models give in JSON mode: a wrapper object, a body as a list of paragraphs."""
    if "subject" not in data and len(data) == 1:
        (inner,) = data.values()
        if isinstance(inner, dict):
            data = inner
    body = data.get("body")
    if isinstance(body, list) and all(isinstance(p, str) for p in body):
        data = {**data, "body": "\n\n".join(p.strip() for p in body)}
    citations = data.get("citations")
    if isinstance(citations, str):
        data = {**data, "citations": [c.strip() for c in citations.split(",") if c.strip()]}
    return data


def field_error(exc: ValidationError) -> str:
    """Which field is wrong and how, e.g. "field 'body': Field required"."""
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"field {where!r}: {err['msg']}")
    return "; ".join(parts)


def tokens_of(reply: AIMessage) -> tuple[int, int]:
    usage = reply.usage_metadata
    return (usage["input_tokens"], usage["output_tokens"]) if usage else (0, 0)


def subject_line(text: str) -> str:
    """The subject from a plain-text subject-fix reply: its first non-empty line, without quotes or label."""
    line = next((ln.strip() for ln in text.strip().splitlines() if ln.strip()), "")
    return REPLY_LABEL.sub("", line).strip().strip("\"'`").strip()


def paragraph_text(text: str) -> str:
    """A plain-text paragraph reply without a leading label or wrapping quotes, joined into one paragraph."""
    body = REPLY_LABEL.sub("", text.strip()).strip().strip("\"'`").strip()
    return " ".join(body.split())


def subject_candidates(text: str) -> list[str]:
    """The subject lines of a subject-fix reply (it asks for 3), numbering, labels and quotes removed; after
    them, each half of a two-part line ("Upgrade to Northwind Plus: Exclusive Offer for Bronze Members"), at
    least 3 words long: the model's own words, shorter, for when every line it wrote is too long."""
    lines = [LIST_MARK.sub("", line) for line in text.strip().splitlines() if line.strip()]
    whole = [c for c in (subject_line(line) for line in lines) if c]
    halves = [h.strip() for c in whole for h in SUBJECT_PARTS.split(c) if len(h.split()) >= 3 and h.strip() != c]
    return list(dict.fromkeys([*whole, *halves]))


def sentences_of(text: str) -> list[str]:
    return [s.strip() for p in paragraphs(text) for s in SENTENCE_END.split(p) if s.strip()]


def reply_objects(reply: AIMessage) -> Iterator[dict[str, Any]]:
    """The JSON objects a structured reply may hold, in the order to try them: tool-call arguments (parsed, or
    as the server sent them when they did not parse), then the text content (code fences and prose allowed)."""
    candidates: list[Any] = [c["args"] for c in reply.tool_calls]
    candidates += [str(c.get("args") or "") for c in reply.invalid_tool_calls]
    candidates.append(str(reply.content or ""))
    for candidate in candidates:
        data = candidate if isinstance(candidate, dict) else lenient_json(candidate)
        if data is not None:
            yield data


def unread(reply: AIMessage, expected: str, cut_off: str) -> str:
    """Why a reply held no usable object: cut off at the token limit, or not the JSON asked for."""
    if reply.response_metadata.get("finish_reason") == "length":
        return f"the reply was cut off at the output token limit (finish_reason=length); {cut_off}"
    preview = " ".join(str(reply.content or "").split())[:80]
    return f"the reply was not a JSON {expected}: {preview!r}"


def read_draft(reply: AIMessage) -> tuple[EmailDraft | None, str | None]:
    """The EmailDraft in a reply: tool-call arguments or JSON content, tolerating common shapes."""
    error = unread(reply, "email object with keys subject, body, citations", "write a shorter email")
    for data in reply_objects(reply):
        try:
            return EmailDraft.model_validate(draft_shape(data)), None
        except ValidationError as exc:
            error = f"the reply's JSON is not an email object ({field_error(exc)}); keys: subject, body, citations"
    return None, error


def judged_issues(reply: AIMessage, sentences: list[str]) -> list[ValidationIssue]:
    """Issues for the sentences the judge found unsupported; an unreadable verdict fails closed."""
    data = lenient_json(str(reply.content or ""))
    items = data.get("unsupported") if data is not None else None
    if not isinstance(items, list):
        return [
            ValidationIssue(
                code="judge_failed", message="the grounding judge's answer could not be read", field="reply"
            )
        ]
    issues = []
    for item in items:
        number: Any = item.get("sentence") if isinstance(item, dict) else item
        try:
            index = int(number) - 1
        except (TypeError, ValueError):
            continue
        if 0 <= index < len(sentences):
            reason = str(item.get("reason", "")).strip() if isinstance(item, dict) else ""
            issues.append(
                ValidationIssue(
                    code="unsupported_sentence",
                    message=f"the snippets do not support {sentences[index]!r}" + (f": {reason}" if reason else ""),
                    field="subject" if index == 0 else "body",
                )
            )
    return issues
