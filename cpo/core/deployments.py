"""The deployments file (CPO_DEPLOYMENTS_FILE): several Azure deployments, each with its quota and price.

One campaign can outgrow one deployment's quota; users then spread it over deployments in several
regions or resources. The file names each one (the name is what the ledger, costs and `cpo check`
show), where it is, its quota (requests and tokens per minute, paced by `cpo.net.pacing`) and,
optionally, its price: Global, Data Zone and Regional deployments of one model bill differently, so
a cost is exact only when priced per deployment. Keys never go in the file: `api_key_env` names the
environment variable that holds a deployment's key (AZURE_OPENAI_API_KEY by default; Entra ID sign-in
when that is unset too).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cpo.core.errors import ConfigError
from cpo.core.files import load_yaml_model
from cpo.core.prices import DeploymentPrice

VARIABLE = "CPO_DEPLOYMENTS_FILE"
DEFAULT_KEY_VARIABLE = "AZURE_OPENAI_API_KEY"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SECRET_KEYS = ("api_key", "key", "api-key", "secret", "password", "token")


class Deployment(BaseModel):
    """One Azure OpenAI deployment: where it is, its quota and, if the user knows it, its price."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    endpoint: str
    deployment: str = Field(min_length=1)
    rpm: int | None = Field(None, gt=0, strict=True)
    tpm: int | None = Field(None, gt=0, strict=True)
    price: str | DeploymentPrice | None = None
    api_key_env: str = DEFAULT_KEY_VARIABLE
    api_version: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("a name is 1-64 letters, digits, '.', '_' or '-' (it is shown in costs and logs)")
        return value

    @field_validator("deployment", mode="before")
    @classmethod
    def _stripped(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value

    @field_validator("price", mode="before")
    @classmethod
    def _price(cls, value: Any) -> Any:
        """A mapping is prices (its own error, not the model-name branch's 'should be a valid string')."""
        if not isinstance(value, dict):
            return value
        try:
            return DeploymentPrice.model_validate(value)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(part) for part in err["loc"])
            raise ValueError(f"{key + ': ' if key else ''}{err['msg']}") from None

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"not an http(s) URL: {value!r}")
        return value

    @field_validator("api_key_env")
    @classmethod
    def _variable(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", value):
            raise ValueError("the name of an environment variable (the key itself never goes in this file)")
        return value

    def describe(self) -> str:
        quota = ", ".join(f"{n:,} {unit}" for n, unit in ((self.rpm, "RPM"), (self.tpm, "TPM")) if n)
        return f"{self.name} ({self.endpoint} deployment {self.deployment}{'; ' + quota if quota else ''})"


class DeploymentsFile(BaseModel):
    """The file: the deployments, and how long one may fail (429 or 5xx) before work moves off it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    deployments: list[Deployment] = Field(min_length=1)
    # Seconds of unbroken 429/5xx/timeouts from a deployment after which new work goes to the others.
    failover_after: float = Field(30.0, gt=0, le=3600)

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, raw: Any) -> Any:
        """A key written in the file would be committed with it: refuse it, naming where it is."""
        entries = raw.get("deployments") if isinstance(raw, dict) else None
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            for name in entry if isinstance(entry, dict) else {}:
                if str(name).lower() in _SECRET_KEYS:
                    raise ValueError(
                        f"deployments.{i}.{name}: keys do not belong in this file; put the key in an environment "
                        f"variable and name it with api_key_env (default {DEFAULT_KEY_VARIABLE})"
                    )
        return raw

    @model_validator(mode="after")
    def _unique(self) -> DeploymentsFile:
        seen: set[str] = set()
        for entry in self.deployments:
            if entry.name.casefold() in seen:
                raise ValueError(f"two deployments are named {entry.name!r} (case aside); names must be unique")
            seen.add(entry.name.casefold())
        return self

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.deployments]


def load_deployments(path: Path) -> DeploymentsFile:
    """Read and check the file; every problem is one line naming the variable, the file and the key."""
    return load_yaml_model(path, DeploymentsFile, f"{VARIABLE}:", ConfigError)
