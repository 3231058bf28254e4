"""Hermetic test set-up: no credentials from the environment, no network, cassettes from `cassettes/`.

Cassettes were recorded against `tests/azure_server.py`, the project's Azure-protocol test server on
loopback (127.0.0.1:8765), with `pytest --record-mode=rewrite`. In the default mode (`none`) they are
only replayed: a request that is not in the cassette fails the test instead of reaching a network.
See cassettes/README.md for re-recording, including against a real Azure OpenAI resource.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure_server import AzureTestServer

from cpo import Settings

ROOT = Path(__file__).resolve().parent.parent
CASSETTES = ROOT / "cassettes"
pytest_plugins = ["pytester"]

RECORD_PORT = 8765
RECORD_ENDPOINT = f"http://127.0.0.1:{RECORD_PORT}"
RECORD_DEPLOYMENT = "gpt-4o-mini"
TEST_KEY = "test-key"
# Re-recording against a real Azure resource (read before hermetic_env clears CPO_* variables).
REAL_AZURE = {key: os.environ.get(f"CPO_RECORD_AZURE_{key.upper()}") for key in ("endpoint", "key", "deployment")}
REAL_AZURE_ON = False  # set in pytest_configure: only while recording, and only with all three variables


# The timeout of tests marked `waits`; every other test fails after pyproject's `timeout` (20 s).
WAITS_TIMEOUT_S = 90


def pytest_unconfigure(config: pytest.Config) -> None:
    _SESSION_ENV.undo()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("waits") is not None and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(WAITS_TIMEOUT_S))


_SESSION_ENV = pytest.MonkeyPatch()


def pytest_configure(config: pytest.Config) -> None:
    """The environment is scrubbed for the whole session, before collection and module-scoped fixtures too."""
    _scrub(_SESSION_ENV)
    global REAL_AZURE_ON
    REAL_AZURE_ON = all(REAL_AZURE.values()) and config.getoption("--record-mode") not in (None, "none")


# Variables a developer's shell may carry that would send a test (or a process it starts) somewhere real.
SCRUBBED = ("AZURE_", "OPENAI_", "CPO_", "LANGSMITH_", "LANGCHAIN_")
HERMETIC_PATH = Path(__file__).resolve().parent / "hermetic"  # sitecustomize.py: loopback only, in subprocesses too


def _scrub(patch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.startswith(SCRUBBED):
            patch.delenv(var)
    patch.setenv("LOOPBACK_ONLY_TESTS", "1")
    patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(HERMETIC_PATH), os.environ.get("PYTHONPATH")])))


@pytest.fixture(autouse=True)
def hermetic_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Drop every Azure, OpenAI, cpo and LangSmith/LangChain variable (again: a test before may have set one) and
    run in an empty directory (no stray `.env`), with the id key in the test's directory. Processes the test
    starts inherit all of this and reach only loopback (pytest-socket's `--allow-hosts` does it for this one)."""
    _scrub(monkeypatch)
    monkeypatch.setenv("CPO_ID_KEY_FILE", str(tmp_path / "id-key"))
    monkeypatch.chdir(tmp_path)


def _as_test_server(request: Any) -> Any:
    """Recorded real-Azure requests are stored under the test server's address, so replay is uniform."""
    if REAL_AZURE_ON:
        real = str(REAL_AZURE["endpoint"]).rstrip("/")
        request.uri = request.uri.replace(real, RECORD_ENDPOINT).replace(
            f"/deployments/{REAL_AZURE['deployment']}/", f"/deployments/{RECORD_DEPLOYMENT}/"
        )
    return request


def _scrub_response(response: dict[str, Any]) -> dict[str, Any]:
    headers = response.get("headers", {})
    for name in list(headers):
        if name.lower() in ("set-cookie", "api-key", "authorization"):
            headers[name] = ["REDACTED"]
    return response


@pytest.fixture(scope="module")
def vcr_config() -> dict[str, Any]:
    return {
        "filter_headers": [("api-key", "REDACTED"), ("authorization", "REDACTED")],
        "decode_compressed_response": True,
        "match_on": ["method", "uri", "body"],
        "before_record_request": _as_test_server,
        "before_record_response": _scrub_response,
        "allow_playback_repeats": False,
    }


@pytest.fixture(scope="module")
def vcr_cassette_dir(request: pytest.FixtureRequest) -> str:
    return str(CASSETTES / request.module.__name__)


def recording(request: pytest.FixtureRequest) -> bool:
    return request.config.getoption("--record-mode") not in (None, "none")


class _ReplayServer:
    """Stands in for the test server when cassettes are replayed: scripts are already in the cassette."""

    endpoint = RECORD_ENDPOINT
    live = False

    def script(self, deployment: str, *replies: Any) -> None:
        return None


class _RealAzure:
    """Stands in for the test server while recording against a real resource: it cannot be scripted."""

    endpoint = RECORD_ENDPOINT
    live = False

    def script(self, deployment: str, *replies: Any) -> None:
        pytest.skip("needs scripted replies: recorded against the test server only")


@pytest.fixture
def azure_server(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The Azure-protocol server on the cassette port while recording; a no-op stand-in on replay."""
    if recording(request) and REAL_AZURE_ON:
        yield _RealAzure()
    elif recording(request):
        with AzureTestServer(port=RECORD_PORT, api_key=TEST_KEY) as server:
            server.live = True
            yield server
    else:
        yield _ReplayServer()


@pytest.fixture
def live_server() -> Iterator[AzureTestServer]:
    """A live loopback server on a free port, for what a cassette cannot hold (hangs, timing)."""
    with AzureTestServer(port=0, api_key=TEST_KEY) as server:
        yield server


def azure_settings(endpoint: str = RECORD_ENDPOINT, deployment: str = RECORD_DEPLOYMENT, **extra: Any) -> Settings:
    """Settings for the cassette endpoint (or, when re-recording against real Azure, for that resource)."""
    if REAL_AZURE_ON and endpoint == RECORD_ENDPOINT:
        if deployment != RECORD_DEPLOYMENT:
            pytest.skip(f"scenario deployment {deployment!r} exists only on the test server")
        endpoint, deployment, key = REAL_AZURE["endpoint"], REAL_AZURE["deployment"], REAL_AZURE["key"]
        return Settings(azure_endpoint=endpoint, azure_deployment=deployment, azure_api_key=key, **extra)
    return Settings(azure_endpoint=endpoint, azure_deployment=deployment, azure_api_key=TEST_KEY, **extra)


@pytest.fixture
def cassette_billed(request: pytest.FixtureRequest, azure_server: Any, vcr: Any) -> Any:
    """What the server billed in this test: from the live server, or summed from the cassette on replay."""

    def billed() -> list[dict[str, Any]]:
        if getattr(azure_server, "live", False):
            return list(azure_server.billed)
        out = []
        for interaction in vcr.data:
            response = interaction[1]
            status = response["status"]["code"]
            body = response["body"]["string"]
            usage = (json.loads(body).get("usage") or {}) if status == 200 and body else {}
            out.append(
                {
                    "status": status,
                    "prompt_tokens": usage.get("prompt_tokens", 0),
                    "completion_tokens": usage.get("completion_tokens", 0),
                    "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
                    "model": json.loads(body).get("model") if status == 200 and body else None,
                }
            )
        return out

    return billed


def http_requests(azure_server: Any, vcr: Any) -> int:
    """HTTP requests the client sent: counted by the live server, or played from the cassette."""
    return len(azure_server.requests) if getattr(azure_server, "live", False) else vcr.play_count


def sent_bodies(azure_server: Any, vcr: Any) -> list[dict[str, Any]]:
    """JSON bodies of the requests the client sent, from the live server or the cassette."""
    if getattr(azure_server, "live", False):
        return list(azure_server.requests)
    return [json.loads(request.body) for request in vcr.requests]


@pytest.fixture(autouse=True)
def _fresh_endpoint_notes() -> Iterator[None]:
    """What one test taught the process about an endpoint (its structured-output method) stays in it."""
    from cpo.llm.endpoints import notes_for

    notes_for(None).clear()
    yield
    notes_for(None).clear()
