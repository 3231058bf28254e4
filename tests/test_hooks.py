"""Each private library hook cpo relies on (`cpo.net.hooks`), pinned against the installed libraries.

These are not public contracts of httpx2, langchain-core or langchain-openai: when an upgrade moves one,
the test named for that hook fails here, before a campaign does.
"""

from __future__ import annotations

from typing import Any

import httpx2
import openai
import pytest
from langchain_core.messages import HumanMessage
from langchain_openai import AzureChatOpenAI, ChatOpenAI

from cpo.net.hooks import (
    ContentFilteredError,
    KeepsFilteredUsage,
    SendsMaxTokens,
    invocation_params,
    wrap_network_backend,
)
from cpo.net.transport import AsyncBoundedTransport, BoundedTransport, _AsyncBackend, _Backend

FILTERED = {
    "id": "x",
    "object": "chat.completion",
    "created": 0,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "finish_reason": "content_filter", "message": {"role": "assistant", "content": None}}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 0, "total_tokens": 12},
}


def azure(cls: type[Any] = AzureChatOpenAI) -> Any:
    return cls(azure_endpoint="https://r.openai.azure.com", azure_deployment="d", api_key="k", api_version="2024-10-21")


def test_wrap_network_backend_httpx2_transports_keep_their_pool_in_pool() -> None:
    plain = httpx2.HTTPTransport()
    assert hasattr(plain._pool, "_network_backend")  # the library's private attribute the hook replaces
    seen: list[Any] = []
    wrap_network_backend(plain, lambda inner: seen.append(inner) or "wrapped")
    assert plain._pool._network_backend == "wrapped" and seen and seen[0] != "wrapped"
    assert isinstance(BoundedTransport()._pool._network_backend, _Backend)
    assert isinstance(AsyncBoundedTransport()._pool._network_backend, _AsyncBackend)


def test_invocation_params_name_what_a_budget_prices() -> None:
    """The reservation reads the model, the Azure deployment, the provider type and the output limit."""
    params = invocation_params(azure(), None, {"max_tokens": 5})
    assert params["azure_deployment"] == "d" and "azure" in params["_type"] and params["max_tokens"] == 5
    params = invocation_params(ChatOpenAI(model="m", base_url="http://127.0.0.1:9/v1", api_key="k"), None, {})
    assert params["model"] == "m" and "azure" not in params["_type"]


def test_keeps_filtered_usage_langchain_openai_still_raises_a_bare_value_error() -> None:
    with pytest.raises(ValueError, match="content filter") as plain:
        azure()._create_chat_result(FILTERED)
    assert not isinstance(plain.value, openai.ContentFilterFinishReasonError)  # the usage is lost there

    class Kept(KeepsFilteredUsage, AzureChatOpenAI):
        pass

    with pytest.raises(ContentFilteredError) as ours:
        azure(Kept)._create_chat_result(FILTERED)
    assert ours.value.completion.usage.prompt_tokens == 12 and isinstance(ours.value, ValueError)


def test_sends_max_tokens_langchain_openai_still_sends_only_max_completion_tokens() -> None:
    messages = [HumanMessage("hi")]
    plain = ChatOpenAI(model="qwen", base_url="http://127.0.0.1:9/v1", api_key="k")
    assert plain._get_request_payload(messages, max_tokens=7).get("max_completion_tokens") == 7

    class Sends(SendsMaxTokens, ChatOpenAI):
        pass

    ours = Sends(model="qwen", base_url="http://127.0.0.1:9/v1", api_key="k")._get_request_payload(
        messages, max_tokens=7
    )
    assert ours["max_tokens"] == 7 and "max_completion_tokens" not in ours
    reasoning = Sends(model="o3-mini", base_url="http://127.0.0.1:9/v1", api_key="k")
    assert reasoning._get_request_payload(messages, max_tokens=7)["max_completion_tokens"] == 7


def test_no_other_module_touches_a_private_name_of_a_library() -> None:
    """The hooks stay gathered: outside `cpo.net.hooks`, every `obj._name` cpo uses is a name cpo defines itself.

    `os._exit` is the standard library's documented way to leave at once (a second Ctrl-C).
    """
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "cpo"
    trees = {path: ast.parse(path.read_text(encoding="utf-8")) for path in root.rglob("*.py")}
    own: set[str] = {"_exit"}
    for tree in (tree for path, tree in trees.items() if path.name != "hooks.py"):
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                own.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                own.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
    found = [
        f"{path.relative_to(root)}:{node.lineno} .{node.attr}"
        for path, tree in trees.items()
        if path.name != "hooks.py"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
        and node.attr not in own
    ]  # fmt: skip
    assert not found, f"private names of other libraries used outside cpo/net/hooks.py: {found}"
    hooked = {"_pool", "_network_backend", "_get_invocation_params", "_create_chat_result", "_get_request_payload"}
    assert not hooked & own  # so a use of any of them outside hooks.py would be listed above
