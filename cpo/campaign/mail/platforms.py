"""The email platforms cpo exports to: each one's merge syntax, audience columns, and a check by its engine.

Every exported template is rendered with a real engine for its platform's syntax — python-liquid for
Liquid (Braze, Customer.io, generic), pybars3 for Handlebars (Iterable, SendGrid) — or, for Mailchimp's
merge tags, checked against its documented tags and filled by a small stub. A platform's own attribute
syntax and helpers that no engine knows are stubbed (`STUBS`, each following the platform page cited in
`docs/platforms.md`). A template passes when, for several readers (a name, none, a hostile one), the
engine's output is what `cpo.campaign.mail.layout.filled` writes without any engine, no tag is left unrendered,
and a hostile name is escaped in the HTML part. A template that fails is not exported.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from liquid import Environment, StrictUndefined

from cpo.campaign.mail.layout import CANONICAL, Merge, filled
from cpo.campaign.mail.message import Message

Syntax = Literal["liquid", "handlebars", "mailchimp"]
Field = Literal["id", "email", "first_name", "arm", "variant_id", "segment"]


@dataclass(frozen=True)
class Platform:
    name: str
    title: str
    syntax: Syntax
    merge: Merge
    columns: dict[Field, str]  # the audience CSV's header for each field, in order
    needs_email: bool  # the platform sends to an address it imports: a file without one cannot be exported


CPO_COLUMNS: dict[Field, str] = {"arm": "cpo_arm", "variant_id": "cpo_variant_id", "segment": "cpo_segment"}

PLATFORMS: dict[str, Platform] = {
    "liquid": Platform(
        "liquid",
        "Generic Liquid",
        "liquid",
        CANONICAL,
        {
            "id": "customer_id",
            "email": "email",
            "first_name": "first_name",
            "arm": "arm",
            "variant_id": "variant_id",
            "segment": "segment",
        },
        needs_email=False,
    ),
    "braze": Platform(
        "braze",
        "Braze",
        "liquid",
        Merge(
            first_name_html="{{${first_name} | default: 'there' | escape}}",
            first_name_text="{{${first_name} | default: 'there'}}",
            unsubscribe_html="{{${set_user_to_unsubscribed_url}}}",
            unsubscribe_text="{{${set_user_to_unsubscribed_url}}}",
        ),
        {"id": "external_id", "email": "email", "first_name": "first_name", **CPO_COLUMNS},
        needs_email=False,
    ),
    "customerio": Platform(
        "customerio",
        "Customer.io",
        "liquid",
        Merge(
            first_name_html='{{ customer.first_name | default: "there" | escape }}',
            first_name_text='{{ customer.first_name | default: "there" }}',
            unsubscribe_html="{% unsubscribe_url %}",
            unsubscribe_text="{% unsubscribe_url %}",
        ),
        {"id": "id", "email": "email", "first_name": "first_name", **CPO_COLUMNS},
        needs_email=False,
    ),
    "iterable": Platform(
        "iterable",
        "Iterable",
        "handlebars",
        Merge(
            first_name_html='{{defaultIfEmpty firstName "there"}}',
            first_name_text='{{{defaultIfEmpty firstName "there"}}}',
            unsubscribe_html="{{unsubscribeUrl}}",
            unsubscribe_text="{{{unsubscribeUrl}}}",
        ),
        {
            "id": "userId",
            "email": "email",
            "first_name": "firstName",
            "arm": "cpoArm",
            "variant_id": "cpoVariantId",
            "segment": "cpoSegment",
        },
        needs_email=False,
    ),
    "sendgrid": Platform(
        "sendgrid",
        "SendGrid Marketing Campaigns",
        "handlebars",
        Merge(
            first_name_html="{{#if first_name}}{{first_name}}{{else}}there{{/if}}",
            first_name_text="{{#if first_name}}{{{first_name}}}{{else}}there{{/if}}",
            unsubscribe_html="{{{unsubscribe}}}",
            unsubscribe_text="{{{unsubscribe}}}",
        ),
        {"email": "email", "id": "external_id", "first_name": "first_name", **CPO_COLUMNS},
        needs_email=True,
    ),
    "mailchimp": Platform(
        "mailchimp",
        "Mailchimp",
        "mailchimp",
        Merge(
            first_name_html="*|IF:FNAME|**|FNAME|**|ELSE:|*there*|END:IF|*",
            first_name_text="*|IF:FNAME|**|FNAME|**|ELSE:|*there*|END:IF|*",
            unsubscribe_html="*|UNSUB|*",
            unsubscribe_text="*|UNSUB|*",
        ),
        {
            "email": "Email Address",
            "first_name": "First Name",
            "id": "Customer ID",
            "arm": "CPO Arm",
            "variant_id": "CPO Variant",
            "segment": "CPO Segment",
        },
        needs_email=True,
    ),
}

# What each platform's engine is given that a generic engine does not know (listed in docs/platforms.md).
STUBS = {
    "braze": "`${attribute}` read as the variable `braze_attribute` (python-liquid has no `${...}` syntax)",
    "customerio": "the tag `{% unsubscribe_url %}` read as the variable `cio_unsubscribe_url`",
    "iterable": "the helper `defaultIfEmpty value default` (the value when set, else the default)",
    "mailchimp": "a filler for the documented tags this export uses: `*|FNAME|*`, `*|UNSUB|*`, "
    "`*|IF:FNAME|*...*|ELSE:|*...*|END:IF|*`",
}
# Mailchimp's merge tags (https://mailchimp.com/help/all-the-merge-tags-cheat-sheet/): the ones an export may use.
MAILCHIMP_TAGS = {"FNAME", "LNAME", "EMAIL", "UNSUB", "UPDATE_PROFILE", "IF:FNAME", "ELSE:", "END:IF"}
LEFT_OVER = re.compile(r"\{\{|\}\}|\{%|%\}|\*\||\|\*|\$\{|<%|%>")
HOSTILE_NAME = '<b>Ada</b> & "Bo" {{ x }}'
READERS = ("Ada", "", HOSTILE_NAME)
CHECK_UNSUBSCRIBE = "https://unsubscribe.example/u?token=a1&list=b2"


class TemplateCheckError(ValueError):
    """A platform template that does not render to the email the audit passed."""


def _liquid(source: str, context: dict[str, Any]) -> str:
    return str(Environment(undefined=StrictUndefined).from_string(source).render(**context))


@lru_cache(maxsize=256)
def _compiled(source: str) -> Any:
    """A Handlebars template compiled once (pybars3 compiles slowly; each is rendered for several readers)."""
    import pybars  # type: ignore[import-untyped]

    return pybars.Compiler().compile(source)


def _default_if_empty(_this: Any, value: Any, default: Any) -> Any:
    return value if value else default


def _handlebars(source: str, context: dict[str, Any]) -> str:
    return str(_compiled(source)(context, helpers={"defaultIfEmpty": _default_if_empty}))


def _mailchimp(source: str, context: dict[str, Any], *, as_html: bool) -> str:
    unknown = sorted(set(re.findall(r"\*\|([^|*]*)\|\*", source)) - MAILCHIMP_TAGS)
    if unknown:
        raise TemplateCheckError(f"merge tags not in Mailchimp's documented set: {', '.join(unknown)}")
    values = {k: (html.escape(v) if as_html else v) for k, v in context.items()}

    def branch(match: re.Match[str]) -> str:
        return match.group(2) if values.get(match.group(1)) else match.group(3)

    out = re.sub(r"\*\|IF:(\w+)\|\*(.*?)\*\|ELSE:\|\*(.*?)\*\|END:IF\|\*", branch, source, flags=re.S)
    return re.sub(r"\*\|(\w+)\|\*", lambda m: values[m.group(1)], out)


def render(platform: Platform, source: str, first_name: str, unsubscribe_url: str, *, as_html: bool) -> str:
    """One reader's email from a platform template, by that platform's engine (and its stubs)."""
    name = platform.name
    if name == "braze":
        source = re.sub(r"\$\{(\w+)\}", r"braze_\1", source)
        return _liquid(source, {"braze_first_name": first_name, "braze_set_user_to_unsubscribed_url": unsubscribe_url})
    if name == "customerio":
        source = source.replace("{% unsubscribe_url %}", "{{ cio_unsubscribe_url }}")
        return _liquid(source, {"customer": {"first_name": first_name}, "cio_unsubscribe_url": unsubscribe_url})
    if name == "liquid":
        return _liquid(source, {"first_name": first_name, "unsubscribe_url": unsubscribe_url})
    if name == "iterable":
        return _handlebars(source, {"firstName": first_name, "unsubscribeUrl": unsubscribe_url})
    if name == "sendgrid":
        return _handlebars(source, {"first_name": first_name, "unsubscribe": unsubscribe_url})
    if name == "mailchimp":
        return _mailchimp(source, {"FNAME": first_name, "UNSUB": unsubscribe_url}, as_html=as_html)
    raise TemplateCheckError(f"no engine for platform {name!r}")


def check_template(platform: Platform, message: Message, html_source: str, text_source: str) -> None:
    """Render a platform's template for several readers and compare with the email as it must arrive."""
    for reader in READERS:
        want_html, want_text = filled(message, reader, CHECK_UNSUBSCRIBE)
        parts: list[tuple[str, str, str, bool]] = [("HTML", html_source, want_html, True),
                                                   ("text", text_source, want_text, False)]  # fmt: skip
        for part, source, want, as_html in parts:
            try:
                got = render(platform, source, reader, CHECK_UNSUBSCRIBE, as_html=as_html)
            except TemplateCheckError:
                raise
            except Exception as exc:
                raise TemplateCheckError(f"{platform.title}'s engine cannot render the {part} part: {exc}") from exc
            if as_html and reader == HOSTILE_NAME and "<b>Ada</b>" in got:
                raise TemplateCheckError("the HTML part does not escape the reader's name")
            # Engines escape differently (&#39; or &#x27;): compared as a reader sees the text.
            same = html.unescape(got) == html.unescape(want) if as_html else got == want
            if not same:
                raise TemplateCheckError(f"the {part} part does not render to the email the audit passed")
            left = LEFT_OVER.search(got) if reader != HOSTILE_NAME else None  # that name holds braces itself
            if left:
                raise TemplateCheckError(f"the {part} part leaves a tag unrendered ({left.group(0)!r})")


def checker(platform: Platform) -> Callable[[Message, str, str], None]:
    return lambda message, page, text: check_template(platform, message, page, text)
