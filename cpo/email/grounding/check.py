"""Fact-level grounding: each number and strong claim in an email must match a fact of a cited snippet or the offer.

A number matches a fact when the value, unit ($, %, days ...), period (a month, a year ...) and entity
(a tier, members ...) agree, and a $ or % amount must play a role the source gives it: "save $79" is not
"pay $79" (roles.py). If a snippet has `facts:` in its front matter, those facts are used; otherwise
facts are read from the snippet's prose with the extractor that reads the email. List numbering, ordinals
and Liquid merge tags are ignored. Number words ("fifty percent", "three months", "twice", "a dozen",
"half") are turned into numbers and checked. The retailer's tiers and brand words come from a `Vocabulary`.
Pure Python and deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache

from cpo.core.models import Fact, Snippet, Vocabulary
from cpo.email.grounding.claims import unbacked_claims
from cpo.email.grounding.entities import (
    GENERIC_ENTITY,
    entities_for,
    entity_key,
    entity_name,
    mentions_in,
    nearest_entity,
    tier_keys,
)
from cpo.email.grounding.numbers import (
    HARD_UNITS,
    Quantity,
    canonical_period,
    canonical_unit,
    quantities,
    same_value,
    unit_fits,
    unit_name,
)
from cpo.email.grounding.roles import Role, compatible, roles_in
from cpo.email.grounding.text import sentences, tokens

__all__ = ["GroundingProblem", "check_grounding", "extract_facts"]

# One instance for "no vocabulary given", so the caches keyed on it hit by identity.
_DEFAULT_VOCABULARY = Vocabulary()


@dataclass(frozen=True)
class GroundingProblem:
    """One claim in an email that no cited snippet or the offer backs as written."""

    code: str  # "ungrounded_number" | "wrong_period" | "wrong_unit" | "wrong_entity" | "wrong_role" | "unbacked_claim"
    claim: str  # the phrase in the email, e.g. "$99 per month"
    sentence: str  # the email sentence it came from
    message: str  # one line naming what the cited snippet says, for a person and for a repair prompt


@dataclass(frozen=True)
class _Source:
    label: str  # "the cited snippet <id>" | "the offer" | "<id> (not cited)"
    facts: tuple[Quantity, ...]
    text: str = field(repr=False)

    @property
    def amounts(self) -> tuple[_Amount, ...]:
        """Every $ and % amount of the source's prose with its role (None: no word says)."""
        return _amounts_of(self.text)


@dataclass(frozen=True)
class _Amount:
    quantity: Quantity
    role: Role | None
    phrase: str  # the amount with the words that gave its role: "pay $79"


@lru_cache(maxsize=512)
def _amounts_of(text: str) -> tuple[_Amount, ...]:
    out: list[_Amount] = []
    for sentence, _ in sentences(text):
        found = quantities(sentence)
        for q, role in zip(found, roles_in(sentence, found), strict=True):
            out.append(_Amount(q, role, _role_phrase(sentence, role) if role else q.phrase))
    return tuple(out)


def _role_phrase(sentence: str, role: Role) -> str:
    return sentence[role.start : role.end].strip().rstrip(".,;:!")


def _with_years(facts: Iterable[Quantity]) -> tuple[Quantity, ...]:
    """A date fact also grounds its year written alone ('in 2027')."""
    out: list[Quantity] = []
    for fact in facts:
        out.append(fact)
        if fact.unit == "date" and fact.value.rsplit(":", 1)[1]:
            year = fact.value.rsplit(":", 1)[1]
            out.append(replace(fact, value=year, unit="", display=year))
    return tuple(out)


def _declared(fact: Fact, vocabulary: Vocabulary) -> Quantity:
    parsed = quantities(fact.value)
    base = parsed[0] if parsed else Quantity(value=fact.value.strip().lower(), display=fact.value.strip())
    unit = canonical_unit(fact.unit) or base.unit
    if unit == "date" and base.unit != "date":
        unit = base.unit
    display = base.display or fact.value.strip()
    if unit and unit not in HARD_UNITS | {"times"} and unit not in display.lower():
        display = f"{display} {unit if base.value == '1' else unit + 's'}"
    return replace(
        base,
        unit=unit,
        period=canonical_period(fact.period) or base.period,
        entity=entity_key(fact.entity, vocabulary) if fact.entity else "",
        entity_name=fact.entity.strip(),
        display=display,
    )


@lru_cache(maxsize=512)
def _facts_of(
    text: str, declared: tuple[Fact, ...], keys: tuple[str, ...], vocabulary: Vocabulary
) -> tuple[Quantity, ...]:
    if declared:
        return _with_years(_declared(f, vocabulary) for f in declared)
    facts: list[Quantity] = []
    for sentence, _ in sentences(text):
        for q, named, mentions in _quantities_in(sentence, keys, vocabulary):
            key = nearest_entity(q, named, mentions)
            facts.append(replace(q, entity=key, entity_name=entity_name(key, vocabulary) if key else ""))
    return _with_years(facts)


def _quantities_in(
    sentence: str, keys: tuple[str, ...], vocabulary: Vocabulary
) -> list[tuple[Quantity, tuple[str, ...], list[tuple[int, str]]]]:
    """Each quantity of a sentence with the entities named for it and all the sentence's entity mentions:
    read the same way from snippets and from emails."""
    words = tokens(sentence)
    found = quantities(sentence, words)
    mentions = mentions_in(sentence, keys, vocabulary, words) if found else []
    named = entities_for(sentence, found, mentions)
    return [(q, n, mentions) for q, n in zip(found, named, strict=True)]


def extract_facts(snippet: Snippet, entities: Sequence[str] = (), *, vocabulary: Vocabulary | None = None) -> list[str]:
    """The facts a snippet states, described in words (for reviewing front matter and prose parsing)."""
    vocabulary = _DEFAULT_VOCABULARY if vocabulary is None else vocabulary
    keys = _entity_keys([snippet], vocabulary, entities)
    return [_describe(f) for f in _facts_of(snippet.text, snippet.facts, keys, vocabulary)]


def _entity_keys(snippets: Iterable[Snippet], vocabulary: Vocabulary, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """Every entity a sentence may name: the tiers, members, and the entities the snippets' facts belong to."""
    keys = set(tier_keys(vocabulary)) | {GENERIC_ENTITY}
    keys |= {entity_key(f.entity, vocabulary) for s in snippets for f in s.facts if f.entity}
    keys |= {entity_key(e, vocabulary) for e in extra if e.strip()}
    return tuple(sorted(k for k in keys if k))


def _describe(fact: Quantity, *, entity: bool = True) -> str:
    """A fact in words: '$99 a year', '$25 for members'. Every fact with an entity carries its name."""
    text = fact.display + (f" a {fact.period}" if fact.period else "")
    if entity and fact.entity:
        text += f" for {fact.entity_name or fact.entity}"
    return text


def check_grounding(
    text: str,
    cited: Sequence[Snippet],
    offer: str = "",
    *,
    others: Sequence[Snippet] = (),
    vocabulary: Vocabulary | None = None,
) -> list[GroundingProblem]:
    """Problems with the numbers and strong claims of `text` ("subject\\n\\nbody") against the cited snippets and
    the offer. `others` are snippets the email could have cited; they are only named in hints. `vocabulary`
    names the retailer's tiers and brand words (None: the defaults)."""
    vocabulary = _DEFAULT_VOCABULARY if vocabulary is None else vocabulary
    cited_ids = {s.id for s in cited}
    uncited = [s for s in others if s.id not in cited_ids]
    keys = _entity_keys([*cited, *uncited], vocabulary)
    sources = [
        _Source(f"the cited snippet {s.id}", _facts_of(s.text, s.facts, keys, vocabulary), s.text) for s in cited
    ]
    if offer.strip():
        sources.append(_Source("the offer", _facts_of(offer, (), keys, vocabulary), offer))
    hints = [_Source(f"{s.id} (not cited)", _facts_of(s.text, s.facts, keys, vocabulary), s.text) for s in uncited]
    backing = [s.text for s in sources]
    hint_texts = [(s.label, s.text) for s in hints]

    problems: list[GroundingProblem] = []
    for sentence, written in sentences(text):
        found = _quantities_in(sentence, keys, vocabulary)
        roles = roles_in(sentence, [q for q, _, _ in found]) if found else []
        for (q, named, _), role in zip(found, roles, strict=True):
            claim = replace(q, mentions=named)
            problem = _check_number(claim, written, sources, hints, vocabulary)
            if problem is None and role is not None:
                problem = _check_role(claim, role, _role_phrase(written, role), written, sources)
            if problem and problem not in problems:
                problems.append(problem)
        for phrase, message in unbacked_claims(sentence, backing, hint_texts):
            problem = GroundingProblem("unbacked_claim", phrase, written, message)
            if problem not in problems:
                problems.append(problem)
    return problems


def _check_number(
    claim: Quantity, sentence: str, sources: list[_Source], hints: list[_Source], vocabulary: Vocabulary
) -> GroundingProblem | None:
    def problem(code: str, message: str) -> GroundingProblem:
        return GroundingProblem(code, claim.phrase, sentence, f'"{claim.phrase}": {message}')

    same = [(s, f) for s in sources for f in s.facts if same_value(claim.value, f.value)]
    units = [(s, f) for s, f in same if unit_fits(claim.unit, f.unit)]
    if not units:
        elsewhere = [
            (s, f) for s in hints for f in s.facts if same_value(claim.value, f.value) and unit_fits(claim.unit, f.unit)
        ]
        if elsewhere or not same:
            return problem("ungrounded_number", _not_found(elsewhere))
        s, f = same[0]
        return problem("wrong_unit", f"{s.label} gives {_describe(f)}, not {unit_name(claim.unit)}")
    periods = [(s, f) for s, f in units if not claim.period or f.period == claim.period]
    if not periods:
        s, f = units[0]
        return problem("wrong_period", f"{s.label} gives {_describe(f, entity=False)}")
    if not claim.mentions:
        return None
    verdicts = [
        _entity_verdict(claim, s, [f for t, f in periods if t is s], vocabulary)
        for s in dict.fromkeys(s for s, _ in periods)
    ]
    if any(v is None for v in verdicts):
        return None
    return problem("wrong_entity", next(v for v in verdicts if v))


def _check_role(
    claim: Quantity, role: Role, phrase: str, sentence: str, sources: list[_Source]
) -> GroundingProblem | None:
    """A wrong role: every source mention of the amount has a known role and none fits the email's ("save $79"
    where the source says "pay $79"). An unknown role on either side is no judgement."""
    same = [
        (s, a)
        for s in sources
        for a in s.amounts
        if same_value(claim.value, a.quantity.value) and unit_fits(claim.unit, a.quantity.unit)
    ]
    known = [(s, a, a.role) for s, a in same if a.role is not None]
    if not same or len(known) < len(same) or any(compatible(role, other) for _, _, other in known):
        return None
    source, amount, other = known[0]
    return GroundingProblem(
        "wrong_role",
        phrase,
        sentence,
        f'"{phrase}": {source.label} says "{amount.phrase}" ({other.name}), not {role.name}',
    )


def _entity_verdict(claim: Quantity, source: _Source, candidates: list[Quantity], vocabulary: Vocabulary) -> str | None:
    """None if the source ties this value to an entity the sentence names (or to none); else why not."""
    if any(not f.entity or f.entity in claim.mentions for f in candidates):
        return None
    tied = [m for m in claim.mentions if any(f.entity == m for f in source.facts)]
    if not tied:
        tiers = tier_keys(vocabulary)
        named_tiers = [m for m in claim.mentions if m in tiers]
        if named_tiers and all(f.entity in tiers for f in candidates):  # tiers exclude each other
            tier = entity_name(named_tiers[0], vocabulary)
            return f"{source.label} gives {_describe(candidates[0])}, not for {tier}"
        return None
    mention = tied[0]
    own = [f for f in source.facts if f.entity == mention and unit_fits(candidates[0].unit, f.unit)]
    own = own or [f for f in source.facts if f.entity == mention]
    name = own[0].entity_name or entity_name(mention, vocabulary)
    return (
        f"{source.label} gives {_describe(candidates[0])}; "
        f"for {name} it gives {', '.join(_describe(f, entity=False) for f in own)}"
    )


def _not_found(elsewhere: list[tuple[_Source, Quantity]]) -> str:
    if not elsewhere:
        return "no cited snippet or the offer states this number"
    named = list(dict.fromkeys(f"{s.label} gives {_describe(f)}" for s, f in elsewhere))
    return "not in the cited snippets or the offer; " + "; ".join(named[:2])
