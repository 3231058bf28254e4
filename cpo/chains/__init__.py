"""LCEL chains built on the chat model factory."""

from cpo.chains.email import build_email_chain

__all__ = ["build_email_chain"]
