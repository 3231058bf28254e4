"""USD prices for token usage: genai-prices' maintained table, overridable by a user price file.

Price by the model that answered (`gpt-4o-mini-2024-07-18`), never by an Azure deployment name; an
unknown model has no price (None, one warning), never $0 and never another model's price.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import yaml
from genai_prices import Usage as _GPUsage
from genai_prices import calc_price
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cpo.errors import ConfigError

OFFLINE_MODEL = "cpo-offline"
PER_MTOK = Decimal(1_000_000)


class UnknownPriceWarning(UserWarning):
    """A model answered whose price cpo does not know; its cost is reported as None."""


@dataclass(frozen=True)
class TokenCounts:
    """What one call billed. input_tokens includes cached_input_tokens; output includes reasoning."""

    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0


class ModelPrice(BaseModel):
    """USD per million tokens."""

    model_config = ConfigDict(extra="forbid")
    input: Decimal = Field(ge=0)
    output: Decimal = Field(ge=0)
    cached_input: Decimal | None = Field(default=None, ge=0)

    def cost(self, counts: TokenCounts) -> Decimal:
        cached_rate = self.input if self.cached_input is None else self.cached_input
        uncached = counts.input_tokens - counts.cached_input_tokens
        return (
            uncached * self.input + counts.cached_input_tokens * cached_rate + counts.output_tokens * self.output
        ) / PER_MTOK


class PriceFile(BaseModel):
    """Schema of the user price file (YAML): deployment->model names and negotiated prices."""

    model_config = ConfigDict(extra="forbid")
    deployments: dict[str, str] = Field(default_factory=dict)
    models: dict[str, ModelPrice] = Field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> PriceFile:
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"CPO_PRICE_FILE: {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"CPO_PRICE_FILE: {path} is not valid YAML: {exc}".splitlines()[0]) from None
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"CPO_PRICE_FILE: {path}: {key}: {err['msg']}") from None


class PriceBook:
    """Looks up prices; user prices win, then genai-prices for the provider, else unknown."""

    def __init__(
        self,
        price_file: Path | None = None,
        *,
        provider_id: str | None = "azure",
        provider_api_url: str | None = None,
    ) -> None:
        self.user = PriceFile.load(price_file) if price_file else PriceFile()
        self.provider_id = provider_id
        self.provider_api_url = provider_api_url
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def resolve_model(self, reported: str | None, deployment: str | None = None) -> str | None:
        """The real model name: as reported by the provider, else the price file's deployment mapping."""
        if reported:
            return reported
        if deployment and deployment in self.user.deployments:
            return self.user.deployments[deployment]
        return None

    def cost(self, model: str | None, counts: TokenCounts, *, warn: bool = True) -> Decimal | None:
        """USD for these tokens, or None (with one warning per model) when the price is unknown."""
        if model == OFFLINE_MODEL:
            return Decimal(0)
        if model and model in self.user.models:
            return self.user.models[model].cost(counts)
        if model and (self.provider_id or self.provider_api_url):
            try:
                result = calc_price(
                    _GPUsage(
                        input_tokens=counts.input_tokens,
                        cache_read_tokens=counts.cached_input_tokens,
                        output_tokens=counts.output_tokens,
                    ),
                    model,
                    provider_id=self.provider_id,
                    provider_api_url=None if self.provider_id else self.provider_api_url,
                )
                return Decimal(result.total_price)
            except LookupError:
                pass
        if warn:
            self._warn_unknown(model or "<unreported>")
        return None

    def _warn_unknown(self, model: str) -> None:
        with self._lock:
            if model in self._warned:
                return
            self._warned.add(model)
        warnings.warn(
            f"no price known for model {model!r}: its cost is reported as unknown (None); "
            "add it to a price file (CPO_PRICE_FILE) to price it",
            UnknownPriceWarning,
            stacklevel=3,
        )
