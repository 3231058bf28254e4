"""USD prices for token usage: genai-prices' maintained table, overridable by a user price file.

Lookup order for a call: a price-file entry for the Azure deployment (Global, Data Zone, Regional and
provisioned deployments of one model bill differently); else the model the response reports
(`gpt-4o-mini-2024-07-18`), from the price file or genai-prices; never the deployment name taken as a
model name. An unknown model has no price (None, one log line), never $0 and never another model's price.
"""

from __future__ import annotations

import logging
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cpo.core.errors import ConfigError
from cpo.core.files import load_yaml_model
from cpo.core.prices import DeploymentPrice, ModelPrice
from cpo.core.settings import Settings
from cpo.core.usage import TokenCounts
from cpo.net.hooks import DEPLOYMENT_PARAM

log = logging.getLogger(__name__)

OFFLINE_MODEL = "cpo-offline"


def deployment_of(params: dict[str, Any]) -> str | None:
    """The deployment a call goes to, as prices and the ledger know it (None for a non-Azure call)."""
    named = params.get(DEPLOYMENT_PARAM) or params.get("azure_deployment")
    return str(named) if named else None


class PriceFile(BaseModel):
    """Schema of the user price file (YAML): deployments (a model name, or prices) and model prices."""

    model_config = ConfigDict(extra="forbid")
    deployments: dict[str, str | DeploymentPrice] = Field(default_factory=dict)
    models: dict[str, ModelPrice] = Field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> PriceFile:
        return load_yaml_model(path, cls, "CPO_PRICE_FILE:", ConfigError, empty_ok=True)


class PriceBook:
    """Looks up prices: the price file first (deployment, then model), then genai-prices, else unknown."""

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

    def deployment_model(self, deployment: str | None) -> str | None:
        """The model a deployment serves according to the price file, if it says."""
        entry = self.user.deployments.get(deployment) if deployment else None
        return entry if isinstance(entry, str) else (entry.model if entry is not None else None)

    def resolve_model(self, reported: str | None, deployment: str | None = None) -> str | None:
        """The real model name: as reported by the provider, else the price file's deployment mapping."""
        return reported or self.deployment_model(deployment)

    def cost(
        self, model: str | None, counts: TokenCounts, *, deployment: str | None = None, warn: bool = True
    ) -> Decimal | None:
        """USD for these tokens, or None (with one log line per model) when the price is unknown.

        A price-file entry for the deployment wins; else the model (the reply's, or the price file's
        mapping of the deployment), priced by the price file, then genai-prices.
        """
        entry = self.user.deployments.get(deployment) if deployment else None
        if isinstance(entry, DeploymentPrice):
            return entry.cost(counts)
        name = model or self.deployment_model(deployment)
        cost = self._model_cost(name, counts) if name else None
        if cost is None and warn:
            self._warn_unknown(name or "<unreported>")
        return cost

    def is_priced(self, model: str | None, deployment: str | None = None) -> bool:
        return self.cost(model, TokenCounts(), deployment=deployment, warn=False) is not None

    def _model_cost(self, model: str, counts: TokenCounts) -> Decimal | None:
        if model == OFFLINE_MODEL:
            return Decimal(0)
        if model in self.user.models:
            return self.user.models[model].cost(counts)
        if not (self.provider_id or self.provider_api_url):
            return None
        from genai_prices import Usage as _GPUsage
        from genai_prices import calc_price

        usage = _GPUsage(
            input_tokens=counts.input_tokens,
            cache_read_tokens=counts.cached_input_tokens,
            output_tokens=counts.output_tokens,
        )
        try:
            if self.provider_id:
                return Decimal(calc_price(usage, model, provider_id=self.provider_id).total_price)
            return Decimal(calc_price(usage, model, provider_api_url=self.provider_api_url).total_price)
        except LookupError:
            return None

    def _warn_unknown(self, model: str) -> None:
        with self._lock:
            if model in self._warned:
                return
            self._warned.add(model)
        log.warning(
            "no price known for model %r: its cost is reported as unknown; add it to a price file (CPO_PRICE_FILE)",
            model,
        )


def price_book_for(settings: Settings) -> PriceBook:
    """Prices for the configured provider: Azure's table (also for offline what-ifs); a self-hosted
    OpenAI-compatible server is priced only if genai-prices knows its URL or the price file names the model.
    With a deployments file, each deployment's own price entry (or the price file's entry for its name, then
    for its Azure deployment name) prices the calls sent to it."""
    provider = settings.provider
    book = PriceBook(
        settings.price_file,
        provider_id=None if provider == "openai-compatible" else "azure",
        provider_api_url=settings.openai_base_url if provider == "openai-compatible" else None,
    )
    pool = settings.deployments
    listed = dict(book.user.deployments)  # the price file's own entries: one entry never prices another
    for entry in pool.deployments if pool is not None else []:
        price = entry.price or listed.get(entry.name) or listed.get(entry.deployment)
        if price is not None:
            book.user.deployments[entry.name] = price
    return book
