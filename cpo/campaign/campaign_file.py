"""The campaign file: what `cpo run` sends to whom (offers, snippets, sender, allocation, rules, vocabulary).

A YAML file with a pydantic schema: a mistake is one `InputError` naming the file and the key.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cpo.core.errors import InputError
from cpo.core.files import load_yaml_model
from cpo.core.models import DEFAULT_TIERS, Sender, Snippet, Vocabulary, vocabulary_words
from cpo.core.resources import bundled
from cpo.email.content import load_snippets

DEFAULT_OFFER = "default"


class Offer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    offer: str = Field(min_length=1)
    snippets: list[str] = Field(min_length=1)


class Campaign(BaseModel):
    """A campaign as written in its YAML file; `rules` is resolved relative to that file."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    rules: Path
    sender: Sender = Field(default_factory=Sender)
    allocation: dict[str, float] = Field(default_factory=dict)
    holdout: float = Field(0.0, ge=0, lt=1)
    unsubscribe: str = Field(min_length=1)
    # Only for `cpo run --render` previews: the platform fills {{ unsubscribe_url }} when it sends.
    unsubscribe_url: str = "https://example.com/unsubscribe"
    from_address: str = "no-reply@example.com"
    offers: dict[str, Offer] = Field(min_length=1)
    # The retailer's words the grounding check reads entities with (see `cpo.core.models.Vocabulary`).
    tiers: list[str] = Field(default_factory=lambda: list(DEFAULT_TIERS), min_length=1)
    brand_words: list[str] = Field(default_factory=lambda: list(Vocabulary().brand_words))

    @field_validator("tiers", "brand_words")
    @classmethod
    def _words(cls, value: list[str]) -> list[str]:
        return vocabulary_words(value)

    @property
    def vocabulary(self) -> Vocabulary:
        return Vocabulary(tiers=tuple(self.tiers), brand_words=tuple(self.brand_words))

    def footed(self, body: str) -> str:
        return footed(body, self.unsubscribe)

    def offer_for(self, segment: str) -> Offer | None:
        return self.offers.get(segment) or self.offers.get(DEFAULT_OFFER)


def footed(body: str, footer: str) -> str:
    """A body with the unsubscribe footer: the text every export writes and the safety screen reads."""
    return f"{body}\n\n--\n{footer}"


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
    return campaign.model_copy(update={"rules": rules})
