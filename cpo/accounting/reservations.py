"""What a call will be priced as before it answers, and the most it can cost: what a budget reserves.

The model is never the Azure deployment name: it is the price file's mapping of the deployment, the
model the user named (CPO_MODEL_NAME), or the model an earlier reply from that deployment reported.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from cpo.accounting.pricing import PriceBook, deployment_of
from cpo.core.errors import UnpricedBudget
from cpo.core.usage import TokenCounts
from cpo.net.tokens import count_text_tokens, count_tokens

# The worst case of a call that sets no max_tokens: the largest output of current OpenAI chat models.
DEFAULT_WORST_OUTPUT_TOKENS = 16_384


def schema_tokens(params: dict[str, Any], model: str | None) -> int:
    """Tokens of the tools / response_format schema a request carries (billed as input)."""
    parts = [params.get(key) for key in ("tools", "functions", "response_format")]
    extra = params.get("extra_body")
    if isinstance(extra, dict):
        parts.append(extra.get("response_format"))
    return sum(count_text_tokens(json.dumps(part, default=str), model) for part in parts if part)


class ModelHints:
    """The model a call will be priced as; learns which model each Azure deployment serves. Thread-safe."""

    def __init__(self, prices: PriceBook, default_model: str | None) -> None:
        self.prices, self.default_model = prices, default_model
        self._learned: dict[str, str] = {}
        self._lock = threading.Lock()

    def model_for(self, params: dict[str, Any]) -> str | None:
        """The model a call with these parameters will be priced as; never an Azure deployment name."""
        deployment = deployment_of(params)
        if "azure" in str(params.get("_type", "")) or deployment:
            # `model` is what the user named (CPO_MODEL_NAME), never the deployment.
            with self._lock:
                learned = self._learned.get(deployment) if deployment else None
            return self.prices.deployment_model(deployment) or self.default_model or params.get("model") or learned
        return self.default_model or params.get("model") or params.get("model_name")

    def learn(self, deployment: str | None, reported: str | None) -> None:
        """Remember which model an Azure deployment serves, to reserve for its later calls."""
        if deployment and reported:
            with self._lock:
                self._learned.setdefault(deployment, reported)

    def worst_case(
        self, messages: Sequence[Any], params: dict[str, Any], max_usd: Decimal | None
    ) -> Callable[[], Decimal | None]:
        """The most this call can cost: its input counted locally (schemas included) plus max_tokens of output.

        Returned as a function of what is known when it is asked: None while the model is not known
        yet (the first call to an Azure deployment with no CPO_MODEL_NAME), a price once a reply named
        it; UnpricedBudget when the model is known but has no price.
        """
        output = params.get("max_tokens") or params.get("max_completion_tokens") or DEFAULT_WORST_OUTPUT_TOKENS
        hint = self.model_for(params)
        input_tokens = count_tokens(messages, hint) + schema_tokens(params, hint)
        worst = TokenCounts(input_tokens=input_tokens, output_tokens=int(output))
        deployment = deployment_of(params)

        def priced() -> Decimal | None:
            model = self.model_for(params)
            if not self.prices.is_priced(model, deployment):
                if model is None:
                    return None
                raise UnpricedBudget(model, max_usd or Decimal(0))
            return self.prices.cost(model, worst, deployment=deployment, warn=False)

        return priced
