"""Compatibility: `cpo.costs` as scripts written before the layered packages import it.

The homes are `cpo.accounting.tracker` (the tracker), `cpo.core.usage` (usage figures) and
`cpo.accounting.pricing` (prices). Nothing inside cpo imports this module.
"""

from __future__ import annotations

from cpo.accounting.pricing import price_book_for
from cpo.accounting.reservations import DEFAULT_WORST_OUTPUT_TOKENS, schema_tokens
from cpo.accounting.tracker import EMAIL_TAG, UNREPORTED, CostTracker, trackers_in
from cpo.core.usage import Usage, UsageCounts, format_usd

__all__ = [
    "DEFAULT_WORST_OUTPUT_TOKENS",
    "EMAIL_TAG",
    "UNREPORTED",
    "CostTracker",
    "Usage",
    "UsageCounts",
    "format_usd",
    "price_book_for",
    "schema_tokens",
    "trackers_in",
]
