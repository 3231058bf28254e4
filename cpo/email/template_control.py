"""The control cpo writes itself, with no model call, for a segment whose model-written control cannot be made valid.

It is the offline drafter's method made readable: the offer, then sentences of the cited snippets quoted as
written, in a plain frame of sentences that state no fact, so every claim is grounded by construction. A snippet
sentence is used only if it is true for every reader (it names no tier, or names every reader's tier) and
stands on its own (one that points back, "Both tiers ...", only after the sentence it points to); one that
restates the offer is left out. It goes through the same path as a model's draft (normalize, the body as
sent, `validate_draft`); a sentence the validator finds fault with is dropped and the email composed again,
and what still fails is returned invalid with the validator's reasons: it is never sent.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from cpo.core.models import Citation, EmailDraft, EmailRequest, EmailVariant, Snippet, ValidationReport
from cpo.core.usage import Usage
from cpo.email.grounding.audience import tiers_named
from cpo.email.grounding.text import sentences
from cpo.email.normalize import body_as_sent, normalize, word_count
from cpo.email.preheader import settled
from cpo.email.validation import ValidationLimits, validate_draft

TEMPLATE_MODEL = "cpo-template"  # the variant's model: none was called
TEMPLATE_VERSION = "template-control-1"  # the variant's prompt_version: the frame below, not a prompt

# The frame: sentences that state no fact, name nothing and speak to no tier.
OPENING = "Here is an offer we think is worth a look."
CLOSING = "We hope these details help you decide."
FILLERS = ("Thank you for shopping with us.",)
# A sentence that opens with one of these points back at the one before it in its snippet.
POINTS_BACK = re.compile(
    r"^\W*(?:that|this|these|those|both|it|its|they|their|such|there|here|then|also|after|in\s+the\s+same|the\s+same)\b",
    re.I,
)
CONTENT_WORD = re.compile(r"[a-z0-9$][a-z0-9$.,%-]*[a-z0-9%]|[a-z0-9]", re.I)
COMMON = frozenset(
    (
        "a",
        "an",
        "the",
        "and",
        "or",
        "of",
        "to",
        "for",
        "on",
        "in",
        "at",
        "by",
        "with",
        "your",
        "you",
        "our",
        "their",
        "its",
        "is",
        "are",
        "be",
        "get",
        "can",
    )
)
SAME_AS_OFFER = 0.75  # share of a sentence's words the offer already says, from which it only repeats the offer
# Where the offer's first clause ends: before another verb of the offer ("... and save 16%"), or before a
# condition ("with no minimum"); never inside a price, a date or a list ("paper, ink and coffee").
OFFER_VERBS = (
    "get|save|shop|share|earn|return|pay|enjoy|choose|receive|keep|take|join|use|add|try|start|switch|upgrade|"
    "come|claim|unlock|order|book|spend|find|schedule|redeem|reorder"
)
SUBJECT_CUTS = re.compile(rf"(?:,\s+and|,|\s+and)\s+(?=(?:{OFFER_VERBS})\b)|\s+with\s+")
MAX_ROUNDS = 8
DANGLING = frozenset(
    [
        "it",
        "them",
        "this",
        "that",
        "these",
        "those",
        "for",
        "with",
        "and",
        "or",
        "to",
        "of",
        "on",
        "by",
        "in",
        "at",
        "from",
    ]
)


@dataclass(frozen=True)
class Quoted:
    snippet: int  # index in the request's snippets
    index: int  # index among that snippet's sentences
    text: str
    repeats: bool = False  # says again what the offer says: used only when the email is short without it


def _words(text: str) -> set[str]:
    return {w.lower().rstrip(".,") for w in CONTENT_WORD.findall(text)} - COMMON


def _repeats_offer(sentence: str, offer: str) -> bool:
    """The sentence says little the offer does not, or says nearly all the offer says."""
    words, said = _words(sentence), _words(offer)
    shared = len(words & said)
    return bool(words and said) and max(shared / len(words), shared / len(said)) >= SAME_AS_OFFER


def _for_every_reader(sentence: str, request: EmailRequest) -> bool:
    """Names no tier, or names the tier of every reader (so it holds for each of them)."""
    named = tiers_named(sentence, request.vocabulary.tiers)
    if not named:
        return True
    readers = {r.casefold() for r in request.segment.readers}
    return bool(readers) and readers <= {t.casefold() for t in named}


def usable_sentences(request: EmailRequest, dropped: frozenset[str] = frozenset()) -> list[list[Quoted]]:
    """Per cited snippet, in order, the sentences the template may quote (`dropped`: ones the validator refused)."""
    out = []
    for n, snippet in enumerate(request.snippets):
        usable: list[Quoted] = []
        context = True  # every sentence before is in the email (or said by the offer)
        for i, (read, written) in enumerate(sentences(snippet.text)):
            text = written.strip()
            repeats = _repeats_offer(read, request.offer)
            ok = (
                text not in dropped
                and _for_every_reader(read, request)
                and (not POINTS_BACK.search(read) or (i > 0 and context))
            )
            if ok:
                usable.append(Quoted(n, i, text, repeats))
            ok = ok or (repeats and text not in dropped)  # what it says is in the email: the offer says it
            context = context and ok
        out.append(usable)
    return out


def _compose(request: EmailRequest, chosen: Sequence[Quoted], fillers: int) -> str:
    """The paragraphs: the offer, one paragraph per snippet quoted (in the snippets' order), a closing."""
    by_snippet: dict[int, list[Quoted]] = {}
    for s in sorted(chosen, key=lambda s: (s.snippet, s.index)):
        by_snippet.setdefault(s.snippet, []).append(s)
    parts = [f"{OPENING} {request.offer.strip()}"]
    parts += [" ".join(s.text for s in group) for group in by_snippet.values()]
    parts.append(" ".join([CLOSING, *FILLERS[:fillers]]))
    return "\n\n".join(parts)


def _body(request: EmailRequest, limits: ValidationLimits, usable: list[list[Quoted]]) -> tuple[str, list[str]]:
    """Sentences taken a round at a time (each snippet's next one) until the email is long enough, never too long;
    then a closing filler; a sentence that repeats the offer only when the email is still short."""
    fresh = [[s for s in group if not s.repeats] for group in usable]
    rounds = [[group[i] for group in fresh if i < len(group)] for i in range(max(map(len, fresh), default=0))]
    queue = [s for batch in rounds for s in batch] + [s for group in usable for s in group if s.repeats]
    chosen: list[Quoted] = []

    def words(candidate: list[Quoted], fillers: int = 0) -> int:
        return word_count(body_as_sent(request, _compose(request, candidate, fillers)))

    def fillers_needed(candidate: list[Quoted]) -> int | None:
        """The fewest closing fillers that bring the email within its limits (None: none do)."""
        fitting = (
            f for f in range(len(FILLERS) + 1) if limits.body_min_words <= words(candidate, f) <= limits.body_max_words
        )
        return next(fitting, None)

    for sentence in queue:
        needed = fillers_needed(chosen)
        if needed == 0 or (needed is not None and sentence.repeats):
            break
        if words([*chosen, sentence]) <= limits.body_max_words:
            chosen.append(sentence)
    cited = [request.snippets[n].id for n in sorted({s.snippet for s in chosen})]
    return _compose(request, chosen, fillers_needed(chosen) or 0), cited


def subject_candidates(request: EmailRequest) -> list[str]:
    """Subjects in the order tried: the offer, or its first clauses, longest first (those with the price
    before those without), then the cited snippets' titles, the one closest to the offer first."""
    offer = request.offer.strip().rstrip(".!")
    cuts = [offer] + [offer[: m.start()] for m in SUBJECT_CUTS.finditer(offer)]
    # a cut that ends on a word pointing past it reads unfinished ("... and pay for it" before "with a gift card")
    whole = [c for c in cuts if c.split()[-1].casefold().strip(",") not in DANGLING]
    clauses = sorted({c for c in whole if len(c.split()) >= 3}, key=len, reverse=True)
    priced = [c for c in clauses if re.search(r"\d", c)]
    titles = sorted(request.snippets, key=lambda s: -len(_words(s.title + " " + s.text) & _words(offer)))
    fitting = [t.title for t in titles if _for_every_reader(t.title, request)]
    return list(dict.fromkeys([*priced, *(c for c in clauses if c not in priced), *fitting]))


def template_control(request: EmailRequest, limits: ValidationLimits | None = None) -> EmailDraft:
    """The control as the model would return it (subject, paragraphs, citations): no greeting, no sign-off."""
    draft, _ = _written(request, limits or ValidationLimits())
    return draft


def _written(request: EmailRequest, limits: ValidationLimits) -> tuple[EmailDraft, EmailDraft]:
    """(the draft, the draft as sent): composed, checked, and composed again without a sentence found at fault."""
    dropped: frozenset[str] = frozenset()
    subjects = subject_candidates(request) or [request.offer.strip()]
    draft = sent = EmailDraft(subject="", body="", citations=[])
    for _ in range(MAX_ROUNDS):
        body, cited = _body(request, limits, usable_sentences(request, dropped))
        draft, sent, report = _checked(request, subjects[0], body, cited, limits)
        if any(i.field == "subject" for i in report.issues):
            for subject in subjects[1:]:
                trial, trial_sent, trial_report = _checked(request, subject, body, cited, limits)
                if not any(i.field == "subject" for i in trial_report.issues):
                    draft, sent, report = trial, trial_sent, trial_report
                    break
        quoted = {s for group in usable_sentences(request, dropped) for s in (x.text for x in group)}
        faulty = {e for i in report.issues if i.field == "body" for e in i.excerpts} & quoted
        if report.valid or not faulty:
            break
        dropped |= faulty
    return draft, sent


def _checked(
    request: EmailRequest, subject: str, body: str, cited: list[str], limits: ValidationLimits
) -> tuple[EmailDraft, EmailDraft, ValidationReport]:
    """The draft after normalization, as sent (cpo's greeting and sign-off around it, a preheader cpo writes as
    the chain does), and its report."""
    clean, _ = normalize(EmailDraft(subject=subject, body=body, citations=cited))
    sent, report, _ = settled(clean.model_copy(update={"body": body_as_sent(request, clean.body)}), request, limits)
    return clean.model_copy(update={"preheader": sent.preheader}), sent, report


def template_variant(request: EmailRequest, limits: ValidationLimits | None = None) -> EmailVariant:
    """The template control as a variant: `source: template`, no model, no usage; valid only if it passes."""
    limits = limits or ValidationLimits()
    _, sent = _written(request, limits)
    report = validate_draft(sent, request, limits)
    subject, body = sent.subject.strip(), sent.body.strip()
    cited: list[Snippet] = [s for cid in sent.citations if (s := request.snippet(cid)) is not None]
    return EmailVariant(
        variant_id=EmailVariant.make_id(request.segment.name, request.tone, subject, body),
        segment=request.segment.name,
        tone=request.tone,
        subject=subject,
        preheader=sent.preheader.strip(),
        body=body,
        citations=[Citation(id=s.id, title=s.title, section=s.section, quote=s.text) for s in cited],
        prompt_version=TEMPLATE_VERSION,
        model=TEMPLATE_MODEL,
        usage=Usage(),
        latency_s=0.0,
        attempts=0,
        validation=report,
        source="template",
    )
