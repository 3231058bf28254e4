"""Generation agent: one email request per segment x arm, built from the segment's summary only.

The request carries the segment's whitelisted features (tier and behavioural means, see
`Segment.features`), the campaign's offer and approved snippets for that segment, and the sender. The
email chain does the rest; running the requests (concurrency, budget, Ctrl-C) is the runner's job.
"""

from __future__ import annotations

from cpo.agents.campaign import Campaign
from cpo.agents.segmentation import Segment
from cpo.errors import InputError
from cpo.models import EmailRequest, SegmentProfile, Snippet, Tone


def email_requests(
    segments: list[Segment], campaign: Campaign, snippets: dict[str, Snippet], arms: tuple[Tone, ...]
) -> list[EmailRequest]:
    """Requests for every non-empty segment and every arm, in segment then arm order."""
    requests = []
    for segment in segments:
        if segment.size == 0:
            continue
        offer = campaign.offer_for(segment.name)
        if offer is None:
            raise InputError(f"the campaign has no offer for segment {segment.name!r} and no 'default' offer")
        profile = SegmentProfile(
            name=segment.name,
            description=f"{segment.size} customers; rule: {segment.rule}",
            features=segment.features(),
        )
        chosen = [snippets[s] for s in offer.snippets]
        for arm in arms:
            requests.append(
                EmailRequest(segment=profile, offer=offer.offer, tone=arm, snippets=chosen, sender=campaign.sender)
            )
    return requests
