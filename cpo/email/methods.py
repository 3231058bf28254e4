"""How the email model is asked for structured output, and which method works with the endpoint.

`json_schema` first (Azure always), then function calling, then JSON mode: an OpenAI-compatible server
that refuses a method (a 400/422 that is not a content filter, or a 500 that names the format, as
llama.cpp's does) moves the chain down one method at once, with no retry, and the method that worked
is remembered per endpoint (`cpo.llm.endpoints`), so the next process does not ask again.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, cast

import openai
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import ensure_config

from cpo.core.errors import first_line
from cpo.core.models import EmailDraft, GuidedDraft
from cpo.email.repairs import Call
from cpo.llm.endpoints import EndpointNotes, endpoint_key
from cpo.llm.factory import model_source
from cpo.net.faults import refuses_format

log = logging.getLogger(__name__)


def wire_schema(schema: dict[str, Any], bare: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON schema as json_schema sends it: without the model's docstring and the titles, which are for
    developers (about 80 tokens of every request); the field descriptions, which the model reads, are kept but
    for the `bare` fields (the compact prompt describes its preheader itself)."""
    out = {k: v for k, v in schema.items() if k not in ("title", "description")}
    out["properties"] = {
        name: {k: v for k, v in field.items() if k != "title" and not (name in bare and k == "description")}
        for name, field in schema["properties"].items()
    }
    return out


EMAIL_DRAFT_SCHEMA = openai.pydantic_function_tool(EmailDraft)["function"]["parameters"]
EMAIL_DRAFT_JSON_SCHEMA = {"name": "EmailDraft", "schema": EMAIL_DRAFT_SCHEMA, "strict": True}
JSON_SCHEMA_RESPONSE_FORMAT = {"type": "json_schema", "json_schema": EMAIL_DRAFT_JSON_SCHEMA}
# Where json_schema is known to be enforced (the compact prompt's schema: part of its 400-token budget).
COMPACT_JSON_SCHEMA_RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {**EMAIL_DRAFT_JSON_SCHEMA, "schema": wire_schema(EMAIL_DRAFT_SCHEMA, bare=("preheader",))},
}
GUIDED_SCHEMA = openai.pydantic_function_tool(GuidedDraft)["function"]["parameters"]
GUIDED_RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "GuidedDraft", "schema": wire_schema(GUIDED_SCHEMA), "strict": True},
}
METHODS_AFTER = {"json_schema": "function_calling", "function_calling": "json_mode"}
JUDGE_MAX_TOKENS = 400
PROBE = 'Return this JSON object and nothing else: {"subject": "ok", "body": "ok", "citations": []}'


class StructuredOutput:
    """The method in use for one chain's model, the model bound for each kind of call, and the switch down."""

    def __init__(
        self, model: BaseChatModel, *, method: str, notes: EndpointNotes, remember: bool, max_output_tokens: int
    ) -> None:
        self.model = model
        self.source = model_source(model)
        self.notes = notes
        self.endpoint = endpoint_key(model)
        self.remember = remember
        self.configured = method
        self.max_output_tokens = max_output_tokens
        remembered = notes.get(self.endpoint, "method") if remember else None
        self.method = remembered if remembered in (*METHODS_AFTER, "json_mode") else method
        # json_schema set by hand, or remembered as answered: the endpoint takes it (Azure always does).
        self._schema_answered = self.method == "json_schema" and (remembered == "json_schema" or not remember)
        self._lock = threading.Lock()
        self._bound: dict[tuple[int, str, bool, str], Runnable[Any, Any]] = {}

    @property
    def enforced(self) -> bool:
        """Is the method in use json_schema, on an endpoint known to enforce it? Then the email's first prompt is
        the compact one (`cpo.email.prompts.profile_for`). A first try of json_schema on an OpenAI-compatible
        server is sent as it always was, full prompt and schema: a small model there may refuse it."""
        if self.method != "json_schema":
            return False
        return self.source == "azure" or self._schema_answered

    @property
    def small_model(self) -> bool:
        """Does an OpenAI-compatible server take only function calling or JSON mode (a small local model, as a
        rule)? Then the email's first prompt is the guided one (`cpo.email.guided`)."""
        return self.source == "openai-compatible" and self.method in ("function_calling", "json_mode")

    def prepared(self, call: Call) -> Runnable[Any, Any]:
        """The model bound for this call (its sampling and output limit included); notes the method on the call."""
        call.method = self.method
        bound = self._bound_for(call.model, call.kind, call.method, call.shape)
        extra = {**call.vary, **({"max_tokens": call.max_tokens} if call.max_tokens else {})}
        return bound.bind(**extra) if extra else bound

    def _bound_for(self, model: BaseChatModel, kind: str, method: str, shape: str = "email") -> Runnable[Any, Any]:
        """The model bound for one kind of call; email replies are parsed by cpo, leniently, not by a parser.

        No `with_structured_output(include_raw=True)`: it runs a parallel map per call (two threads),
        and with a pydantic schema the openai SDK itself raises on bad JSON or a `length` finish,
        losing the usage and the chance to repair.
        """
        if model_source(model) == "offline":
            method = "function_calling"
        if kind != "email":
            method = kind
        key = (id(model), method, method == "json_schema" and self.enforced, shape)
        with self._lock:
            if key not in self._bound:
                self._bound[key] = self._bind(model, method, compact=key[2], shape=shape)
            return self._bound[key]

    def _bind(
        self, model: BaseChatModel, method: str, *, compact: bool = False, shape: str = "email"
    ) -> Runnable[Any, Any]:
        if method == "text":
            return model  # each plain-text call carries its own max_tokens
        if method == "judge":
            return model.bind(
                response_format={"type": "json_object"}, max_tokens=min(JUDGE_MAX_TOKENS, self.max_output_tokens)
            )
        if shape == "plan" and method in ("json_schema", "function_calling"):
            if method == "json_schema":
                return model.bind(
                    extra_body={"response_format": GUIDED_RESPONSE_FORMAT}, max_tokens=self.max_output_tokens
                )
            return model.bind_tools([GuidedDraft], tool_choice="GuidedDraft", max_tokens=self.max_output_tokens)
        if method == "json_schema":
            # Sent as extra_body: the same JSON on the wire, but the openai SDK skips its per-call
            # type-driven transform of the nested schema (about 1 ms of client CPU per email).
            response_format = COMPACT_JSON_SCHEMA_RESPONSE_FORMAT if compact else JSON_SCHEMA_RESPONSE_FORMAT
            return model.bind(extra_body={"response_format": response_format}, max_tokens=self.max_output_tokens)
        if method == "function_calling":
            return model.bind_tools([EmailDraft], tool_choice="EmailDraft", max_tokens=self.max_output_tokens)
        return model.bind(response_format={"type": "json_object"}, max_tokens=self.max_output_tokens)

    def _ours(self, call: Call) -> bool:
        return call.kind == "email" and call.model is self.model

    def worked(self, call: Call) -> None:
        """The call was answered: remember its method for this endpoint."""
        if self._ours(call) and call.method == "json_schema" and self.source != "offline":
            self._schema_answered = True
        if self._ours(call) and self.remember and self.source != "offline" and call.method:
            self.notes.note(self.endpoint, method=call.method)

    def refused(self, call: Call, exc: Exception) -> bool:
        """Was `exc` the server refusing this call's method? Then the next method is in use (ask again)."""
        failed = call.method
        if not (self._ours(call) and self.source == "openai-compatible" and failed in METHODS_AFTER):
            return False
        if not refuses_format(exc):
            return False
        with self._lock:
            if self.method == failed:
                self.method = METHODS_AFTER[failed]
                switched = True
            else:
                switched = False  # another email already moved down
        if switched:
            log.warning(
                "the endpoint refused structured output by %s (%s); using %s from now on%s",
                failed,
                first_line(exc, 120),
                self.method,
                " (remembered for this endpoint)" if self.notes.path else "",
            )
        return True

    def probe(self, config: RunnableConfig | None = None) -> str:
        """Find the method that works, from the configured one down; remember it (`cpo check`)."""
        with self._lock:
            self.method = self.configured
        messages: list[BaseMessage] = [HumanMessage(PROBE)]
        call = Call("draft", self.model, messages)
        while True:
            try:
                cast(AIMessage, self.prepared(call).invoke(messages, ensure_config(config)))
            except Exception as exc:
                if self.refused(call, exc):
                    continue
                raise
            self.worked(call)
            return self.method
