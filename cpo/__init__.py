"""cpo: personalized, citation-grounded upgrade emails with exact cost accounting."""

from cpo.chains import build_email_chain
from cpo.content import ContentBundle
from cpo.costs import CostTracker, Usage, UsageCounts
from cpo.errors import BudgetExceeded, ConfigError, CpoError, InputError
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
from cpo.pricing import PriceBook, UnknownPriceWarning
from cpo.settings import Settings
from cpo.tokens import count_tokens
from cpo.validation import ValidationLimits, validate_draft

__all__ = [
    "BudgetExceeded",
    "Citation",
    "ConfigError",
    "ContentBundle",
    "CostTracker",
    "CpoError",
    "EmailDraft",
    "EmailRequest",
    "EmailVariant",
    "InputError",
    "OfflineChatModel",
    "PriceBook",
    "SegmentProfile",
    "Settings",
    "Snippet",
    "UnknownPriceWarning",
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
__version__ = "0.1.0"
