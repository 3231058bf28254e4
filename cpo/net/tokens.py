"""Offline token counting with tiktoken, using encoding files shipped in the package.

tiktoken downloads its encodings on first use, which fails without network. cpo ships byte-identical
copies of o200k_base and cl100k_base (sha256 checked on load) and builds `tiktoken.Encoding` objects
from them directly: no download, no cache directory, no environment variable set for the process.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpo.core.resources import PACKAGE_DIR

if TYPE_CHECKING:
    import tiktoken

SHIPPED_DIR = PACKAGE_DIR / "_tiktoken"

ENDOFTEXT, ENDOFPROMPT = "<|endoftext|>", "<|endofprompt|>"
FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX = "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"


@dataclass(frozen=True)
class ShippedEncoding:
    """What tiktoken_ext.openai_public defines for an encoding, minus the download URL."""

    sha256: str
    pat_str: str
    special_tokens: dict[str, int]


# Patterns and special tokens as published in tiktoken_ext/openai_public.py.
SHIPPED_ENCODINGS: dict[str, ShippedEncoding] = {
    "o200k_base": ShippedEncoding(
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        pat_str="|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        special_tokens={ENDOFTEXT: 199999, ENDOFPROMPT: 200018},
    ),
    "cl100k_base": ShippedEncoding(
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pat_str=(
            r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|"""
            r"""\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
        ),
        special_tokens={
            ENDOFTEXT: 100257,
            FIM_PREFIX: 100258,
            FIM_MIDDLE: 100259,
            FIM_SUFFIX: 100260,
            ENDOFPROMPT: 100276,
        },
    ),
}

# Chat format overhead used by OpenAI's own counting recipe for gpt-3.5/4/4o-family models.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3


def encoding_name_for(model: str | None) -> str:
    """o200k for the 4o/4.1/o-series/5 families and unknown models; cl100k for gpt-4 and gpt-3.5."""
    name = (model or "").lower()
    if name.startswith(("gpt-4-", "gpt-35", "gpt-3.5")) or name == "gpt-4" or "ada-002" in name:
        return "cl100k_base"
    return "o200k_base"


def shipped_file(name: str) -> Path:
    return SHIPPED_DIR / f"{name}.tiktoken"


def _mergeable_ranks(name: str) -> dict[bytes, int]:
    """The BPE ranks of a shipped encoding (the `.tiktoken` format: base64 token, space, rank)."""
    data = shipped_file(name).read_bytes()
    if hashlib.sha256(data).hexdigest() != SHIPPED_ENCODINGS[name].sha256:
        raise RuntimeError(f"{shipped_file(name)} does not match tiktoken's published sha256; reinstall cpo")
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@lru_cache(maxsize=4)
def _encoding(name: str) -> tiktoken.Encoding:
    import tiktoken

    spec = SHIPPED_ENCODINGS[name]
    return tiktoken.Encoding(
        name, pat_str=spec.pat_str, mergeable_ranks=_mergeable_ranks(name), special_tokens=spec.special_tokens
    )


def get_encoding(model: str | None = None) -> tiktoken.Encoding:
    """The tiktoken encoding for a model, built from the shipped files (no network, no cache)."""
    return _encoding(encoding_name_for(model))


def count_text_tokens(text: str, model: str | None = "gpt-4o-mini") -> int:
    """Tokens in a plain string."""
    return len(get_encoding(model).encode(text, disallowed_special=()))


def _message_parts(message: Any) -> tuple[str, str | None]:
    """(content, name) of a LangChain message, an OpenAI-style dict or a (role, content) tuple."""
    if isinstance(message, dict):
        content, name = message.get("content", ""), message.get("name")
    elif isinstance(message, tuple):
        content, name = message[1], None
    else:
        content, name = getattr(message, "content", ""), getattr(message, "name", None)
    if isinstance(content, list):  # multimodal content blocks: count the text parts
        content = "".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in content)
    return str(content or ""), name


def count_tokens(text_or_messages: str | Sequence[Any], model: str | None = "gpt-4o-mini") -> int:
    """Tokens in a string, or prompt tokens of a chat request including per-message overhead."""
    if isinstance(text_or_messages, str):
        return count_text_tokens(text_or_messages, model)
    total = REPLY_PRIMING_TOKENS
    for message in text_or_messages:
        content, name = _message_parts(message)
        total += TOKENS_PER_MESSAGE + count_text_tokens(content, model)
        if name:
            total += TOKENS_PER_NAME + count_text_tokens(name, model)
        for call in getattr(message, "tool_calls", None) or []:
            total += count_text_tokens(str(call.get("name", "")) + str(call.get("args", "")), model)
    return total


def verify_shipped_encodings() -> dict[str, bool]:
    """sha256 check of the shipped files against tiktoken's published hashes."""
    return {
        name: hashlib.sha256(shipped_file(name).read_bytes()).hexdigest() == spec.sha256
        for name, spec in SHIPPED_ENCODINGS.items()
    }
