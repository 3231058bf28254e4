"""Prompt templates as plain files: loading, overriding by directory, versioning, rendering."""

from __future__ import annotations

import hashlib
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from cpo.errors import ConfigError
from cpo.models import TONES, EmailRequest, Tone
from cpo.resources import bundled

if TYPE_CHECKING:
    from cpo.validation import ValidationLimits

FILES = ("system.txt", "user.txt", "repair.txt", *(f"{t}.txt" for t in TONES))
PLACEHOLDERS = {
    "system.txt": {"subject_max", "body_min", "body_max"},
    "user.txt": {"segment", "profile", "offer", "tone", "tone_instructions", "greeting", "snippets"},
    "repair.txt": {"violations"},
}


def _placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


@dataclass(frozen=True)
class PromptSet:
    """The prompt files in use; a directory may override some of the shipped files."""

    texts: dict[str, str]
    origin: dict[str, Path]

    @classmethod
    def load(cls, directory: Path | str | None = None) -> PromptSet:
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
            allowed = PLACEHOLDERS.get(name, set())
            try:
                unknown = _placeholders(texts[name]) - allowed
            except ValueError as exc:
                raise ConfigError(f"{path}: {exc} (write a literal brace as {{{{ or }}}})") from None
            if unknown:
                raise ConfigError(f"{path}: unknown placeholder {{{sorted(unknown)[0]}}}; allowed: {sorted(allowed)}")
        return cls(texts, origin)

    def version(self, tone: Tone) -> str:
        """Content hash of the files one tone's email is built from (repair included)."""
        digest = hashlib.sha256()
        for name in ("system.txt", "user.txt", "repair.txt", f"{tone}.txt"):
            digest.update(name.encode() + b"\0" + self.texts[name].encode() + b"\0")
        return digest.hexdigest()[:12]

    def render(self, request: EmailRequest, limits: ValidationLimits) -> list[BaseMessage]:
        system = self.texts["system.txt"].format(
            subject_max=limits.subject_max_chars, body_min=limits.body_min_words, body_max=limits.body_max_words
        )
        user = self.texts["user.txt"].format(**render_fields(request, self.texts[f"{request.tone}.txt"]))
        return [SystemMessage(system), HumanMessage(user)]

    def repair(self, violations: list[str]) -> HumanMessage:
        return HumanMessage(self.texts["repair.txt"].format(violations="\n".join(f"- {v}" for v in violations)))


def render_profile(features: Mapping[str, object]) -> str:
    return "; ".join(f"{key.replace('_', ' ')}: {value}" for key, value in features.items())


def render_fields(request: EmailRequest, tone_instructions: str) -> dict[str, str]:
    """The values substituted into user.txt; labelled lines the offline model can read back."""
    generic = request.tone == "control"
    first_name = request.merge_fields.get("first_name")
    return {
        "segment": "all customers" if generic else request.segment.name,
        "profile": "none (generic email)" if generic else render_profile(request.segment.features),
        "offer": request.offer,
        "tone": request.tone,
        "tone_instructions": tone_instructions,
        "greeting": f"Greet the customer as {first_name}." if first_name else "",
        "snippets": "\n".join(f"[{s.id}] {s.text}" for s in request.snippets),
    }
