"""Offline token counting with the shipped tiktoken encodings."""

from __future__ import annotations

import os
import subprocess
import sys

from langchain_core.messages import HumanMessage, SystemMessage

from cpo.net.tokens import count_tokens, encoding_name_for, verify_shipped_encodings


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
        [sys.executable, "-c", "from cpo.net.tokens import count_tokens; print(count_tokens('Hello, world!'))"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "4"


def test_importing_and_counting_leave_the_environment_alone(tmp_path) -> None:
    """Before: `import cpo` set TIKTOKEN_CACHE_DIR for the whole process, and tiktoken then wrote other
    encodings into the installed package (failing on a read-only site-packages)."""
    probe = (
        "import os, cpo; from cpo.net.tokens import count_tokens; before = dict(os.environ); "
        "n = count_tokens('Hello, world!'); import tiktoken; "
        "print(n, 'TIKTOKEN_CACHE_DIR' in os.environ, dict(os.environ) == before)"
    )
    env = {k: v for k, v in os.environ.items() if k != "TIKTOKEN_CACHE_DIR"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["4", "False", "True"]


def test_counting_ignores_an_unusable_tiktoken_cache(tmp_path) -> None:
    """A cache directory that cannot exist (under a file) would fail any read or write through tiktoken's cache."""
    (tmp_path / "file").write_text("x")
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path / "file" / "cache"), "HTTPS_PROXY": "http://127.0.0.1:9"}
    probe = "from cpo.net.tokens import count_tokens; print(count_tokens('tiktoken is great!', 'gpt-4'))"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "6"


def test_the_shipped_encodings_are_tiktokens_own(tmp_path) -> None:
    """cpo builds the encodings itself; they must tokenize exactly as tiktoken's, special tokens included."""
    import shutil

    from cpo.net.tokens import SHIPPED_ENCODINGS, get_encoding, shipped_file

    cache_names = {  # tiktoken's cache file name: sha1 of the download URL
        "o200k_base": "fb374d419588a4632f3f557e76b4b70aebbca790",
        "cl100k_base": "9b5ad71b2ce5302211f9c61530b329a4922fc6a4",
    }
    for name, cache_name in cache_names.items():
        shutil.copy(shipped_file(name), tmp_path / cache_name)
    text = "Gold members save 15% — café, naïve 😀 <|endoftext|> 12345 ﬁne"
    probe = (
        "import json, sys, tiktoken; "
        "print(json.dumps({n: tiktoken.get_encoding(n).encode(sys.argv[1], allowed_special='all') "
        f"for n in {list(SHIPPED_ENCODINGS)!r}}}))"
    )
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", probe, text], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    import json

    theirs = json.loads(out.stdout)
    for name, model in (("o200k_base", "gpt-4o-mini"), ("cl100k_base", "gpt-4")):
        assert get_encoding(model).encode(text, allowed_special="all") == theirs[name]
