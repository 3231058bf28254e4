"""The email chain: prompt -> structured output -> validate -> repair, one run per email.

`build_email_chain(model)` returns a Runnable[EmailRequest, EmailVariant]. Each invocation is one
root run for a CostTracker passed in `config["callbacks"]`; the variant also carries its own usage,
counted by a CostTracker attached to that invocation only (the same code path, never a second one).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import openai
from langchain_core.callbacks import BaseCallbackManager
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from langchain_core.runnables.config import patch_config
from openai.lib._pydantic import to_strict_json_schema
from pydantic import ValidationError

from cpo.costs import CostTracker, price_book_for
from cpo.errors import CpoError
from cpo.llm import build_chat_model, model_source
from cpo.models import Citation, EmailDraft, EmailRequest, EmailVariant, ValidationIssue, ValidationReport
from cpo.offline import OfflineChatModel
from cpo.pricing import PriceBook
from cpo.prompts import PromptSet
from cpo.settings import Settings
from cpo.validation import ValidationLimits, validate_draft

EMAIL_DRAFT_JSON_SCHEMA = {"name": "EmailDraft", "schema": to_strict_json_schema(EmailDraft), "strict": True}
JSON_SCHEMA_RESPONSE_FORMAT = {"type": "json_schema", "json_schema": EMAIL_DRAFT_JSON_SCHEMA}
METHODS_AFTER = {"json_schema": "function_calling", "function_calling": "json_mode"}


def lenient_json(text: str) -> dict[str, Any] | None:
    """Parse a JSON object out of model text: tolerates code fences, prose around it, raw newlines."""
    match = re.search(r"\{.*\}", text, re.DOTALL)
    if not match:
        return None
    try:
        value = json.loads(match.group(0), strict=False)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


class EmailChain:
    """Holds what is shared across invocations: model, prompts, limits, price book, method choice."""

    def __init__(
        self,
        model: BaseChatModel,
        *,
        prompts: PromptSet,
        limits: ValidationLimits,
        max_repairs: int,
        method: str,
        prices: PriceBook,
        fallback: BaseChatModel | None,
    ) -> None:
        self.model, self.prompts, self.limits, self.max_repairs = model, prompts, limits, max_repairs
        self.prices, self.fallback = prices, fallback
        self.source = model_source(model)
        self.method = method
        self._lock = threading.Lock()
        self._bound_models: dict[tuple[int, str], Runnable] = {}

    def _bound(self, model: BaseChatModel, method: str) -> Runnable:
        """The model bound to ask for an EmailDraft; the reply is parsed here, leniently, not by a parser.

        No `with_structured_output(include_raw=True)`: it runs a parallel map per call (two threads),
        and with a pydantic schema the openai SDK itself raises on bad JSON or a `length` finish,
        losing the usage and the chance to repair.
        """
        if model_source(model) == "offline":
            method = "function_calling"
        key = (id(model), method)
        with self._lock:
            if key not in self._bound_models:
                if method == "json_schema":
                    # Sent as extra_body: the same JSON on the wire, but the openai SDK skips its per-call
                    # type-driven transform of the nested schema (about 1 ms of client CPU per email).
                    bound = model.bind(extra_body={"response_format": JSON_SCHEMA_RESPONSE_FORMAT})
                elif method == "function_calling":
                    bound = model.bind_tools([EmailDraft], tool_choice="EmailDraft")
                else:
                    bound = model.bind(response_format={"type": "json_object"})
                self._bound_models[key] = bound
            return self._bound_models[key]

    def _refused(self, exc: Exception) -> bool:
        """A refusal of the method, as opposed to a fault: only for OpenAI-compatible servers."""
        if self.source != "openai-compatible" or self.method not in METHODS_AFTER:
            return False
        if isinstance(exc, openai.BadRequestError):
            return getattr(exc, "code", None) != "content_filter"
        return isinstance(exc, openai.InternalServerError | openai.UnprocessableEntityError)

    def _next_method(self, failed: str) -> None:
        with self._lock:
            if self.method == failed:
                self.method = METHODS_AFTER[failed]

    @staticmethod
    def _draft(reply: AIMessage) -> tuple[EmailDraft | None, str | None]:
        """The EmailDraft in a reply: tool-call arguments or JSON content, tolerating raw newlines."""
        candidates: list[Any] = [c["args"] for c in reply.tool_calls]
        candidates += [str(c.get("args") or "") for c in reply.invalid_tool_calls]
        candidates.append(str(reply.content or ""))
        preview = " ".join(str(reply.content or "").split())[:80]
        error = f"the reply was not a JSON email object: {preview!r}"
        if reply.response_metadata.get("finish_reason") == "length":
            error = "the reply was cut off at the output token limit (finish_reason=length); write a shorter email"
        for candidate in candidates:
            data = candidate if isinstance(candidate, dict) else lenient_json(candidate)
            if data is not None:
                try:
                    return EmailDraft.model_validate(data), None
                except ValidationError as exc:
                    error = f"the reply's JSON is not an email object: {exc.errors()[0]['msg']}"
                    continue
        return None, error

    def _report(self, request: EmailRequest, draft: EmailDraft | None, error: str | None) -> ValidationReport:
        if draft is None:
            return ValidationReport(valid=False, issues=[ValidationIssue(code="unparseable", message=error or "")])
        return validate_draft(draft, request, self.limits)

    def _config(self, config: RunnableConfig, local: CostTracker) -> RunnableConfig:
        callbacks = config.get("callbacks")
        if isinstance(callbacks, BaseCallbackManager):
            callbacks = callbacks.copy()
            callbacks.add_handler(local, inherit=True)
        else:
            callbacks = [*(callbacks or []), local]
        return patch_config(config, callbacks=callbacks)

    def _variant(
        self,
        request: EmailRequest,
        draft: EmailDraft | None,
        report: ValidationReport,
        *,
        local: CostTracker,
        started: float,
        attempts: int,
        source: str,
        fallback_used: bool,
    ) -> EmailVariant:
        subject, body = (draft.subject.strip(), draft.body.strip()) if draft else ("", "")
        citations = []
        for cid in dict.fromkeys(draft.citations if draft else []):
            snippet = request.snippet(cid)
            if snippet is not None:
                citations.append(
                    Citation(id=snippet.id, title=snippet.title, section=snippet.section, quote=snippet.text)
                )
        models = list(local.session.by_model)
        run_ids = list(local.runs)
        return EmailVariant(
            variant_id=EmailVariant.make_id(request.segment.name, request.tone, subject, body),
            segment=request.segment.name,
            tone=request.tone,
            subject=subject,
            body=body,
            citations=citations,
            prompt_version=self.prompts.version(request.tone),
            model=models[-1] if models else "<none>",
            usage=local.session,
            latency_s=time.perf_counter() - started,
            attempts=attempts,
            validation=report,
            source=source,
            fallback_used=fallback_used,
            run_id=str(run_ids[0]) if run_ids else None,  # type: ignore[arg-type]
        )

    def _steps(
        self, request: EmailRequest, messages: list[BaseMessage], local: CostTracker
    ) -> Generator[tuple[BaseChatModel, list[BaseMessage]], AIMessage, EmailVariant]:
        """The generate-validate-repair loop, written once for sync and async drivers.

        Yields (model, messages) to call; receives the structured output, or the call's exception
        thrown in, which switches to the offline fallback once when one is configured.
        """
        started = time.perf_counter()
        model, source, fallback_used = self.model, self.source, False
        draft, report, attempts = None, None, 0
        while attempts <= self.max_repairs:
            attempts += 1
            try:
                output = yield model, messages
            except Exception as exc:
                if self.fallback is None or fallback_used or isinstance(exc, CpoError):
                    raise
                model, source, fallback_used = self.fallback, "offline", True
                output = yield model, messages
            draft, error = self._draft(output)
            report = self._report(request, draft, error)
            if report.valid:
                break
            previous = draft.model_dump_json() if draft else str(output.content)
            messages = [*messages, AIMessage(previous), self.prompts.repair(report.reasons)]
        return self._variant(
            request,
            draft,
            report,
            local=local,
            started=started,  # type: ignore[arg-type]
            attempts=attempts,
            source=source,
            fallback_used=fallback_used,
        )

    def _start(self, request: Any, config: RunnableConfig) -> tuple[Generator, RunnableConfig, tuple]:  # type: ignore[type-arg]
        request = request if isinstance(request, EmailRequest) else EmailRequest.model_validate(request)
        local = CostTracker(prices=self.prices)
        steps = self._steps(request, self.prompts.render(request, self.limits), local)
        return steps, self._config(config, local), next(steps)

    def invoke(self, request: Any, config: RunnableConfig) -> EmailVariant:
        steps, sub, step = self._start(request, config)
        while True:
            try:
                output = self._call(*step, sub)
            except Exception as exc:
                try:
                    step = steps.throw(exc)
                except StopIteration as done:
                    return done.value
                continue
            try:
                step = steps.send(output)
            except StopIteration as done:
                return done.value

    async def ainvoke(self, request: Any, config: RunnableConfig) -> EmailVariant:
        steps, sub, step = self._start(request, config)
        while True:
            try:
                output = await self._acall(*step, sub)
            except Exception as exc:
                try:
                    step = steps.throw(exc)
                except StopIteration as done:
                    return done.value
                continue
            try:
                step = steps.send(output)
            except StopIteration as done:
                return done.value

    def _call(self, model: BaseChatModel, messages: list[BaseMessage], config: RunnableConfig) -> AIMessage:
        while True:
            method = self.method
            try:
                return self._bound(model, method).invoke(messages, config)
            except Exception as exc:
                if model is not self.model or not self._refused(exc):
                    raise
                self._next_method(method)

    async def _acall(self, model: BaseChatModel, messages: list[BaseMessage], config: RunnableConfig) -> AIMessage:
        while True:
            method = self.method
            try:
                return await self._bound(model, method).ainvoke(messages, config)
            except Exception as exc:
                if model is not self.model or not self._refused(exc):
                    raise
                self._next_method(method)


def build_email_chain(
    model: BaseChatModel | None = None,
    *,
    prompts_dir: str | Path | None = None,
    max_repairs: int = 2,
    limits: ValidationLimits | None = None,
    settings: Settings | None = None,
    prices: PriceBook | None = None,
    offline_fallback: bool | None = None,
) -> Runnable[EmailRequest, EmailVariant]:
    """A Runnable that turns an EmailRequest into a validated (or honestly invalid) EmailVariant."""
    if max_repairs < 0:
        raise ValueError("max_repairs must be >= 0")
    settings = settings or Settings()
    model = model or build_chat_model(settings)
    source = model_source(model)
    method = settings.structured_output_method
    if method == "auto":
        method = "function_calling" if source == "offline" else "json_schema"
    use_fallback = settings.offline_fallback if offline_fallback is None else offline_fallback
    chain = EmailChain(
        model,
        prompts=PromptSet.load(prompts_dir or settings.prompts_dir),
        limits=limits or ValidationLimits(),
        max_repairs=max_repairs,
        method=method,
        prices=prices or price_book_for(settings),
        fallback=OfflineChatModel() if use_fallback and source != "offline" else None,
    )
    return RunnableLambda(chain.invoke, afunc=chain.ainvoke, name="email")
