"""cpo: personalized, citation-grounded upgrade emails with exact cost accounting.

The public names are imported on first use (PEP 562), so `import cpo` and `cpo --help` do not pay
for langchain and the openai SDK.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_EXPORTS: dict[str, str] = {
    "BudgetExceeded": "cpo.errors",
    "ConfigError": "cpo.errors",
    "CpoError": "cpo.errors",
    "DeadlineExceeded": "cpo.errors",
    "InputError": "cpo.errors",
    "LedgerError": "cpo.errors",
    "Settings": "cpo.settings",
    "count_tokens": "cpo.tokens",
    "PriceBook": "cpo.pricing",
    "CostTracker": "cpo.costs",
    "Usage": "cpo.costs",
    "UsageCounts": "cpo.costs",
    "build_chat_model": "cpo.llm",
    "model_source": "cpo.llm",
    "OfflineChatModel": "cpo.offline",
    "Citation": "cpo.models",
    "EmailDraft": "cpo.models",
    "EmailRequest": "cpo.models",
    "EmailVariant": "cpo.models",
    "SegmentProfile": "cpo.models",
    "Snippet": "cpo.models",
    "ValidationReport": "cpo.models",
    "ContentBundle": "cpo.content",
    "ValidationLimits": "cpo.validation",
    "validate_draft": "cpo.validation",
    "build_email_chain": "cpo.chains",
}

__all__ = [
    "BudgetExceeded",
    "Citation",
    "ConfigError",
    "ContentBundle",
    "CostTracker",
    "CpoError",
    "DeadlineExceeded",
    "EmailDraft",
    "EmailRequest",
    "EmailVariant",
    "InputError",
    "LedgerError",
    "OfflineChatModel",
    "PriceBook",
    "SegmentProfile",
    "Settings",
    "Snippet",
    "Usage",
    "UsageCounts",
    "ValidationLimits",
    "ValidationReport",
    "build_chat_model",
    "build_email_chain",
    "count_tokens",
    "model_source",
    "validate_draft",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cpo' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
    from cpo.chains import build_email_chain
    from cpo.content import ContentBundle
    from cpo.costs import CostTracker, Usage, UsageCounts
    from cpo.errors import BudgetExceeded, ConfigError, CpoError, DeadlineExceeded, InputError, LedgerError
    from cpo.llm import build_chat_model, model_source
    from cpo.models import (
        Citation,
        EmailDraft,
        EmailRequest,
        EmailVariant,
        SegmentProfile,
        Snippet,
        ValidationReport,
    )
    from cpo.offline import OfflineChatModel
    from cpo.pricing import PriceBook
    from cpo.settings import Settings
    from cpo.tokens import count_tokens
    from cpo.validation import ValidationLimits, validate_draft
