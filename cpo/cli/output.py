"""What the CLI prints: plain lines (never markup), Rich tables of data, and cpo's warnings on stderr.

Every string that comes from the user or a model is printed as data: `say` prints plain text with its
control characters escaped (`printable`), and tables are built from `rich.text.Text`, never from markup strings.
"""

from __future__ import annotations

import logging
import sys
import unicodedata
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from cpo.core.models import EmailVariant
    from cpo.core.usage import Usage


def console(stderr: bool = False) -> Console:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Piped output is not squeezed into 80 columns: wide tables stay readable in logs and CI.
    return Console(file=stream, soft_wrap=True, width=None if stream.isatty() else 160, highlight=False, emoji=False)


# Characters a terminal acts on or hides rather than shows: C0/C1 controls (ESC, CR), line separators,
# format characters (bidi overrides, zero-width), private use and unassigned code points.
UNPRINTABLE = frozenset({"Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn"})


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str, *, keep_newlines: bool) -> str:
    """`text` with every character a terminal would act on or hide shown as an escape (`\\x1b`, `\\u202e`),
    so what a reviewer sees is what is there; newlines are kept when `keep_newlines`, else shown as `\\n`."""
    return "".join(
        _escape(c) if unicodedata.category(c) in UNPRINTABLE and not (c == "\n" and keep_newlines) else c for c in text
    )


def say(text: str, *, stderr: bool = False) -> None:
    """Plain text: never markup, never highlighted, control characters escaped (newlines kept)."""
    print(printable(text, keep_newlines=True), file=sys.stderr if stderr else sys.stdout, flush=True)


class StderrLines(logging.Handler):
    """cpo's log records (warnings and up) as `warning: ...` lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        say(f"{record.levelname.lower()}: {record.getMessage()}", stderr=True)


def setup_logging() -> None:
    logger = logging.getLogger("cpo")
    if not any(isinstance(h, StderrLines) for h in logger.handlers):
        logger.addHandler(StderrLines(logging.WARNING))
        logger.setLevel(logging.INFO)
        logger.propagate = False


def tick(ok: bool) -> str:
    return "✓" if ok else "✗"


def totals_line(label: str, usage: Usage) -> str:
    refused = f", {usage.refused_calls} format refusal(s), not billed" if usage.refused_calls else ""
    return (
        f"{label}: {usage.calls} calls ({usage.failed_calls} failed{refused}), {usage.input_tokens} input + "
        f"{usage.output_tokens} output = {usage.total_tokens} tokens, {usage.cost_display}"
    )


def quality_line(variants: list[EmailVariant]) -> str:
    """'valid: 7 of 8 (5 first time, 2 after repairs; 6 with no normalization)'."""
    valid = [v for v in variants if v.valid]
    first = sum(v.attempts == 1 for v in valid)
    untouched = sum(v.valid_before_normalization for v in valid)
    return (
        f"valid: {len(valid)} of {len(variants)} ({first} first time, {len(valid) - first} after repairs; "
        f"{untouched} with no normalization)"
    )


def print_email(title: str, v: EmailVariant) -> None:
    """An email as a reader sees it, under a rule with `title`: subject, body, the snippets it cites."""
    from rich.text import Text

    console().rule(Text(printable(title, keep_newlines=False)))
    say(printable(v.subject, keep_newlines=False) + "\n")
    say(v.body)
    say("")
    for c in v.citations:
        say(printable(f"[{c.id}] {c.title} ({c.section})", keep_newlines=False))
