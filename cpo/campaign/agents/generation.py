"""Generation agent: one email request per segment x arm, built from the segment's summary only.

`personal_requests` (`cpo run --per-customer`) makes one request per assigned customer instead, from
that customer's own whitelisted features, for the tone of the customer's arm.

`template_controls` writes, with no model call, a control for each segment whose model-written control ended
invalid after its repairs: `cpo.email.template_control`, marked `source: template`.

The request carries the segment's whitelisted features (tier and behavioural means, see
`Segment.features`), the campaign's offer and approved snippets for that segment, and the sender. The
email chain does the rest; running the requests (concurrency, budget, Ctrl-C) is the runner's job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from cpo.campaign.agents.assignment import HOLDOUT
from cpo.campaign.agents.load import LoadedCustomers
from cpo.campaign.agents.segmentation import PROMPT_FEATURES, Segment
from cpo.campaign.campaign_file import Campaign
from cpo.core.errors import InputError
from cpo.core.models import EmailRequest, EmailVariant, SegmentProfile, Snippet, Tone
from cpo.email.template_control import template_variant
from cpo.email.validation import ValidationLimits

PER_CUSTOMER_LIMIT = 500  # --per-customer pays for an email per customer: for small high-value lists only


def email_requests(
    segments: list[Segment],
    campaign: Campaign,
    snippets: dict[str, Snippet],
    arms: tuple[Tone, ...],
    chosen: dict[str, list[str]] | None = None,
) -> list[EmailRequest]:
    """Requests for every non-empty segment and every arm, in segment then arm order.

    `chosen` gives each segment's snippets (retrieval's); without it, the ones the campaign names.
    """
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
            audience=tuple(segment.tiers),
        )
        ids = chosen[segment.name] if chosen and segment.name in chosen else offer.snippets
        cited = [snippets[s] for s in ids]
        for arm in arms:
            requests.append(
                EmailRequest(
                    segment=profile,
                    offer=offer.offer,
                    tone=arm,
                    snippets=cited,
                    sender=campaign.sender,
                    vocabulary=campaign.vocabulary,
                )
            )
    return requests


def current_request(request: EmailRequest, audiences: Mapping[str, Sequence[str]]) -> EmailRequest:
    """A segment request checkpointed by an older cpo, as today's code makes it: with its readers' tiers, and
    no tier in its profile when they hold several (the old profile named the most common tier to all of them).

    `audiences` maps segment names to their customers' tiers (a resumed run's checkpointed segments; empty
    for per-customer runs, whose reader is one customer). A request that already has an audience is unchanged.
    """
    tiers = tuple(audiences.get(request.segment.name, ()))
    if request.segment.audience or not tiers:
        return request
    features = {k: v for k, v in request.segment.features.items() if k != "tier" or len(tiers) == 1}
    segment = request.segment.model_copy(update={"audience": tiers, "features": features})
    return request.model_copy(update={"segment": segment})


def personal_requests(
    loaded: LoadedCustomers,
    segments: list[Segment],
    campaign: Campaign,
    snippets: dict[str, Snippet],
    chosen: dict[str, list[str]] | None = None,
) -> list[tuple[str, EmailRequest]]:
    """(customer id, request) for every customer with an arm (the `assignments` table), in customer order.

    The profile holds only the customer's tier and behavioural figures (the same whitelist as segment
    means), never their name or location; customers with the same figures and arm share one email.
    """
    con: Any = loaded.connection
    columns = [c for c in PROMPT_FEATURES if c in loaded.columns]
    rows = con.execute(
        f"SELECT a.customer_id, a.segment, a.arm, c.tier{''.join(f', c.{col}' for col in columns)} "
        "FROM assignments a JOIN customers c USING (customer_id) WHERE a.arm <> ? ORDER BY a.customer_id",
        [HOLDOUT],
    ).fetchall()
    rules = {s.name: s.rule for s in segments}
    out = []
    for customer_id, segment, arm, tier, *values in rows:
        offer = campaign.offer_for(segment)
        if offer is None:
            raise InputError(f"the campaign has no offer for segment {segment!r} and no 'default' offer")
        one = Segment(
            name=segment,
            rule=rules.get(segment, ""),
            size=1,
            share=0.0,
            tier=tier,
            tiers=[tier] if tier else [],
            means={col: float(v) for col, v in zip(columns, values, strict=True) if v is not None},
        )
        profile = SegmentProfile(
            name=segment, description=f"one customer of this segment; rule: {one.rule}", features=one.features()
        )
        request = EmailRequest(
            segment=profile,
            offer=offer.offer,
            tone=cast(Tone, arm),
            snippets=[snippets[s] for s in (chosen or {}).get(segment, offer.snippets)],
            sender=campaign.sender,
            vocabulary=campaign.vocabulary,
        )
        out.append((str(customer_id), request))
    return out


def template_controls(
    requests: Mapping[str, EmailRequest],
    variants: Mapping[str, Mapping[str, Any]],
    limits: ValidationLimits,
) -> dict[str, EmailVariant]:
    """cpo's own control (free: no model call, usage zero) for each control request, by key, whose model-written
    variant ended invalid. A control whose call failed gets none: the run exits 1 and `--resume` asks again.
    It is valid only if it passes the same checks; one that does not is returned too, invalid with its
    reasons, so the summary says why the segment gets nothing."""
    out = {}
    for key, request in requests.items():
        if request.tone != "control":
            continue
        own = variants.get(key)
        if own is not None and not own["validation"]["valid"]:
            out[key] = template_variant(request, limits)
    return out
