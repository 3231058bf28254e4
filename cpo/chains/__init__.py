"""LCEL chains built on the chat model factory.

`build_email_chain` is loaded on first use, so `cpo.validation` can import the grounding checker in
this package without importing the chain (which imports the validation) first.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_email_chain"]


def __getattr__(name: str) -> Any:
    if name == "build_email_chain":
        from cpo.chains.email import build_email_chain

        return build_email_chain
    raise AttributeError(f"module 'cpo.chains' has no attribute {name!r}")
