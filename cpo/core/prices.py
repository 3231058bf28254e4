"""USD prices per million tokens: what a price file and a deployments file may say a deployment or model costs."""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from cpo.core.usage import TokenCounts

PER_MTOK = Decimal(1_000_000)


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


class DeploymentPrice(ModelPrice):
    """Prices of one Azure deployment, optionally naming the model it serves."""

    model: str | None = None
