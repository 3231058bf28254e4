"""Offline token counting with the shipped tiktoken encodings."""

from __future__ import annotations

import os
import subprocess
import sys

from langchain_core.messages import HumanMessage, SystemMessage

from cpo.tokens import count_tokens, encoding_name_for, verify_shipped_encodings


def test_shipped_encodings_match_tiktokens_published_hashes() -> None:
    assert verify_shipped_encodings() == {"o200k_base": True, "cl100k_base": True}


def test_counts_known_strings_exactly() -> None:
    # reference values from OpenAI's tokenizer for these encodings
    assert count_tokens("Hello, world!", "gpt-4o-mini") == 4
    assert count_tokens("tiktoken is great!", "gpt-4") == 6


def test_chat_messages_include_per_message_overhead() -> None:
    messages = [SystemMessage("You are terse."), HumanMessage("Hi")]
    content = count_tokens("You are terse.") + count_tokens("Hi")
    assert count_tokens(messages) == content + 2 * 3 + 3


def test_model_families_pick_their_encoding() -> None:
    assert encoding_name_for("gpt-4o-mini-2024-07-18") == "o200k_base"
    assert encoding_name_for("gpt-4-0613") == "cl100k_base"
    assert encoding_name_for("gpt-35-turbo") == "cl100k_base"
    assert encoding_name_for(None) == "o200k_base"


def test_counting_works_with_no_network_and_an_empty_cache(tmp_path) -> None:
    """A fresh process, proxies pointing nowhere: the shipped files must be used, not a download."""
    env = {k: v for k, v in os.environ.items() if k != "TIKTOKEN_CACHE_DIR"}
    env.update(HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9", HOME=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-c", "from cpo.tokens import count_tokens; print(count_tokens('Hello, world!'))"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "4"
