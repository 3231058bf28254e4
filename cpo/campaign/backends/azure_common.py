"""What both Azure services (AI Search, AI Content Safety) need: required settings, credentials,
and their SDK errors described in one line that names the service's host and never the key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cpo.core.errors import ConfigError, first_line

if TYPE_CHECKING:
    from azure.core.credentials import AzureKeyCredential, TokenCredential
    from pydantic import SecretStr

SERVICES_HINT = "pip install 'cpo[azure-services]'"
ENTRA_HINT = "pip install 'cpo[azure]'"
# Production defaults for the SDK's pipeline: a few retries and bounded waits instead of the SDK's
# 10 retries and 300 s timeouts. Anything passed as `**client_kwargs` wins.
DEFAULT_CLIENT_KWARGS: dict[str, Any] = {"retry_total": 3, "connection_timeout": 10.0, "read_timeout": 60.0}


def required(value: str | None, variable: str, what: str) -> str:
    """A setting that must be present; its absence is one line naming the variable."""
    if not value:
        raise ConfigError(f"{variable} is not set: {what}")
    return value


def endpoint_host(endpoint: str, variable: str) -> str:
    """The host of an http(s) endpoint, or a ConfigError naming the variable it should come from."""
    parts = urlsplit(endpoint.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{variable} must be an https:// URL, got {endpoint.strip()!r}")
    return parts.hostname


def entra_credential(key_variable: str) -> TokenCredential:
    """Keyless sign-in (Entra ID) through azure-identity's DefaultAzureCredential, an optional extra."""
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        raise ConfigError(
            f"{key_variable} is not set; set it, or install azure-identity for Entra ID sign-in ({ENTRA_HINT})"
        ) from None
    credential: TokenCredential = DefaultAzureCredential()
    return credential


def credential(key: SecretStr | None, key_variable: str) -> AzureKeyCredential | TokenCredential:
    """An AzureKeyCredential from the key when one is set (`key_variable`), else Entra ID."""
    from azure.core.credentials import AzureKeyCredential

    return AzureKeyCredential(key.get_secret_value()) if key is not None else entra_credential(key_variable)


def clean_line(text: str, secret: str | None = None, limit: int = 300) -> str:
    """Collapse whitespace, drop a secret if it slipped in, and cap the length."""
    if secret:
        text = text.replace(secret, "***")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def transport_reason(exc: BaseException) -> str:
    """Why a request got no HTTP answer, in a few words (connection refused, host not found, timed out)."""
    text = str(exc)
    chain: list[BaseException] = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 10:
        chain.append(chain[-1].__cause__)
    inner = getattr(exc, "inner_exception", None)
    if isinstance(inner, BaseException):
        chain.append(inner)
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "Connection refused" in text:
        return "connection refused"
    if "Name or service not known" in text or "getaddrinfo" in text or "nodename nor servname" in text:
        return "host name not found"
    if any(isinstance(e, TimeoutError) for e in chain) or "timed out" in text.lower():
        return "timed out"
    if "Bearer token authentication is not permitted for non-TLS" in text:
        return "Entra ID sign-in needs an https:// endpoint"
    return first_line(exc)


def http_message(exc: Any) -> str:
    """The service's own error message from an HttpResponseError, else its reason phrase."""
    error = getattr(exc, "error", None)
    message = getattr(error, "message", None) if error is not None else None
    if isinstance(message, str) and message.strip():
        return message
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else type(exc).__name__


def describe_azure_error(
    exc: Exception, where: str, secret: str | None, credentials_hint: str, doing: str = ""
) -> tuple[bool, str]:
    """(the credentials were refused?, one line) for an Azure SDK error; the key never appears in it."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

    status = getattr(exc, "status_code", None)
    during = f" while {doing}" if doing else ""
    if isinstance(exc, HttpResponseError) and status in (401, 403):
        detail = clean_line(http_message(exc), secret, 160)
        return True, f"{where} refused the credentials (HTTP {status}: {detail}){during}: {credentials_hint}"
    if isinstance(exc, ClientAuthenticationError):  # azure-identity could not get a token
        detail = clean_line(first_line(exc) if str(exc).strip() else "", secret, 160)
        return True, f"{where}: Entra ID sign-in failed{during}: {detail}"
    if isinstance(exc, HttpResponseError) and status is not None:
        return False, f"{where} answered HTTP {status}{during}: {clean_line(http_message(exc), secret, 200)}"
    if isinstance(exc, ServiceRequestError):
        return False, f"{where} is unreachable{during}: {transport_reason(exc)}"
    return False, f"{where} did not answer{during}: {clean_line(transport_reason(exc), secret)}"
