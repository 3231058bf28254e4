"""Retrieval agent: the approved snippets each segment's emails may cite, found by searching the content.

The query is made from the segment (its name, tier and what its behavioural means say about it) and
its offer. The audience filter keeps only content for everyone or for every tier among the segment's
customers, so a segment with Gold customers is never given a Platinum-only perk. The snippets the
campaign names for the offer (they back its numbers) come first and must pass the same filter; the
best other hits fill up the rest. When nothing matches, general content is used and the fallback is
logged and recorded in retrieval.json.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from cpo.campaign.agents.segmentation import Segment
from cpo.campaign.backends.content_index import ContentHit, ContentIndex
from cpo.campaign.campaign_file import Campaign
from cpo.core.errors import InputError
from cpo.core.models import Snippet

log = logging.getLogger(__name__)

TOP = 5  # hits recorded per segment
PER_EMAIL = 4  # snippets an email may cite: the offer's own first, then the best hits
FALLBACK_QUERY = "Northwind Plus membership benefits"
# What a segment's behavioural means say about it, in words the content uses: (feature, test, words).
FEATURE_WORDS: tuple[tuple[str, Any, str], ...] = (
    ("purchase_frequency", lambda v: v >= 20, "business bulk orders"),
    ("purchase_frequency", lambda v: v <= 3, "new member starter"),
    ("last_engagement_days", lambda v: v > 90, "come back returns"),
    ("avg_order_value", lambda v: v >= 200, "premium large orders"),
)


class ContentRetriever(BaseRetriever):
    """A LangChain retriever over a content index, for one audience (a tier, or None for general content)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    index: Any
    snippets: dict[str, Snippet]
    audience: str | None = None
    top: int = TOP

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        hits = self.index.search(query, audience=self.audience, top=self.top)
        return [
            Document(page_content=self.snippets[h.id].text if h.id in self.snippets else "", metadata=h.model_dump())
            for h in hits
        ]


@dataclass
class SegmentRetrieval:
    """What retrieval did for one segment, as retrieval.json records it."""

    segment: str
    audience: str | None  # the tier searched for (the most common one); hits are kept only if allowed for
    query: str
    hits: list[dict[str, Any]]
    used: list[str]
    fallback: bool = False
    backend: str = ""
    notes: list[str] = field(default_factory=list)
    tiers: list[str] = field(default_factory=list)  # every tier among the segment's customers

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def segment_query(segment: Segment, offer: str) -> str:
    """Words from the segment (name, tier, what its means say) and its offer."""
    words = [segment.name, segment.tier or "", offer]
    for feature, test, text in FEATURE_WORDS:
        if feature in segment.means and test(segment.means[feature]):
            words.append(text)
    return " ".join(w for w in words if w)


def allowed(snippet: Snippet, tiers: list[str]) -> bool:
    """Content for everyone, or for every tier the segment's customers have."""
    return "all" in snippet.audience or (bool(tiers) and set(tiers) <= set(snippet.audience))


def retrieve_for_segment(
    segment: Segment, campaign: Campaign, snippets: dict[str, Snippet], index: ContentIndex
) -> SegmentRetrieval:
    offer = campaign.offer_for(segment.name)
    if offer is None:
        raise InputError(f"the campaign has no offer for segment {segment.name!r} and no 'default' offer")
    audience = segment.tier
    tiers = segment.tiers or ([audience] if audience else [])
    for snippet_id in offer.snippets:
        snippet = snippets[snippet_id]
        if not allowed(snippet, tiers):
            raise InputError(
                f"the campaign's offer for {segment.name!r} names snippet {snippet_id!r}, which is for "
                f"{', '.join(snippet.audience)} only, and the segment has {', '.join(tiers) or 'untiered'} customers"
            )
    retriever = ContentRetriever(index=index, snippets=snippets, audience=audience)
    query = segment_query(segment, offer.offer)
    found = [ContentHit.model_validate(d.metadata) for d in retriever.invoke(query)]
    found = [h for h in found if h.id in snippets and allowed(snippets[h.id], tiers)]
    result = SegmentRetrieval(segment=segment.name, audience=audience, query=query, hits=[], used=[], tiers=tiers)
    result.backend = getattr(index, "name", type(index).__name__)
    if not found:
        log.warning("retrieval: no approved content matched %s's query; using general content", segment.name)
        result.fallback = True
        result.notes.append(f"no hit for the segment's query; general content for {FALLBACK_QUERY!r}")
        found = index.search(FALLBACK_QUERY, audience=None, top=TOP)
    result.hits = [h.model_dump() for h in found]
    used = list(offer.snippets)
    for hit in found:
        if len(used) >= max(PER_EMAIL, len(offer.snippets)):
            break
        if hit.id not in used and hit.id in snippets and allowed(snippets[hit.id], tiers):
            used.append(hit.id)
    result.used = used
    return result


def retrieve(
    segments: list[Segment], campaign: Campaign, snippets: dict[str, Snippet], index: ContentIndex
) -> dict[str, SegmentRetrieval]:
    """Retrieval for every segment with customers, by segment name."""
    return {s.name: retrieve_for_segment(s, campaign, snippets, index) for s in segments if s.size}
