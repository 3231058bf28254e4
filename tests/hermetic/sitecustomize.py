"""Loaded by every Python process the tests start (the tests put this folder on PYTHONPATH): no connection
leaves the machine, as pytest-socket ensures for the test process itself. Only loopback (and Unix sockets)
may be connected to. Written without pytest, so the processes start as fast as they would without it.
"""

import os
import socket

ALLOWED = {"127.0.0.1", "::1", "localhost"}


class OutsideConnectionBlocked(OSError):
    """A process started by a test tried to connect to something other than loopback."""


if os.environ.get("LOOPBACK_ONLY_TESTS") == "1":
    _connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex

    def _check(sock: socket.socket, address: object) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
            host = str(address[0])
            if host not in ALLOWED and not host.startswith("::ffff:127."):
                raise OutsideConnectionBlocked(f"a test's process tried to connect to {host} (allowed: loopback)")

    def connect(self: socket.socket, address: object) -> None:
        _check(self, address)
        _connect(self, address)  # type: ignore[arg-type]

    def connect_ex(self: socket.socket, address: object) -> int:
        _check(self, address)
        return _connect_ex(self, address)  # type: ignore[arg-type]

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
