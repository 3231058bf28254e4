"""The suite cannot reach the outside or hang: these tests show the guards work, so a change that loosens
one fails here (conftest.py's hermetic_env, pytest-socket, tests/hermetic/sitecustomize.py, pytest-timeout).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
from pytest_socket import SocketConnectBlockedError

OUTSIDE = ("10.255.255.1", 443)  # a non-loopback address (never answers): the guard must refuse it first


@pytest.mark.filterwarnings("ignore:A test tried to use socket")
def test_a_connection_to_anything_but_loopback_is_refused_in_the_test_process() -> None:
    with pytest.raises(SocketConnectBlockedError):
        socket.create_connection(OUTSIDE, timeout=2)


def test_loopback_stays_open_in_the_test_process() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server, socket.create_connection(server.getsockname(), timeout=2):
        pass


def test_a_process_a_test_starts_reaches_loopback_only() -> None:
    probe = (
        "import socket\n"
        "server = socket.create_server(('127.0.0.1', 0))\n"
        "socket.create_connection(server.getsockname(), timeout=2).close()\n"
        "print('loopback ok', flush=True)\n"
        f"socket.create_connection({OUTSIDE!r}, timeout=2)\n"
    )
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "loopback ok"
    assert out.returncode != 0 and "OutsideConnectionBlocked" in out.stderr
    assert time.monotonic() - started < 10  # refused at once, not a connect timeout


def test_the_environment_is_scrubbed_for_the_test_and_its_processes() -> None:
    """With the developer's AZURE_*/OPENAI_*/CPO_*/LANGSMITH_*/LANGCHAIN_* set, a test sees none of them."""
    leaked = [v for v in os.environ if v.startswith(("AZURE_", "OPENAI_", "LANGSMITH_", "LANGCHAIN_"))]
    cpo = sorted(v for v in os.environ if v.startswith("CPO_"))
    assert leaked == [] and cpo == ["CPO_ID_KEY_FILE"]  # the one the set-up gives: a key in the test's directory
    assert os.environ["CPO_ID_KEY_FILE"].startswith(os.getcwd())


def test_the_default_timeout_fails_a_hung_test_in_seconds(pytestconfig: pytest.Config) -> None:
    assert 0 < float(pytestconfig.getini("timeout")) <= 30


def test_a_hung_test_fails_within_its_timeout(pytester: pytest.Pytester, pytestconfig: pytest.Config) -> None:
    """The mechanism, at a one-second timeout and the suite's method: a test hung in a thread that will never
    finish (which a signal cannot stop) still ends the run, as a failure, with every thread's stack."""
    pytester.makepyfile(
        "import threading\n\n"
        "def test_hangs():\n"
        "    stuck = threading.Thread(target=threading.Event().wait)\n"
        "    stuck.start()\n"
        "    stuck.join()\n"
    )
    method = str(pytestconfig.getini("timeout_method"))
    started = time.monotonic()
    result = pytester.runpytest_subprocess("--timeout=1", f"--timeout-method={method}", "-p", "no:cacheprovider")
    assert result.ret != 0 and "Timeout" in result.stdout.str() + result.stderr.str()
    assert time.monotonic() - started < 20
