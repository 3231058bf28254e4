"""The `cpo` command line: a thin shell over the library. Errors become one line and an exit code.

Only the standard library is imported at start-up, so `cpo --help`, `cpo --version` and argument
errors answer at once; each command's module is imported when it runs. Every string that comes from
the user or a model is printed as data, never as Rich markup (`cpo.cli.output`). Exit codes are
`cpo.core.errors.ExitCode`.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from importlib import import_module

from cpo.cli.output import say, setup_logging
from cpo.cli.parser import build_parser
from cpo.core.errors import ExitCode
from cpo.core.privacy import PRIVATE_UMASK

__all__ = ["build_parser", "main"]

# Command -> (module, function): imported when the command runs.
BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a command whose reader went away

COMMANDS = {
    "run": ("cpo.cli.run", "cmd_run"),
    "review": ("cpo.cli.commands", "cmd_review"),
    "audit": ("cpo.cli.commands", "cmd_audit"),
    "export": ("cpo.cli.commands", "cmd_export"),
    "analyze": ("cpo.cli.results", "cmd_analyze"),
    "report": ("cpo.cli.results", "cmd_report"),
    "index": ("cpo.cli.commands", "cmd_index"),
    "generate": ("cpo.cli.commands", "cmd_generate"),
    "try-prompts": ("cpo.cli.commands", "cmd_try_prompts"),
    "costs": ("cpo.cli.commands", "cmd_costs"),
    "check": ("cpo.cli.check", "cmd_check"),
}


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a command and turn expected errors into one line on stderr and an exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (ExitCode.OK if exc.code is None else ExitCode.BAD_INPUT)
    if args.command is None:
        parser.print_help()
        return ExitCode.BAD_INPUT
    setup_logging()
    args.session_name = shlex.join(["cpo", *(sys.argv[1:] if argv is None else argv)])
    module, name = COMMANDS[args.command]
    previous = os.umask(PRIVATE_UMASK)  # runs, reviews and ledgers hold customer data: their user's alone
    try:
        return int(getattr(import_module(module), name)(args))
    except KeyboardInterrupt:
        say("interrupted", stderr=True)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        return _reader_gone()
    except Exception as exc:
        return _fail(exc)
    finally:
        os.umask(previous)  # for callers in the same process (notebooks, tests)


def _reader_gone() -> int:
    """`cpo ... | head`: the reader of the output went away. Stop quietly, as Unix tools do (what was written
    to the run directory stays; a run can be resumed), and keep Python's exit flush from failing again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            os.dup2(devnull, stream.fileno())
    return BROKEN_PIPE


def _fail(exc: Exception) -> int:
    """The one place an error becomes a line and an exit code; anything unexpected keeps its traceback."""
    from cpo.core.errors import CpoError

    if isinstance(exc, CpoError):
        say(f"error: {exc}", stderr=True)
        return int(exc.exit_code)
    import openai

    from cpo.net.faults import one_line

    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        say(f"error: the endpoint refused the credentials: {one_line(exc)}", stderr=True)
        return ExitCode.BAD_INPUT
    if isinstance(exc, openai.OpenAIError):
        say(f"error: the model endpoint failed: {one_line(exc)}", stderr=True)
        return ExitCode.FAILED
    raise exc
