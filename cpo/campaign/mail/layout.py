"""One email layout for every export: a message's HTML part and text part, merge points in a platform's syntax.

The HTML part is rendered from `layouts/email.html.liquid` by python-liquid with autoescaping, so every
word of the email is escaped text, whoever wrote it; css-inline then moves the layout's CSS into `style`
attributes, as email clients need. The two merge points (the reader's first name, the unsubscribe URL)
are rendered as inert markers and only then replaced by the platform's own tags (`Merge`): nothing the
model or the customer file wrote is ever parsed as a template.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import css_inline
from liquid import Environment, StrictUndefined

from cpo.campaign.mail.message import MARKS, NAME_MARK, UNSUBSCRIBE_MARK, Message
from cpo.core.models import GREETING_TAG

LAYOUT = Path(__file__).parent / "layouts" / "email.html.liquid"
UNSUBSCRIBE_TAG = re.compile(r"\{\{\s*unsubscribe_url\s*\}\}")
LINK_LABEL = re.compile(r"([^\W\d_][\w' -]{0,40}):\s*$")  # "... Unsubscribe: " before the link: its label


@dataclass(frozen=True)
class Merge:
    """How a platform writes the two merge points, in the HTML part (escaped) and in the text part (raw)."""

    first_name_html: str
    first_name_text: str
    unsubscribe_html: str
    unsubscribe_text: str


# The merge tags of templates.json and of the canonical text, which the audit hashes.
CANONICAL = Merge(
    first_name_html='{{ first_name | default: "there" | escape }}',
    first_name_text=GREETING_TAG,
    unsubscribe_html="{{ unsubscribe_url }}",
    unsubscribe_text="{{ unsubscribe_url }}",
)


class LayoutError(ValueError):
    """A message that cannot be laid out safely (it holds cpo's own merge markers)."""


@cache
def _layout() -> object:
    environment = Environment(autoescape=True, undefined=StrictUndefined)
    return environment.from_string(LAYOUT.read_text(encoding="utf-8"))


def _marked(message: Message) -> Message:
    """The message with its merge tags as inert markers; refused if its own words hold a marker."""
    words = "\n".join([message.subject, message.preheader, message.body, message.sign_off, message.cta_text,
                       message.cta_url, message.footer, message.postal_address])  # fmt: skip
    if any(mark in words for mark in MARKS):
        raise LayoutError("the email's text holds a cpo merge marker; it cannot be laid out")
    return Message(
        subject=message.subject,
        preheader=message.preheader,
        body=message.body.replace(GREETING_TAG, NAME_MARK),
        sign_off=message.sign_off,
        cta_text=message.cta_text,
        cta_url=message.cta_url,
        footer=UNSUBSCRIBE_TAG.sub(UNSUBSCRIBE_MARK, message.footer),
        postal_address=message.postal_address,
    )


@lru_cache(maxsize=256)
def neutral_html(message: Message, lang: str = "en") -> str:
    """The HTML part with inert markers at the merge points: rendered, escaped, CSS inlined. Kept per message:
    every platform's part and every reader's check (`filled`) start from it."""
    marked = _marked(message)
    before, _, after = marked.footer.partition(UNSUBSCRIBE_MARK)
    label = LINK_LABEL.search(before)
    shown = label.group(1).strip() if label else "Unsubscribe"
    if label:
        before = before[: label.start()]
    page = _layout().render(  # type: ignore[attr-defined]
        lang=lang,
        subject=marked.subject,
        preheader=marked.preheader,
        paragraphs=marked.paragraphs,
        cta_text=marked.cta_text,
        cta_url=marked.cta_url,
        sign_off=marked.sign_off,
        footer_before=before,
        footer_after=after,
        unsubscribe_label=shown,
        unsubscribe_url=UNSUBSCRIBE_MARK,
        postal_address=marked.postal_address,
    )
    inlined: str = css_inline.inline(page)
    return inlined


def html_part(message: Message, merge: Merge, lang: str = "en") -> str:
    """The HTML part in a platform's syntax (`merge`)."""
    page = neutral_html(message, lang)
    return page.replace(UNSUBSCRIBE_MARK, merge.unsubscribe_html).replace(NAME_MARK, merge.first_name_html)


def text_part(message: Message, merge: Merge) -> str:
    """The plain-text part in a platform's syntax (`merge`)."""
    marked = _marked(message).text
    return marked.replace(UNSUBSCRIBE_MARK, merge.unsubscribe_text).replace(NAME_MARK, merge.first_name_text)


def filled(message: Message, first_name: str, unsubscribe_url: str, lang: str = "en") -> tuple[str, str]:
    """(HTML, text) as one reader receives them, filled without any template engine: what every platform's
    template must render to (`cpo.campaign.mail.platforms` checks that with the platform's engine)."""
    name = first_name or "there"
    page = neutral_html(message, lang).replace(UNSUBSCRIBE_MARK, html.escape(unsubscribe_url))
    page = page.replace(NAME_MARK, html.escape(name))
    text = _marked(message).text.replace(UNSUBSCRIBE_MARK, unsubscribe_url).replace(NAME_MARK, name)
    return page, text
