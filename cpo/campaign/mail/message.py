"""The email as sent: subject, preheader, body, call to action and footer, in one canonical text.

This text is what the safety screen reads, what the audit hashes and what every export lays out, so a
part cpo adds (the call to action, the unsubscribe footer, the sender's postal address) is screened and
bound like the model's words. The call to action's link carries UTM parameters naming the campaign, the
variant (`utm_content`) and its arm (`utm_term`), so a click is attributed to what was sent.

The canonical text is `subject`, a blank line, the preheader and a blank line (when there is one), then the
text part: the body up to its sign-off, the call to action as `text: url`, the sign-off, and the footer
after `--`. An email made before the call to action and preheader (no CTA, no preheader) reads as it did:
subject, blank line, body, footer, so older runs verify unchanged.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cpo.core.models import EmailVariant
from cpo.email.textsafety import smuggled

UTM_MEDIUM = "email"
# The inert markers the layout puts at the merge points (`cpo.campaign.mail.layout`): no text may hold them.
UNSUBSCRIBE_MARK = "https://cpo-merge.invalid/unsubscribe"  # .invalid: never a real host (RFC 2606)
NAME_MARK = "cpoMergeFirstName"
MARKS = (UNSUBSCRIBE_MARK, NAME_MARK, "cpo-merge.invalid", "cpoMerge")
CTA_MAX_CHARS = 40


class CallToAction(BaseModel):
    """The one link an email asks the reader to follow (besides unsubscribing): a short plain label and an
    https URL. cpo adds it to every email; the model never writes a link."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    text: str = Field(min_length=2, max_length=CTA_MAX_CHARS)
    url: str = Field(min_length=9, max_length=500)

    @field_validator("text")
    @classmethod
    def _plain(cls, value: str) -> str:
        value = " ".join(value.split())
        found = smuggled(value, subject=True)
        if found:
            why = found[0].message.replace("the subject", "the text")
            raise ValueError(f"the call to action's text must be plain words: {why}")
        return value

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        return checked_url(value)


def checked_url(value: str) -> str:
    """An https URL with a host, no spaces, credentials or template tags, and no UTM parameters of its own
    (cpo adds them per variant); else a ValueError saying which."""
    if any(unicodedata.category(ch)[0] in "CZ" or ch in "\"'<>{}\\" for ch in value):
        raise ValueError("the URL has spaces, quotes, brackets, braces or control characters: write it percent-encoded")
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"{value[:60]!r} is not an https URL with a host")
    if not parts.hostname.isascii():
        raise ValueError("the URL's host has letters outside ASCII (a look-alike?): write it in its xn-- form")
    try:
        parts.port  # noqa: B018 (raises for a port out of range)
    except ValueError:
        raise ValueError("the URL's port is not a port number") from None
    if parts.username or parts.password:
        raise ValueError("the URL carries a user name or password")
    taken = sorted({k for k, _ in parse_qsl(parts.query, keep_blank_values=True) if k.lower().startswith("utm_")})
    if taken:
        raise ValueError(f"the URL has its own {', '.join(taken)}: cpo adds the UTM parameters per variant")
    return value


@dataclass(frozen=True)
class Frame:
    """What cpo adds around every email of a campaign. `ctas` maps a segment (or "default") to its call to
    action; `campaign` is the utm_campaign value. A frame without a call to action adds none (tests, and
    emails made before calls to action)."""

    footer: str
    postal_address: str = ""
    sign_off: str = ""
    ctas: Mapping[str, CallToAction] = field(default_factory=dict)
    campaign: str = ""
    utm_source: str = "cpo"

    def cta_for(self, segment: str) -> CallToAction | None:
        return self.ctas.get(segment) or self.ctas.get("default")

    def link(self, variant: EmailVariant) -> str:
        """The variant's call-to-action URL with its UTM parameters, or "" when there is none."""
        return self.link_for(variant.segment, variant.variant_id, variant.tone)

    def link_for(self, segment: str, variant_id: str, arm: str) -> str:
        cta = self.cta_for(segment)
        if cta is None:
            return ""
        parts = urlsplit(cta.url)
        utm = {
            "utm_source": self.utm_source,
            "utm_medium": UTM_MEDIUM,
            "utm_campaign": self.campaign,
            "utm_content": variant_id,
            "utm_term": arm,
        }
        query = "&".join(q for q in (parts.query, urlencode(list(utm.items()))) if q)  # the author's query as written
        return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))

    @property
    def fixed_text(self) -> str:
        """Every line cpo adds, as one text: checked against the safety policy before the first paid call."""
        return "\n".join([self.footer, self.postal_address, *(c.text for c in self.ctas.values())])


@dataclass(frozen=True)
class Message:
    """One variant as sent, merge tags unfilled (`{{ first_name | default: "there" }}`, `{{ unsubscribe_url }}`)."""

    subject: str
    preheader: str
    body: str  # the greeting and paragraphs, up to the sign-off
    sign_off: str
    cta_text: str
    cta_url: str
    footer: str
    postal_address: str

    @property
    def paragraphs(self) -> list[str]:
        return [p.strip() for p in re.split(r"\n\s*\n", self.body) if p.strip()]

    @property
    def text(self) -> str:
        """The plain-text part."""
        parts = [self.body]
        if self.cta_text:
            parts.append(f"{self.cta_text}: {self.cta_url}")
        if self.sign_off:
            parts.append(self.sign_off)
        foot = "\n".join(p for p in (self.footer, self.postal_address) if p)
        return "\n\n".join(parts) + f"\n\n--\n{foot}"

    @property
    def canonical(self) -> str:
        """What the screen reads and the audit hashes: subject, preheader (when set), the text part."""
        head = f"{self.subject}\n\n{self.preheader}" if self.preheader else self.subject
        return f"{head}\n\n{self.text}"


def message_of(variant: EmailVariant, frame: Frame) -> Message:
    """A variant as sent, with the frame's call to action (before the sign-off) and footer."""
    return framed(variant.subject, variant.preheader, variant.body, frame, variant.segment, variant.variant_id,
                  variant.tone)  # fmt: skip


def framed(subject: str, preheader: str, body: str, frame: Frame, segment: str, variant_id: str, arm: str) -> Message:
    """An email's own words (`body` as sent, sign-off included) with what the frame adds for its segment, variant
    and arm: the one place that says where the call to action, the sign-off and the footer go."""
    sign_off = ""
    cta = frame.cta_for(segment)
    if cta is not None and frame.sign_off and body.rstrip().endswith(frame.sign_off.strip()):
        body, sign_off = body.rstrip()[: -len(frame.sign_off.strip())].rstrip(), frame.sign_off.strip()
    return Message(
        subject=subject,
        preheader=preheader,
        body=body,
        sign_off=sign_off,
        cta_text=cta.text if cta else "",
        cta_url=frame.link_for(segment, variant_id, arm) if cta else "",
        footer=frame.footer,
        postal_address=frame.postal_address,
    )


def sent_text(variant: EmailVariant, frame: Frame) -> str:
    """What a customer receives of a variant, as one text: the screen reads it, the audit hashes it."""
    return message_of(variant, frame).canonical
