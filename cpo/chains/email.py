"""Compatibility: `cpo.chains.email` as scripts written before the layered packages import it.

The email chain lives in `cpo.email.chain`. Nothing inside cpo imports this module.
"""

from cpo.email.chain import EmailChain, build_email_chain

__all__ = ["EmailChain", "build_email_chain"]
