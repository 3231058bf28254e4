"""Compatibility: `cpo.chains` (and `cpo.chains.email`, `cpo.chains.grounding`) as scripts written before the
layered packages import them. The email chain lives in `cpo.email.chain`, the grounding check in
`cpo.email.grounding`. Nothing inside cpo imports this package.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EmailChain", "build_email_chain"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from cpo.email import chain

        return getattr(chain, name)
    raise AttributeError(f"module 'cpo.chains' has no attribute {name!r}")
