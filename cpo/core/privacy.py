"""Customer ids in logs and audit files: keyed hashes, never the ids themselves.

A plain hash of a sequential id (C000001, C000002, ...) is reversed by hashing every candidate, so ids
are hashed with HMAC-SHA256 under a per-installation secret key: `CPO_ID_KEY_FILE`, else
`$XDG_CONFIG_HOME/cpo/id-key` (`~/.config/cpo/id-key`). The key is created (random, 32 bytes, mode
0600) the first time it is needed, never at import. The same key gives the same hash, so one
customer's lines can still be followed across runs on this installation. A key file other users can
read or write is refused (on POSIX systems): whoever holds the key can reverse the hashes.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import shlex
import stat
from pathlib import Path

from cpo.core.errors import ConfigError

# Mode bits of group and others: a file with none of them set is its user's alone (0600 / 0700). Also the umask
# every `cpo` command runs with, since what it writes holds customer data.
PRIVATE_UMASK = 0o077

KEY_BYTES = 32


def key_file() -> Path:
    configured = os.environ.get("CPO_ID_KEY_FILE", "").strip()
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME", "").strip() or str(Path.home() / ".config")
    return Path(base) / "cpo" / "id-key"


class IdHasher:
    """HMAC-SHA256 of customer ids under the installation's key, shortened to 16 hex digits."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ConfigError("the id key must be at least 16 bytes")
        self._key = key

    @classmethod
    def for_installation(cls, path: Path | None = None) -> IdHasher:
        """The installation's hasher; creates its key file on first use."""
        path = path or key_file()
        try:
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                except FileExistsError:  # another process created it first
                    pass
                else:
                    with os.fdopen(fd, "wb") as handle:
                        handle.write(secrets.token_bytes(KEY_BYTES))
            with path.open("rb") as handle:
                _refuse_shared(path, os.fstat(handle.fileno()).st_mode)  # the mode of the file that is read
                key = handle.read()
        except OSError as exc:
            raise ConfigError(f"id key file {path}: {exc.strerror or exc} (set CPO_ID_KEY_FILE)") from None
        return cls(key)

    def __call__(self, customer_id: str) -> str:
        return hmac.new(self._key, customer_id.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def _refuse_shared(path: Path, mode: int) -> None:
    """A key group or others may read (or replace) makes the hashes reversible: refuse it, saying how to fix it.

    Not on Windows, where the mode bits do not say who may read a file.
    """
    if os.name == "nt" or not mode & PRIVATE_UMASK:
        return
    how = "readable by others" if mode & 0o044 else "writable by others" if mode & 0o022 else "open to others"
    raise ConfigError(
        f"id key file {path} is {how} (mode {stat.S_IMODE(mode):04o}): chmod 600 {shlex.quote(str(path))}"
    )
