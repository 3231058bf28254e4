"""The campaign file: what `cpo run` sends to whom (offers, snippets, sender, allocation, rules, vocabulary).

A YAML file with a pydantic schema: a mistake is one `InputError` naming the file and the key. Everything
that can be checked without a model is checked here, before the first paid call: the arms the allocation
names, the footer's unsubscribe link, and every number of every offer against the offer's own snippets.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cpo.campaign.agents.columns import CONSENT, SEND_LIST_COLUMNS, canonical_key
from cpo.campaign.mail.message import MARKS, CallToAction, Frame
from cpo.core.errors import InputError
from cpo.core.files import load_yaml_model
from cpo.core.models import DEFAULT_TIERS, TONES, Sender, Snippet, Vocabulary, tier_names, vocabulary_words
from cpo.core.resources import bundled
from cpo.email.content import load_snippets
from cpo.email.grounding import check_grounding
from cpo.email.textsafety import smuggled

DEFAULT_OFFER = "default"
MAX_WEIGHT = 1e6  # relative weights; a larger one (or inf, nan) would overflow the allocation's bounds
UNSUBSCRIBE_TAG = re.compile(r"\{\{\s*unsubscribe_url\s*\}\}")
PASSED_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
# The send list's own columns and the consent column: not passed through under the same name.
OWN_COLUMNS = (*SEND_LIST_COLUMNS, CONSENT)


class Offer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    offer: str = Field(min_length=1)
    snippets: list[str] = Field(min_length=1)
    cta: CallToAction | None = None  # this segment's call to action; else the campaign's


class Campaign(BaseModel):
    """A campaign as written in its YAML file; `rules` is resolved relative to that file."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    rules: Path
    sender: Sender = Field(default_factory=Sender)
    allocation: dict[str, float] = Field(default_factory=dict)
    holdout: float = Field(0.0, ge=0, lt=1)
    # How customers are dealt to arms (`cpo.campaign.agents.assignment`): "balanced" blocks per segment, or "hash"
    # (a customer's arm from the seed and their id alone: customers appended later move no one).
    assignment: Literal["balanced", "hash"] = "balanced"
    unsubscribe: str = Field(min_length=1)
    # What a customer file without a consent column means: "warn" (everyone consented, with a warning on
    # stderr and in run.json) or "required" (the file is refused).
    consent: Literal["warn", "required"] = "warn"
    # Only for `cpo run --render` previews: the platform fills {{ unsubscribe_url }} when it sends.
    unsubscribe_url: str = "https://example.com/unsubscribe"
    from_address: str = "no-reply@example.com"
    offers: dict[str, Offer] = Field(min_length=1)
    # The link every email asks the reader to follow (an offer may name its own); cpo adds UTM parameters.
    cta: CallToAction
    utm_source: str = Field("cpo", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,59}$")
    # Columns of the customer file passed through, as they are, to the send list and every platform's audience
    # file (a store, a loyalty number): named as headers are matched (case and spacing aside).
    audience_columns: list[str] = Field(default_factory=list, max_length=20)
    # The retailer's words the grounding check reads entities with (see `cpo.core.models.Vocabulary`).
    tiers: list[str] = Field(default_factory=lambda: list(DEFAULT_TIERS), min_length=1)
    brand_words: list[str] = Field(default_factory=lambda: list(Vocabulary().brand_words))

    @field_validator("tiers", "brand_words")
    @classmethod
    def _words(cls, value: list[str]) -> list[str]:
        return vocabulary_words(value)

    @field_validator("tiers")
    @classmethod
    def _tier_names(cls, value: list[str]) -> list[str]:
        return tier_names(value)

    @field_validator("allocation")
    @classmethod
    def _arms(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(TONES))
        if unknown:
            raise ValueError(f"unknown arm {unknown[0]!r}; the arms are {', '.join(TONES)}")
        if any(not math.isfinite(w) or not 0 <= w <= MAX_WEIGHT for w in value.values()):
            raise ValueError(f"weights must be numbers from 0 to {MAX_WEIGHT:g} (relative: 1, 1, 2 is fine)")
        if value and sum(value.values()) <= 0:
            raise ValueError("weights must not all be zero")
        return value

    @field_validator("unsubscribe")
    @classmethod
    def _link(cls, value: str) -> str:
        if not UNSUBSCRIBE_TAG.search(value):
            raise ValueError("the footer has no {{ unsubscribe_url }} link: every email must carry one")
        rest = UNSUBSCRIBE_TAG.sub("", value)
        if any(mark in rest for mark in ("{{", "{%", "{#", "<!--", "<")) or len(UNSUBSCRIBE_TAG.findall(value)) > 1:
            raise ValueError(
                "the footer is plain text with one merge tag, {{ unsubscribe_url }}: no other tags, Liquid or "
                "HTML (a comment or tag could hide the link)"
            )
        _plain_line("the footer", rest)
        return value

    @model_validator(mode="after")
    def _sender_lines(self) -> Campaign:
        """The sender's lines go into every email's layout as they are: plain text only."""
        sender = self.sender
        for what, text in (("sender.brand", sender.brand), ("sender.greeting", sender.greeting.replace("{name}", "")),
                           ("sender.sign_off", sender.sign_off)):  # fmt: skip
            _plain_line(what, text)
        return self

    @field_validator("audience_columns")
    @classmethod
    def _passed(cls, value: list[str]) -> list[str]:
        keys = [canonical_key(name) for name in value]
        for name, key in zip(value, keys, strict=True):
            if not PASSED_NAME.fullmatch(key):
                raise ValueError(f"{name!r} is not a column name: letters, digits and spaces, starting with a letter")
            if key in OWN_COLUMNS:
                raise ValueError(f"{name!r} is a column cpo writes itself ({', '.join(OWN_COLUMNS)})")
        if len(set(keys)) != len(keys):
            raise ValueError("a column is listed twice (names are matched ignoring case and spacing)")
        return keys

    @field_validator("sender")
    @classmethod
    def _postal(cls, value: Sender) -> Sender:
        address = " ".join(value.postal_address.split())
        if not address:
            raise ValueError(
                "postal_address is required: commercial email must carry the sender's postal address "
                "(CAN-SPAM and similar laws); every footer shows it"
            )
        if smuggled(address, subject=True) or len(address) > 200:
            raise ValueError("postal_address must be one plain line of at most 200 characters (no links, tags or HTML)")
        return value.model_copy(update={"postal_address": address})

    @property
    def frame(self) -> Frame:
        """What cpo adds around every email of this campaign (`cpo.campaign.mail.message`)."""
        ctas = {name: offer.cta or self.cta for name, offer in self.offers.items()}
        ctas.setdefault(DEFAULT_OFFER, self.cta)
        slug = re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-") or "campaign"
        return Frame(
            footer=self.unsubscribe,
            postal_address=self.sender.postal_address,
            sign_off=self.sender.sign_off,
            ctas=ctas,
            campaign=slug,
            utm_source=self.utm_source,
        )

    @property
    def vocabulary(self) -> Vocabulary:
        return Vocabulary(tiers=tuple(self.tiers), brand_words=tuple(self.brand_words))

    def offer_for(self, segment: str) -> Offer | None:
        return self.offers.get(segment) or self.offers.get(DEFAULT_OFFER)


def _plain_line(what: str, text: str) -> None:
    """Refuse (ValueError) a line cpo adds to every email that holds a link, markup, a template tag of any platform,
    a control or look-alike character, or one of the layout's merge markers."""
    found = smuggled(text, subject=False)
    if found:
        raise ValueError(f"{what}: {found[0].message.replace('the body has', 'has')}")
    if any(mark in text for mark in MARKS):
        raise ValueError(f"{what} holds one of cpo's merge markers ({', '.join(MARKS)})")


def default_campaign_file() -> Path:
    return bundled("data") / "campaign.yaml"


def load_campaign(path: Path | None = None, snippets: dict[str, Snippet] | None = None) -> Campaign:
    """Read and check a campaign file: the schema, the rules file, and every snippet id it names."""
    path = path or default_campaign_file()
    campaign = load_yaml_model(path, Campaign, "campaign file", InputError)
    rules = campaign.rules if campaign.rules.is_absolute() else path.parent / campaign.rules
    if not rules.is_file():
        raise InputError(f"campaign file {path}: rules: {rules} does not exist")
    known = snippets if snippets is not None else load_snippets()
    for name, offer in campaign.offers.items():
        missing = [s for s in offer.snippets if s not in known]
        if missing:
            raise InputError(f"campaign file {path}: offers.{name}: unknown snippet {missing[0]!r}")
        _check_offer(path, name, offer, [known[s] for s in offer.snippets], campaign.vocabulary)
    return campaign.model_copy(update={"rules": rules})


def _check_offer(path: Path, name: str, offer: Offer, snippets: list[Snippet], vocabulary: Vocabulary) -> None:
    """Every number an offer states must be stated by one of its snippets, with the same unit and period:
    an email may repeat the offer, so an offer the snippets contradict would go out with both figures."""
    problems = [p for p in check_grounding(offer.offer, snippets, vocabulary=vocabulary) if p.code != "unbacked_claim"]
    if problems:
        first = problems[0]
        detail = "" if first.code == "ungrounded_number" else f" ({first.message})"
        raise InputError(
            f"campaign file {path}: offers.{name}: the offer states {first.claim!r} and none of its snippets "
            f"({', '.join(s.id for s in snippets)}) does with the same unit and period{detail}"
        )
