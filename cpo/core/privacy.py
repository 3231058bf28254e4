"""Customer ids in logs and audit files: keyed hashes, never the ids themselves.

A plain hash of a sequential id (C000001, C000002, ...) is reversed by hashing every candidate, so ids
are hashed with HMAC-SHA256 under a per-installation secret key: `CPO_ID_KEY_FILE`, else
`$XDG_CONFIG_HOME/cpo/id-key` (`~/.config/cpo/id-key`). The key is created (random, 32 bytes, mode
0600) the first time it is needed, never at import. The same key gives the same hash, so one
customer's lines can still be followed across runs on this installation.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cpo.core.errors import ConfigError

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
            return cls(path.read_bytes())
        except OSError as exc:
            raise ConfigError(f"id key file {path}: {exc.strerror or exc} (set CPO_ID_KEY_FILE)") from None

    def __call__(self, customer_id: str) -> str:
        return hmac.new(self._key, customer_id.encode("utf-8"), hashlib.sha256).hexdigest()[:16]
