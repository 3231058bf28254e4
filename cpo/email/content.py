"""Loading approved content snippets and segment definitions, with errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from pydantic import BaseModel, Field, ValidationError

from cpo.core.errors import InputError
from cpo.core.files import read_text
from cpo.core.models import EmailRequest, SegmentProfile, Sender, Snippet, Tone
from cpo.core.resources import bundled


class SegmentSpec(SegmentProfile):
    """A segment as written in segments.json: profile, the offer, and the snippet ids that suit it."""

    offer: str = Field(min_length=1)
    snippets: list[str] = Field(default_factory=list)


def default_content_dir() -> Path:
    return bundled("data") / "content"


def default_segments_file() -> Path:
    return bundled("data") / "segments.json"


def default_sender_file() -> Path:
    return bundled("data") / "sender.yaml"


def load_sender(path: Path | None = None) -> Sender:
    """The sender (brand, greeting, sign-off) from a YAML or JSON mapping."""
    path = path or default_sender_file()
    raw = read_text(path, "sender file")
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise InputError(f"{path}: not valid YAML or JSON") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping with brand, greeting, sign_off")
    try:
        return Sender.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"{path}: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {str(err['msg']).removeprefix('Value error, ')}"


def load_snippet(path: Path) -> Snippet:
    """A snippet file: YAML front matter (id, title, section) between '---' lines, then the text."""
    text = read_text(path, "snippet file")
    if not text.startswith("---"):
        raise InputError(f"{path}: missing front matter (a '---' block with id, title, section)")
    try:
        _, front, body = text.split("---", 2)
        meta = yaml.safe_load(front) or {}
    except (ValueError, yaml.YAMLError):
        raise InputError(f"{path}: front matter is not valid YAML between '---' lines") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path}: front matter must be a mapping with id, title, section")
    meta.setdefault("id", path.stem)
    try:
        return Snippet(text=" ".join(body.split()), **meta)
    except ValidationError as exc:
        raise InputError(f"{path}: {_first_error(exc)}") from None


def load_snippets(directory: Path | None = None) -> dict[str, Snippet]:
    """All `*.md` snippets in a directory, by id."""
    directory = directory or default_content_dir()
    if not directory.is_dir():
        raise InputError(f"content directory {directory} does not exist")
    snippets: dict[str, Snippet] = {}
    for path in sorted(directory.glob("*.md")):
        if path.name.lower() == "readme.md":
            continue
        snippet = load_snippet(path)
        if snippet.id in snippets:
            raise InputError(f"{path}: duplicate snippet id {snippet.id!r}")
        snippets[snippet.id] = snippet
    if not snippets:
        raise InputError(f"content directory {directory} has no *.md snippets")
    return snippets


def load_segments(path: Path | None = None) -> list[SegmentSpec]:
    """Segments from a JSON or YAML list."""
    path = path or default_segments_file()
    raw = read_text(path, "segments file")
    try:
        data = json.loads(raw) if path.suffix == ".json" else yaml.safe_load(raw)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise InputError(
            f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}".splitlines()[0]
        ) from None
    if not isinstance(data, list) or not data:
        raise InputError(f"{path}: expected a non-empty list of segments")
    segments = []
    for i, item in enumerate(data):
        try:
            segments.append(SegmentSpec.model_validate(item))
        except ValidationError as exc:
            raise InputError(f"{path}: segment {i + 1}: {_first_error(exc)}") from None
    return segments


def find_segment(segments: list[SegmentSpec], name: str) -> SegmentSpec:
    for segment in segments:
        if segment.name.lower() == name.lower():
            return segment
    raise InputError(f"no segment named {name!r}; known: {', '.join(s.name for s in segments)}")


def build_request(
    segment: SegmentSpec,
    tone: Tone,
    snippets: dict[str, Snippet],
    *,
    max_snippets: int = 3,
    sender: Sender | None = None,
) -> EmailRequest:
    """The chain input for one segment and tone, with the segment's first `max_snippets` snippets."""
    missing = [sid for sid in segment.snippets if sid not in snippets]
    if missing:
        raise InputError(f"segment {segment.name!r} names unknown snippets: {', '.join(missing)}")
    chosen = [snippets[sid] for sid in segment.snippets][:max_snippets] or list(snippets.values())[:max_snippets]
    profile = SegmentProfile.model_validate(segment.model_dump(include={"name", "description", "features"}))
    return EmailRequest(segment=profile, offer=segment.offer, tone=tone, snippets=chosen, sender=sender or Sender())


class ContentBundle(BaseModel):
    """Segments and snippets loaded together, as the CLI and notebooks use them."""

    segments: list[SegmentSpec]
    snippets: dict[str, Snippet]
    sender: Sender = Field(default_factory=Sender)

    @classmethod
    def load(
        cls, segments_file: Path | None = None, content_dir: Path | None = None, sender_file: Path | None = None
    ) -> ContentBundle:
        return cls(
            segments=load_segments(segments_file), snippets=load_snippets(content_dir), sender=load_sender(sender_file)
        )

    def request(self, segment: str, tone: Tone, *, max_snippets: int = 3) -> EmailRequest:
        return build_request(
            find_segment(self.segments, segment), tone, self.snippets, max_snippets=max_snippets, sender=self.sender
        )
