"""How fast the CLI answers when it has nothing heavy to do: help, --version, an argument error.

Each case runs the installed `cpo` script in a fresh process `--repeat` times (default 10) and prints
the best and median wall time, plus whether the process imported langchain_core or openai (it should
not: those take seconds to import and are only needed to generate). `import cpo` is timed the same way.

Usage: python benchmarks/cli_startup.py [--repeat 10]
Exit code 1 if a case's median is over 0.5 s or it imported a heavy module.
"""

from __future__ import annotations

import argparse
import ast
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_S = 0.5
HEAVY = ("langchain_core", "openai", "langchain_openai", "tiktoken")
CLI = Path(sys.executable).parent / "cpo"
CASES: dict[str, list[str]] = {
    "cpo --help": [str(CLI), "--help"],
    "cpo --version": [str(CLI), "--version"],
    "cpo run --help": [str(CLI), "run", "--help"],
    "cpo run --concurrency 0 (argument error)": [str(CLI), "run", "--concurrency", "0"],
    "python -c 'import cpo'": [sys.executable, "-c", "import cpo"],
}
PROBE = """\
import sys, runpy
sys.argv = {argv!r}
try:
    runpy.run_module("cpo.cli", run_name="__main__")
except SystemExit:
    pass
print("HEAVY", sorted(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
"""


def timed(command: list[str], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, check=False)
        times.append(time.perf_counter() - started)
    return times


def heavy_imports(command: list[str]) -> list[str]:
    """Re-run the case in-process-style to list the heavy modules it imported."""
    if command[0] != str(CLI):
        code = f"import sys, cpo; print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)"
    else:
        code = PROBE.format(argv=["cpo", *command[1:]], heavy=HEAVY)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    line = next((ln for ln in done.stderr.splitlines() if ln.startswith("HEAVY ")), "HEAVY ['?']")
    return list(ast.literal_eval(line.removeprefix("HEAVY ")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    print(f"cpo CLI start-up, {args.repeat} fresh processes per case, Python {sys.version.split()[0]}")
    failed = False
    for name, command in CASES.items():
        times = timed(command, args.repeat)
        median = statistics.median(times)
        heavy = heavy_imports(command)
        ok = median <= TARGET_S and not heavy
        failed |= not ok
        print(
            f"{name:45s} best {min(times) * 1000:6.0f} ms  median {median * 1000:6.0f} ms  "
            f"heavy imports: {', '.join(heavy) or 'none'}  {'PASS' if ok else 'FAIL'}"
        )
    print(f"target: median <= {TARGET_S * 1000:.0f} ms and no heavy import")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
