"""Azure AI Content Safety as the safety agent's screen (the `azure-ai-contentsafety` SDK, an optional extra).

`AzureContentSafety.analyze(text)` returns the severity (0-7, `EightSeverityLevels`) of exactly the four
categories Hate, Violence, SelfHarm and Sexual. The service takes at most 10,000 characters per call, so a
longer text is sent in pieces (cut at whitespace, overlapping a little so a phrase on a cut is seen whole)
and each category gets its highest severity over the pieces.

Whatever goes wrong (the network, the service, refused credentials, an answer without a category) raises
`ScreeningUnavailable` with one line naming the service's host, never the key: the caller fails closed.
Missing settings are a `ConfigError` naming the variable. The SDK is imported when a client is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cpo.campaign.backends.azure_common import (
    DEFAULT_CLIENT_KWARGS,
    SERVICES_HINT,
    credential,
    describe_azure_error,
    endpoint_host,
    required,
)
from cpo.core.errors import ConfigError, CpoError, ExitCode
from cpo.core.settings import Settings

if TYPE_CHECKING:
    from azure.ai.contentsafety import ContentSafetyClient
    from azure.core.credentials import AzureKeyCredential, TokenCredential

CATEGORIES = ("Hate", "Violence", "SelfHarm", "Sexual")
MAX_TEXT = 10_000  # characters per text:analyze request (the service's limit)
OVERLAP = 200  # characters a piece repeats from the end of the one before


class ScreeningUnavailable(CpoError):
    """Content Safety gave no usable verdict; the caller blocks the text ("screening unavailable")."""

    exit_code = ExitCode.FAILED


def split_text(text: str, limit: int = MAX_TEXT, overlap: int = OVERLAP) -> list[str]:
    """Pieces of at most `limit` characters covering `text`, cut at whitespace where there is some.

    Each piece after the first starts up to `overlap` characters before the previous one ended (at a word
    boundary), so words are never cut and a short phrase across a cut appears whole in one piece.
    """
    if not text.strip():
        return []
    if len(text) <= limit:
        return [text]
    overlap = max(0, min(overlap, limit // 4))
    pieces: list[str] = []
    start = 0
    while True:
        end = start + limit
        if end >= len(text):
            pieces.append(text[start:])
            return pieces
        cut = max(text.rfind(" ", start + limit // 2, end + 1), text.rfind("\n", start + limit // 2, end + 1))
        if cut <= start:
            cut = end  # no whitespace in the second half: a hard cut
        pieces.append(text[start:cut])
        back = cut - overlap
        space = text.find(" ", back, cut)
        next_start = space + 1 if overlap and space != -1 else cut
        start = next_start if next_start > start else cut


def _safety_sdk() -> type[ContentSafetyClient]:
    try:
        from azure.ai.contentsafety import ContentSafetyClient
    except ImportError:
        raise ConfigError(
            f"Azure AI Content Safety needs the azure-ai-contentsafety package: {SERVICES_HINT}"
        ) from None
    return ContentSafetyClient


class AzureContentSafety:
    """Severity per category from Azure AI Content Safety; see the module docstring."""

    name = "azure-content-safety"

    def __init__(self, endpoint: str, credential: AzureKeyCredential | TokenCredential, **client_kwargs: Any) -> None:
        client_class = _safety_sdk()
        from azure.core.credentials import AzureKeyCredential

        self.host = endpoint_host(endpoint, "AZURE_CONTENT_SAFETY_ENDPOINT")
        self.endpoint = endpoint.strip().rstrip("/")
        self._secret = credential.key if isinstance(credential, AzureKeyCredential) else None
        kwargs = {**DEFAULT_CLIENT_KWARGS, **client_kwargs}
        self._client = client_class(endpoint=self.endpoint, credential=credential, **kwargs)

    @classmethod
    def from_settings(cls, settings: Settings, **client_kwargs: Any) -> AzureContentSafety:
        """From AZURE_CONTENT_SAFETY_ENDPOINT and AZURE_CONTENT_SAFETY_KEY (else Entra ID) in `settings`."""
        endpoint = required(
            settings.azure_content_safety_endpoint,
            "AZURE_CONTENT_SAFETY_ENDPOINT",
            "the Content Safety endpoint, https://<resource>.cognitiveservices.azure.com",
        )
        _safety_sdk()
        key = settings.azure_content_safety_key
        return cls(endpoint, credential(key, "AZURE_CONTENT_SAFETY_KEY"), **client_kwargs)

    @classmethod
    def from_env(cls, **client_kwargs: Any) -> AzureContentSafety:
        """`from_settings` with the environment and `.env` as they are now."""
        return cls.from_settings(Settings(), **client_kwargs)

    def __repr__(self) -> str:
        return f"AzureContentSafety(endpoint={self.endpoint!r})"

    def analyze(self, text: str) -> dict[str, int]:
        """Severity 0-7 per category (Hate, Violence, SelfHarm, Sexual); the highest over a long text's pieces."""
        severities = dict.fromkeys(CATEGORIES, 0)
        for piece in split_text(text):
            for category, severity in self._analyze_piece(piece).items():
                severities[category] = max(severities[category], severity)
        return severities

    def _analyze_piece(self, text: str) -> dict[str, int]:
        from azure.ai.contentsafety.models import AnalyzeTextOptions
        from azure.core.exceptions import AzureError

        options = AnalyzeTextOptions(text=text, categories=list(CATEGORIES), output_type="EightSeverityLevels")
        try:
            result = self._client.analyze_text(options)
        except AzureError as exc:
            raise self._error(exc) from None
        found: dict[str, int] = {}
        for item in result.categories_analysis or []:
            category = str(getattr(item.category, "value", item.category))
            if category in CATEGORIES and isinstance(item.severity, int) and 0 <= item.severity <= 7:
                found[category] = max(found.get(category, 0), item.severity)
        missing = [c for c in CATEGORIES if c not in found]
        if missing:
            raise ScreeningUnavailable(
                f"Azure AI Content Safety at {self.host} gave no severity (0-7) for {', '.join(missing)}"
            )
        return found

    def _error(self, exc: Exception) -> ScreeningUnavailable:
        """Every failure, refused credentials included, is unavailability: the caller fails closed."""
        _, line = describe_azure_error(
            exc,
            f"Azure AI Content Safety at {self.host}",
            self._secret,
            "check AZURE_CONTENT_SAFETY_KEY, or the signed-in identity's Cognitive Services User role",
        )
        return ScreeningUnavailable(line)
