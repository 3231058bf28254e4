"""Prompt templates as plain files: loading, overriding by directory, versioning, rendering."""

from __future__ import annotations

import hashlib
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from cpo.core.errors import ConfigError, first_line
from cpo.core.models import TONES, EmailRequest, Tone
from cpo.core.resources import bundled
from cpo.email import guided
from cpo.email.normalize import as_read, frame_words
from cpo.email.validation import ValidationLimits

# The files one tone's email is built from (the judge's prompt aside); their hash is the prompt_version.
VERSIONED = (
    "system.txt",
    "user.txt",
    "repair.txt",
    "fresh.txt",
    "subject.txt",
    "paragraph.txt",
    "extend.txt",
    "shorten.txt",
)
# The compact profile's stand-ins for the first prompt: terse rules for a model whose endpoint enforces the schema.
COMPACT = {"system.txt": "system-compact.txt", "user.txt": "user-compact.txt"}
# The guided profile's: a small model writes the framing and picks facts by number (`cpo.email.guided`).
GUIDED = {"system.txt": "system-guided.txt", "user.txt": "user-guided.txt"}
FRAMING = "framing.yaml"  # the guided profile's approved opening and closing lines, per tone
FILES = (*VERSIONED, *COMPACT.values(), *GUIDED.values(), FRAMING, "judge.txt", *(f"{t}.txt" for t in TONES))
PLACEHOLDERS = {
    "system.txt": {
        "brand",
        "subject_max",
        "preheader_max",
        "subject_target",
        "subject_words",
        "body_min",
        "body_max",
        "words_min",
        "words_max",
        "paragraph_min",
        "paragraph_max",
        "min_citations",
        "greeting",
        "sign_off",
    },
    "user.txt": {"segment", "profile", "offer", "tone", "tone_instructions", "greeting", "snippets"},
    "repair.txt": {"violations"},
    "fresh.txt": {"violations"},
    "subject.txt": {"violations", "subject", "subject_max", "offer"},
    "paragraph.txt": {"violations", "paragraph", "words", "snippets"},
    "extend.txt": {"words", "low", "high", "add_low", "add_high", "sentences", "snippets", "body"},
    "shorten.txt": {"words", "high", "paragraph", "paragraph_words", "target"},
    "judge.txt": {"offer", "snippets", "sentences"},
}
PLACEHOLDERS.update({compact: PLACEHOLDERS[full] for full, compact in COMPACT.items()})  # the same as theirs
PLACEHOLDERS["system-guided.txt"] = PLACEHOLDERS["system.txt"] | {"facts_low", "facts_high"}
PLACEHOLDERS["user-guided.txt"] = (PLACEHOLDERS["user.txt"] - {"snippets"}) | {
    "subjects",
    "openings",
    "facts",
    "closings",
}
PARAGRAPHS = 3

Profile = Literal["compact", "full", "guided"]
ProfileChoice = Literal["auto", "compact", "full", "guided"]
STAND_INS: dict[Profile, dict[str, str]] = {"compact": COMPACT, "guided": GUIDED, "full": {}}


def profile_for(schema_enforced: bool, choice: ProfileChoice = "auto", small_model: bool = False) -> Profile:
    """The first prompt's profile: compact where the endpoint enforces the JSON schema (json_schema on Azure or
    on a server known to take it: the schema holds the shape); guided where an OpenAI-compatible server takes
    only function calling or JSON mode (a small local model: it writes the framing, cpo lays out the facts);
    else (a first try of json_schema) the full guidance."""
    if choice != "auto":
        return choice
    if schema_enforced:
        return "compact"
    return "guided" if small_model else "full"


def _placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


@dataclass(frozen=True)
class PromptSet:
    """The prompt files in use; a directory may override some of the shipped files."""

    texts: dict[str, str]
    origin: dict[str, Path]
    choice: ProfileChoice = "auto"
    framings: Mapping[Tone, guided.Framing] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: Path | str | None = None, profile: ProfileChoice = "auto") -> PromptSet:
        base = bundled("prompts")
        texts: dict[str, str] = {}
        origin: dict[str, Path] = {}
        override = Path(directory) if directory else None
        if override is not None and not override.is_dir():
            raise ConfigError(f"prompts directory {override} does not exist")
        for name in FILES:
            path = override / name if override and (override / name).is_file() else base / name
            try:
                texts[name] = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"cannot read prompt file {path}: {exc.strerror}") from None
            origin[name] = path
            if name == FRAMING:
                continue  # data, not a template: read below
            allowed = PLACEHOLDERS.get(name, set())
            try:
                unknown = _placeholders(texts[name]) - allowed
            except ValueError as exc:
                raise ConfigError(f"{path}: {exc} (write a literal brace as {{{{ or }}}})") from None
            if unknown:
                raise ConfigError(f"{path}: unknown placeholder {{{sorted(unknown)[0]}}}; allowed: {sorted(allowed)}")
        try:
            data = yaml.safe_load(texts[FRAMING])
        except yaml.YAMLError as exc:
            raise ConfigError(f"{origin[FRAMING]}: not valid YAML ({first_line(exc, 120)})") from None
        return cls(texts, origin, profile, guided.read_framing(data, str(origin[FRAMING])))

    def profile_for(self, schema_enforced: bool, small_model: bool = False) -> Profile:
        """The profile of the first prompt (see `profile_for`); `auto` keeps the full one when a prompts folder
        changes a full-profile file but not its stand-in, whose edits would be ignored otherwise."""
        profile = profile_for(schema_enforced, self.choice, small_model)
        stand_ins = STAND_INS[profile]
        if self.choice == "auto" and any(
            self._overridden(full) and not self._overridden(own) for full, own in stand_ins.items()
        ):
            return "full"
        return profile

    def _overridden(self, name: str) -> bool:
        return self.origin[name].parent != bundled("prompts")

    def _file(self, name: str, profile: Profile) -> str:
        return STAND_INS[profile].get(name, name)

    def version(self, tone: Tone, profile: Profile = "full") -> str:
        """Content hash of the files one tone's email is built from (repair included), in that prompt profile.

        The full profile hashes as it did before the compact one existed, so its versions are unchanged.
        """
        digest = hashlib.sha256()
        extra = (FRAMING,) if profile == "guided" else ()
        for name in (*(self._file(n, profile) for n in VERSIONED), f"{tone}.txt", *extra):
            digest.update(name.encode() + b"\0" + self.texts[name].encode() + b"\0")
        return digest.hexdigest()[:12]

    def render(self, request: EmailRequest, limits: ValidationLimits, profile: Profile = "full") -> list[BaseMessage]:
        """The first prompt (system rules, then the request), in the given profile."""
        system_values = system_fields(request, limits)
        fields = render_fields(request, self.texts[f"{request.tone}.txt"])
        if profile == "guided":
            system_values.update(facts_low=guided.FACTS_LOW, facts_high=guided.FACTS_HIGH)
            fields = {**fields, **guided.prompt_fields(request, limits, self.framings[request.tone])}
        system = self.texts[self._file("system.txt", profile)].format(**system_values)
        user = self.texts[self._file("user.txt", profile)].format(**fields)
        return [SystemMessage(system), HumanMessage(user)]

    def repair(self, violations: list[str]) -> HumanMessage:
        """The follow-up in the same conversation: fix what failed, keep the rest."""
        return HumanMessage(self.texts["repair.txt"].format(violations=_bullets(violations)))

    def fresh(
        self, request: EmailRequest, limits: ValidationLimits, violations: list[str], profile: Profile = "full"
    ) -> list[BaseMessage]:
        """A new conversation after a repeated answer: the first prompt plus what to avoid, no old draft to copy."""
        note = self.texts["fresh.txt"].format(violations=_bullets(violations))
        system, user = self.render(request, limits, profile)
        return [system, HumanMessage(f"{user.content}\n\n{note}")]

    def subject_fix(
        self, request: EmailRequest, limits: ValidationLimits, subject: str, violations: list[str]
    ) -> list[BaseMessage]:
        """A small plain-text call that rewrites only the subject (~60 tokens instead of a whole email)."""
        text = self.texts["subject.txt"].format(
            violations=_bullets(violations), subject=subject, subject_max=limits.subject_max_chars, offer=request.offer
        )
        return [HumanMessage(text)]

    def paragraph_fix(
        self, request: EmailRequest, cited: list[str], paragraph: str, violations: list[str]
    ) -> list[BaseMessage]:
        """Rewrite one paragraph that holds every located problem: the rest of the email is not sent back."""
        text = self.texts["paragraph.txt"].format(
            violations=_bullets(violations),
            paragraph=paragraph,
            words=max(20, len(paragraph.split())),
            snippets=_snippet_lines(request, cited),
        )
        return [HumanMessage(text)]

    def extend(
        self,
        request: EmailRequest,
        cited: list[str],
        body: str,
        words: int,
        low: int,
        high: int,
        plan: tuple[int, int, int],
    ) -> list[BaseMessage]:
        """Ask for sentences worth the missing words (`plan` from `extend_plan`): adding is what a short draft needs."""
        add_low, add_high, count = plan
        text = self.texts["extend.txt"].format(
            words=words,
            low=low,
            high=high,
            add_low=add_low,
            add_high=add_high,
            sentences="one sentence" if count == 1 else f"{count} sentences",
            snippets=_snippet_lines(request, cited),
            body=body,
        )
        return [HumanMessage(text)]

    def shorten(self, paragraph: str, words: int, high: int) -> list[BaseMessage]:
        """Ask to cut the longest paragraph by the excess words (and a margin)."""
        own = len(paragraph.split())
        target = max(15, own - (words - high) - 10)  # models overshoot a word target
        text = self.texts["shorten.txt"].format(
            words=words, high=high, paragraph=paragraph, paragraph_words=own, target=target
        )
        return [HumanMessage(text)]

    def judge(self, request: EmailRequest, cited: list[str], sentences: list[str]) -> list[BaseMessage]:
        text = self.texts["judge.txt"].format(
            offer=request.offer,
            snippets=_snippet_lines(request, cited),
            sentences="\n".join(f"{i}. {s}" for i, s in enumerate(sentences, 1)),
        )
        return [HumanMessage(text)]


def extend_plan(words: int, low: int, high: int) -> tuple[int, int, int]:
    """Words to add (a range) and the same in sentences, the unit small models keep to: asked for words,
    they overshoot 2-3x."""
    add_low = max(12, low - words + 5)
    add_high = max(add_low + 8, min(high - words - 10, add_low + 15))
    return add_low, add_high, max(1, min(3, round(add_high / 20)))


def _snippet_lines(request: EmailRequest, cited: list[str]) -> str:
    snippets = [s for s in request.snippets if s.id in cited] or request.snippets
    return "\n".join(f"[{s.id}] {s.text}" for s in snippets)


def _bullets(lines: list[str]) -> str:
    return "\n".join(f"- {line}" for line in lines)


def paragraph_targets(request: EmailRequest, limits: ValidationLimits) -> tuple[int, int, int, int]:
    """Words the model's own paragraphs may total, and a per-paragraph range a model can aim at.

    The limits apply to the body as sent, so cpo's greeting and sign-off are taken off first; the
    per-paragraph range sits inside the total with a margin, because models miscount.
    """
    frame = frame_words(request)
    low, high = max(1, limits.body_min_words - frame), max(1, limits.body_max_words - frame)
    per_low = -(-low // PARAGRAPHS) + 2
    per_high = max(per_low, high // PARAGRAPHS - 4)
    return low, high, per_low, per_high


def system_fields(request: EmailRequest, limits: ValidationLimits) -> dict[str, object]:
    _, _, per_low, per_high = paragraph_targets(request, limits)
    sender = request.sender
    return {
        "brand": sender.brand,
        "subject_max": limits.subject_max_chars,
        "subject_words": max(4, limits.subject_max_chars // 8),
        "subject_target": max(10, limits.subject_max_chars * 5 // 6),  # models overshoot a character limit
        "preheader_max": limits.preheader_max_chars,
        "body_min": limits.body_min_words,
        "body_max": limits.body_max_words,
        "words_min": per_low * PARAGRAPHS,
        "words_max": per_high * PARAGRAPHS,
        "paragraph_min": per_low,
        "paragraph_max": per_high,
        "min_citations": limits.min_citations,
        "greeting": as_read(sender.greeting_line(request.merge_fields.get("first_name"))),
        "sign_off": " ".join(sender.sign_off.split()),
    }


# The known numeric features, in words: a model shown "days since last purchase: 9" writes "9 days"
# into the email, a figure no snippet backs. Words guide the emphasis and leave nothing to quote.
PROFILE_WORDS: dict[str, tuple[str, tuple[tuple[float, str], ...], str]] = {
    "days_since_last_purchase": (
        "last purchase",
        ((30, "recent"), (90, "a few months ago")),
        "long ago",
    ),
    "orders_per_year": ("orders", ((3, "occasional"), (11, "regular")), "frequent"),
    "avg_order_value_usd": ("order size", ((75, "small"), (300, "medium")), "large"),
    # the same features as the customer file names them (segment means from cpo.campaign.agents.segmentation)
    "last_engagement_days": ("last engagement", ((30, "recent"), (90, "a few months ago")), "long ago"),
    "purchase_frequency": ("orders", ((3, "occasional"), (11, "regular")), "frequent"),
    "avg_order_value": ("order size", ((75, "small"), (300, "medium")), "large"),
    "historical_open_rate": ("email opens", ((0.15, "rare"), (0.3, "average")), "frequent"),
    "historical_click_rate": ("email clicks", ((0.02, "rare"), (0.06, "average")), "frequent"),
}


def _in_words(key: str, value: object) -> tuple[str, object]:
    known = PROFILE_WORDS.get(key)
    if known is None or isinstance(value, bool) or not isinstance(value, int | float):
        return key.replace("_", " "), value
    label, bands, top = known
    return label, next((word for limit, word in bands if value <= limit), top)


def render_profile(features: Mapping[str, object]) -> str:
    """'tier: Gold; last purchase: recent; orders: frequent; order size: medium' (known figures in words)."""
    return "; ".join(f"{label}: {value}" for label, value in (_in_words(k, v) for k, v in features.items()))


def describe_readers(request: EmailRequest) -> str:
    """Whom the email goes to, in neutral words: the segment's name is the user's label, never copy for a prompt.

    Only the vocabulary's tiers appear here (the customer file's tiers are matched to them on load).
    """
    if request.tone == "control":
        return "all customers"
    readers = request.segment.readers
    if len(readers) == 1:
        return f"{readers[0]} members"
    if readers:
        return "members of several tiers (never name a tier: it would be wrong for some readers)"
    return "customers"


def render_fields(request: EmailRequest, tone_instructions: str) -> dict[str, str]:
    """The values substituted into user.txt; labelled lines the offline model can read back."""
    generic = request.tone == "control"
    return {
        "segment": describe_readers(request),
        "profile": "none (generic email)" if generic else render_profile(request.segment.features),
        "offer": request.offer,
        "tone": request.tone,
        "tone_instructions": tone_instructions,
        "greeting": "",  # cpo writes the greeting itself; kept so older user.txt files still load
        "snippets": snippet_block(request),
    }


def snippet_block(request: EmailRequest) -> str:
    """The snippet lines of the first prompt ("[id] text"): the part of it a prompt profile does not shorten."""
    return "\n".join(f"[{s.id}] {s.text}" for s in request.snippets)
