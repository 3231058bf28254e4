"""Configuration from the environment and `.env`, validated once, with errors that name the variable."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import AliasChoices, Field, PrivateAttr, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cpo.core.deployments import DeploymentsFile, load_deployments
from cpo.core.errors import ConfigError

Provider = Literal["azure", "openai-compatible", "offline"]
StructuredMethod = Literal["auto", "json_schema", "function_calling", "json_mode"]
PromptProfile = Literal["auto", "compact", "full", "guided"]


def _env(*names: str) -> Any:
    return Field(None, validation_alias=AliasChoices(*names))


class Settings(BaseSettings):
    """Everything cpo reads from the environment. Field names are the Python names; env names are aliases."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        case_sensitive=False,
    )

    azure_endpoint: str | None = _env("AZURE_OPENAI_ENDPOINT", "azure_endpoint")
    azure_api_key: SecretStr | None = _env("AZURE_OPENAI_API_KEY", "azure_api_key")
    azure_deployment: str | None = _env("AZURE_OPENAI_DEPLOYMENT_NAME", "AZURE_OPENAI_DEPLOYMENT", "azure_deployment")
    azure_api_version: str = Field(
        "2024-10-21", validation_alias=AliasChoices("AZURE_OPENAI_API_VERSION", "azure_api_version")
    )
    openai_base_url: str | None = _env("OPENAI_BASE_URL", "openai_base_url")
    openai_api_key: SecretStr | None = _env("OPENAI_API_KEY", "openai_api_key")
    model_name: str | None = _env("CPO_MODEL_NAME", "model_name")
    provider_choice: Literal["auto", "azure", "openai-compatible", "offline"] = Field(
        "auto", validation_alias=AliasChoices("CPO_PROVIDER", "provider_choice")
    )
    timeout: float = Field(10.0, gt=0, validation_alias=AliasChoices("CPO_LLM_TIMEOUT", "timeout"))
    max_retries: int = Field(3, ge=0, le=20, validation_alias=AliasChoices("CPO_LLM_MAX_RETRIES", "max_retries"))
    retry_max_wait: float = Field(30.0, ge=0, validation_alias=AliasChoices("CPO_RETRY_MAX_WAIT", "retry_max_wait"))
    email_deadline: float = Field(120.0, gt=0, validation_alias=AliasChoices("CPO_EMAIL_DEADLINE", "email_deadline"))
    # The deployment's quota: requests and tokens per window (a minute on Azure), paced before each request is
    # sent (`cpo.net.pacing`). Unset: no pacing. The window is shorter only for tests with scaled-down quotas.
    rpm: int | None = Field(None, gt=0, validation_alias=AliasChoices("CPO_RPM", "rpm"))
    tpm: int | None = Field(None, gt=0, validation_alias=AliasChoices("CPO_TPM", "tpm"))
    # Several Azure deployments, each with its quota and price (`cpo.core.deployments`), instead of one.
    deployments_file: Path | None = _env("CPO_DEPLOYMENTS_FILE", "deployments_file")
    quota_window: float = Field(60.0, gt=0, le=3600, validation_alias=AliasChoices("CPO_QUOTA_WINDOW", "quota_window"))
    max_output_tokens: int = Field(
        1000, ge=16, le=100_000, validation_alias=AliasChoices("CPO_MAX_OUTPUT_TOKENS", "max_output_tokens")
    )
    structured_output_method: StructuredMethod = Field(
        "auto", validation_alias=AliasChoices("CPO_STRUCTURED_OUTPUT", "structured_output_method")
    )
    # The first prompt's profile: compact rules where the endpoint enforces json_schema (auto), or always one.
    prompt_profile: PromptProfile = Field("auto", validation_alias=AliasChoices("CPO_PROMPT_PROFILE", "prompt_profile"))
    offline_fallback: bool = Field(False, validation_alias=AliasChoices("CPO_OFFLINE_FALLBACK", "offline_fallback"))
    price_file: Path | None = _env("CPO_PRICE_FILE", "price_file")
    ledger_path: str | None = _env("CPO_LEDGER", "ledger_path")
    prompts_dir: Path | None = _env("CPO_PROMPTS_DIR", "prompts_dir")
    runs_dir: Path = Field(Path("runs"), validation_alias=AliasChoices("CPO_RUNS_DIR", "runs_dir"))
    # Where `cpo run` checkpoints its graph: a Postgres URL shares runs between machines; else SQLite in the run.
    checkpoint_url: str | None = _env("CPO_CHECKPOINT_URL", "checkpoint_url")
    # Azure AI Search as the content index, Azure AI Content Safety as the screen (else the embedded ones).
    azure_search_endpoint: str | None = _env("AZURE_SEARCH_ENDPOINT", "azure_search_endpoint")
    azure_search_index: str | None = _env("AZURE_SEARCH_INDEX", "azure_search_index")
    azure_search_key: SecretStr | None = _env("AZURE_SEARCH_KEY", "azure_search_key")
    azure_content_safety_endpoint: str | None = _env("AZURE_CONTENT_SAFETY_ENDPOINT", "azure_content_safety_endpoint")
    azure_content_safety_key: SecretStr | None = _env("AZURE_CONTENT_SAFETY_KEY", "azure_content_safety_key")
    _deployments: DeploymentsFile | None = PrivateAttr(None)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f".env: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); save it as UTF-8"
            ) from None

    @field_validator("azure_endpoint", "openai_base_url", "azure_search_endpoint", "azure_content_safety_endpoint")
    @classmethod
    def _url(cls, value: str | None, info: Any) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"not an http(s) URL: {value!r}")
        return value

    @field_validator(
        "azure_deployment",
        "model_name",
        "azure_api_key",
        "openai_api_key",
        "price_file",
        "deployments_file",
        "prompts_dir",
        "ledger_path",
        "azure_search_index",
        "azure_search_key",
        "azure_content_safety_key",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _complete(self) -> Settings:
        if self.azure_endpoint and not self.azure_deployment:
            raise ConfigError("AZURE_OPENAI_DEPLOYMENT_NAME is not set; it is required with AZURE_OPENAI_ENDPOINT")
        if not self.azure_endpoint and not self.deployments_file and (self.azure_deployment or self.azure_api_key):
            set_var = "AZURE_OPENAI_DEPLOYMENT_NAME" if self.azure_deployment else "AZURE_OPENAI_API_KEY"
            raise ConfigError(f"AZURE_OPENAI_ENDPOINT is not set but {set_var} is")
        if self.openai_base_url and not self.model_name:
            raise ConfigError("CPO_MODEL_NAME is not set; it is required with OPENAI_BASE_URL")
        if self.azure_search_endpoint and not self.azure_search_index:
            raise ConfigError("AZURE_SEARCH_INDEX is not set; it is required with AZURE_SEARCH_ENDPOINT")
        if self.deployments_file is not None:
            self._deployments = self._check_deployments(self.deployments_file)
        wanted = self.provider_choice
        if wanted == "azure" and not (self.azure_endpoint or self.deployments_file):
            raise ConfigError("CPO_PROVIDER=azure but AZURE_OPENAI_ENDPOINT is not set")
        if wanted == "openai-compatible" and not self.openai_base_url:
            raise ConfigError("CPO_PROVIDER=openai-compatible but OPENAI_BASE_URL is not set")
        return self

    def _check_deployments(self, path: Path) -> DeploymentsFile:
        """The file replaces the one-deployment settings; set both and one would be ignored, so neither is."""
        if self.azure_endpoint:
            raise ConfigError(
                "CPO_DEPLOYMENTS_FILE and AZURE_OPENAI_ENDPOINT are both set: list every deployment in the file "
                "and unset AZURE_OPENAI_ENDPOINT"
            )
        if self.azure_deployment:
            raise ConfigError(
                "CPO_DEPLOYMENTS_FILE and AZURE_OPENAI_DEPLOYMENT_NAME are both set: list every deployment in the file "
                "and unset AZURE_OPENAI_DEPLOYMENT_NAME"
            )
        if self.rpm or self.tpm:
            raise ConfigError(
                "CPO_DEPLOYMENTS_FILE is set: give each deployment its rpm and tpm in the file, not CPO_RPM/CPO_TPM"
            )
        return load_deployments(path.expanduser())

    @property
    def deployments(self) -> DeploymentsFile | None:
        """The deployments file's content (read once, when the settings were), or None without one."""
        return self._deployments

    @property
    def provider(self) -> Provider:
        """Azure wins over an OpenAI-compatible URL unless CPO_PROVIDER says otherwise."""
        if self.provider_choice != "auto":
            return self.provider_choice
        if self.azure_endpoint or self.deployments_file:
            return "azure"
        if self.openai_base_url:
            return "openai-compatible"
        return "offline"

    @property
    def ledger_off(self) -> bool:
        return self.ledger_path is not None and self.ledger_path.strip().lower() in ("off", "none", "0", "false")

    def ledger_file(self, runs_dir: Path | None = None) -> Path | None:
        """The CLI's cost ledger: CPO_LEDGER if set ('off' disables it), else `<runs dir>/ledger.sqlite`.

        The runs dir is `runs_dir` (the CLI's --out) or CPO_RUNS_DIR or ./runs, so the ledger never moves
        with the current directory by accident when either is set.
        """
        if self.ledger_off:
            return None
        if self.ledger_path is not None:
            return Path(self.ledger_path).expanduser()
        return (runs_dir or self.runs_dir).expanduser() / "ledger.sqlite"

    @property
    def ledger_requested(self) -> Path | None:
        """The ledger the Python API writes: only one named by CPO_LEDGER (no file by default)."""
        if self.ledger_path is None or self.ledger_off:
            return None
        return Path(self.ledger_path).expanduser()

    def describe(self) -> str:
        """One line for humans: where calls go, never a secret."""
        if self.provider == "azure" and self.deployments is not None:
            entries = self.deployments.deployments
            names = ", ".join(d.describe() for d in entries)
            return f"Azure OpenAI, {len(entries)} deployments from {self.deployments_file}: {names}"
        if self.provider == "azure":
            return f"Azure OpenAI {self.azure_endpoint} deployment {self.azure_deployment}"
        if self.provider == "openai-compatible":
            return f"OpenAI-compatible server {self.openai_base_url} model {self.model_name}"
        return "offline drafting model (no LLM endpoint configured)"


def _env_name(name: str, alias: object) -> str:
    """The upper-case environment variable among a field's aliases."""
    choices = alias.choices if isinstance(alias, AliasChoices) else []
    return next((a for a in choices if isinstance(a, str) and a.isupper()), name.upper())


_ENV_NAMES = {name: _env_name(name, field.validation_alias) for name, field in Settings.model_fields.items()}


def _describe(exc: ValidationError) -> str:
    """Turn pydantic's multi-line report into one line naming the environment variable."""
    err = exc.errors()[0]
    loc = err.get("loc") or ()
    field = str(loc[0]) if loc else ""
    var = _ENV_NAMES.get(field, field.upper() or "configuration")
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    value = err.get("input")
    secret = "KEY" in var
    shown = (
        f" (got {value!r})" if isinstance(value, str | int | float) and not secret and repr(value) not in msg else ""
    )
    return f"{var}: {msg}{shown}"
