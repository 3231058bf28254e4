"""True for every recipient: an email names a tier only where what it says holds for every reader.

A segment's email goes to all its customers, and a segment can mix tiers. "<tier A> members: claim your
upgrade" sent to customers of tiers A and B calls half of them by a tier they do not hold, and "<tier B>
members get $25" read by a tier-A customer promises what they will not get. So, sentence by sentence:

- the readers' tiers a sentence names must be none of them or all of them ("A and B members get free
  returns" holds for everyone; "A members: claim your upgrade" does not), unless it describes those tiers as
  a cited snippet or the offer does, without speaking to the reader ("A members get $25; B members get $50"
  lets each reader find their line; "as an A member you get $25" does not);
- a tier no reader holds may be described (an upgrade target: "tier C adds free shipping") only if the offer
  or a cited snippet names it, and never as whom the reader is ("as a C member", "your C membership").

Which words are tiers is the retailer's vocabulary; a tier is a name when capitalised as the vocabulary
writes it (the entity rules of `cpo.email.grounding.entities`). An email whose readers' tiers are unknown
(a request built without an audience) is not checked here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache

from cpo.core.models import Vocabulary
from cpo.email.grounding.entities import entity_name, mentions_in, tier_keys
from cpo.email.grounding.text import sentences

AUDIENCE_CODE = "wrong_audience"


@lru_cache(maxsize=64)
def _address(tier: str) -> re.Pattern[str]:
    """Phrases that tell the reader they hold `tier` (as the vocabulary writes it)."""
    name = r"\s+".join(re.escape(w) for w in tier.split())
    return re.compile(
        rf"\b(?:as\s+an?|fellow|valued|dear)\s+(?-i:{name})\b"
        rf"|\byour\s+(?-i:{name})(?:\s+tier)?\s+(?:membership|status|tier|member|benefits?|perks?|account|level)\b"
        rf"|^\W*(?-i:{name})(?:\s+tier)?\s+members?\s*[:,!\u2013\u2014-]",
        re.I,
    )


SECOND_PERSON = re.compile(r"\b(?:you|your|yours|you're|you'll|you've)\b", re.I)


def _speaks_to(sentence: str, tiers: Iterable[str]) -> bool:
    """Does the sentence speak to the reader ("you", "as a Gold member", "Gold members: ...")?"""
    return bool(SECOND_PERSON.search(sentence)) or any(_address(t).search(sentence) for t in tiers)


def audience_problems(
    text: str, readers: Sequence[str], backing: Iterable[str], vocabulary: Vocabulary
) -> list[tuple[str, str]]:
    """(sentence as written, message) for each sentence of `text` ("subject\\n\\nbody") not true for every reader.

    `readers` are the tiers of everyone the email reaches (empty: unknown, nothing is checked); `backing` the
    texts that may name other tiers (the offer and the cited snippets).
    """
    keys = tier_keys(vocabulary)
    audience = {" ".join(t.lower().split()) for t in readers} & keys
    if not audience:
        return []
    ordered = tuple(sorted(keys))
    described = {key for source in backing for _, key in mentions_in(source, ordered, vocabulary)}
    readers_named = " and ".join(entity_name(k, vocabulary) for k in sorted(audience))
    problems: list[tuple[str, str]] = []
    for sentence, written in sentences(text):
        named = {key for _, key in mentions_in(sentence, ordered, vocabulary)}
        if not named:
            continue
        inside = named & audience
        # Naming some readers' tiers is wrong when it speaks to the reader or states what no cited text
        # says of those tiers; a description the content states ("A members get $25; B members get $50")
        # lets each reader find their own line.
        shown_inside = [entity_name(k, vocabulary) for k in sorted(inside)]
        if inside and inside != audience and (_speaks_to(sentence, shown_inside) or not inside <= described):
            shown = " and ".join(shown_inside)
            problems.append(
                (
                    written,
                    f'"{written.strip()}" names {shown}, but this email goes to {readers_named} members: '
                    "name no tier, or write what holds for every one of them",
                )
            )
            continue
        for key in sorted(named - audience):
            tier = entity_name(key, vocabulary)
            if _address(tier).search(sentence):
                why = f"addresses the reader as {tier}"
            elif key not in described:
                why = f"names {tier}, which neither the offer nor a cited snippet mentions"
            else:
                continue
            problems.append(
                (
                    written,
                    f'"{written.strip()}" {why}; this email\'s readers are {readers_named} members: '
                    "never call them by a tier they do not hold",
                )
            )
            break
    return problems
