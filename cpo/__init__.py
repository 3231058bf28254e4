"""cpo: personalized, citation-grounded upgrade emails with exact cost accounting.

The public names are imported on first use (PEP 562), so `import cpo` and `cpo --help` do not pay
for langchain and the openai SDK.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from cpo.core.version import __version__ as __version__

_EXPORTS: dict[str, str] = {
    "BudgetExceeded": "cpo.core.errors",
    "ConfigError": "cpo.core.errors",
    "CpoError": "cpo.core.errors",
    "DeadlineExceeded": "cpo.core.errors",
    "InputError": "cpo.core.errors",
    "LedgerError": "cpo.core.errors",
    "Settings": "cpo.core.settings",
    "count_tokens": "cpo.net.tokens",
    "PriceBook": "cpo.accounting.pricing",
    "CostTracker": "cpo.accounting.tracker",
    "Usage": "cpo.core.usage",
    "UsageCounts": "cpo.core.usage",
    "build_chat_model": "cpo.llm.factory",
    "model_source": "cpo.llm.factory",
    "OfflineChatModel": "cpo.llm.offline",
    "Citation": "cpo.core.models",
    "EmailDraft": "cpo.core.models",
    "EmailRequest": "cpo.core.models",
    "EmailVariant": "cpo.core.models",
    "SegmentProfile": "cpo.core.models",
    "Snippet": "cpo.core.models",
    "ValidationReport": "cpo.core.models",
    "Vocabulary": "cpo.core.models",
    "ContentBundle": "cpo.email.content",
    "ValidationLimits": "cpo.email.validation",
    "validate_draft": "cpo.email.validation",
    "build_email_chain": "cpo.email.chain",
    "analyze_run": "cpo.campaign.analysis",
    "SimulationRates": "cpo.campaign.agents.simulation",
    "build_report": "cpo.campaign.report_page",
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
    "SimulationRates",
    "Snippet",
    "Usage",
    "UsageCounts",
    "ValidationLimits",
    "ValidationReport",
    "Vocabulary",
    "analyze_run",
    "build_chat_model",
    "build_email_chain",
    "build_report",
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
    from cpo.accounting.pricing import PriceBook
    from cpo.accounting.tracker import CostTracker
    from cpo.campaign.agents.simulation import SimulationRates
    from cpo.campaign.analysis import analyze_run
    from cpo.campaign.report_page import build_report
    from cpo.core.errors import BudgetExceeded, ConfigError, CpoError, DeadlineExceeded, InputError, LedgerError
    from cpo.core.models import (
        Citation,
        EmailDraft,
        EmailRequest,
        EmailVariant,
        SegmentProfile,
        Snippet,
        ValidationReport,
        Vocabulary,
    )
    from cpo.core.settings import Settings
    from cpo.core.usage import Usage, UsageCounts
    from cpo.email.chain import build_email_chain
    from cpo.email.content import ContentBundle
    from cpo.email.validation import ValidationLimits, validate_draft
    from cpo.llm.factory import build_chat_model, model_source
    from cpo.llm.offline import OfflineChatModel
    from cpo.net.tokens import count_tokens
