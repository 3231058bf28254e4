"""cpo's two endpoint models: langchain-openai's chat models plus cpo's call promises (`ResilientChatModel`).

Each adds only what differs from its base: the private-hook mixins of `cpo.net.hooks`.
"""

from __future__ import annotations

from langchain_openai import AzureChatOpenAI, ChatOpenAI

from cpo.llm.resilient import ResilientChatModel
from cpo.net.hooks import ContentFilteredError, KeepsFilteredUsage, SendsMaxTokens

__all__ = ["ContentFilteredError", "CpoAzureChatOpenAI", "CpoChatOpenAI"]


class CpoAzureChatOpenAI(ResilientChatModel, KeepsFilteredUsage, AzureChatOpenAI):
    """AzureChatOpenAI plus cpo's call promises, and a content-filtered answer that keeps its usage."""


class CpoChatOpenAI(ResilientChatModel, SendsMaxTokens, ChatOpenAI):
    """ChatOpenAI (any OpenAI-compatible server) plus cpo's call promises, its output limit sent as `max_tokens`."""
