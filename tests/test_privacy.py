"""Customer ids are keyed hashes in logs: stable per installation, not reversible by hashing candidates."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from cpo.core.errors import ConfigError
from cpo.core.privacy import IdHasher, key_file


def test_the_key_is_created_once_private_and_gives_stable_hashes(tmp_path: Path) -> None:
    path = tmp_path / "cpo" / "id-key"
    first = IdHasher.for_installation(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(path.read_bytes()) == 32
    again = IdHasher.for_installation(path)
    assert first("C000001") == again("C000001") != first("C000002")
    assert len(first("C000001")) == 16


def test_a_plain_hash_of_the_id_does_not_match(tmp_path: Path) -> None:
    hasher = IdHasher.for_installation(tmp_path / "key")
    assert hasher("C000001") != hashlib.sha256(b"C000001").hexdigest()[:16]
    other = IdHasher.for_installation(tmp_path / "other-key")
    assert other("C000001") != hasher("C000001")  # another installation, another hash


def test_the_key_location_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CPO_ID_KEY_FILE")  # the hermetic set-up points it at the test's directory
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert key_file() == tmp_path / "cpo" / "id-key"
    monkeypatch.setenv("CPO_ID_KEY_FILE", str(tmp_path / "mine"))
    assert key_file() == tmp_path / "mine"


def test_an_unwritable_key_location_is_one_line(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"id key file .*: .* \(set CPO_ID_KEY_FILE\)"):
        IdHasher.for_installation(blocked / "key")


def test_importing_cpo_creates_no_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    import cpo.core.privacy

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    importlib.reload(cpo.core.privacy)
    assert not (tmp_path / "cpo").exists()
