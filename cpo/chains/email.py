"""The email chain: prompt -> structured output -> validate -> repair, one run per email.

`build_email_chain(model)` returns a Runnable[EmailRequest, EmailVariant]. Each invocation is one
root run for a CostTracker passed in `config["callbacks"]`; the variant also carries its own usage,
counted by a CostTracker attached to that invocation only (the same code path, never a second one).

Each email has a wall-clock deadline (CPO_EMAIL_DEADLINE) covering all its attempts, repairs and
fallbacks, and every call asks for at most CPO_MAX_OUTPUT_TOKENS. Once a draft has been paid for it
is never thrown away: a repair refused by the budget, a deadline or a Ctrl-C returns the paid draft
marked invalid with the reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any, cast

import openai
from langchain_core.callbacks import BaseCallbackManager
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from langchain_core.runnables.config import patch_config
from pydantic import ValidationError

from cpo.cancel import current_stop
from cpo.costs import CostTracker, price_book_for
from cpo.errors import BudgetExceeded, DeadlineExceeded, Interrupted, UnpricedBudget
from cpo.http import deadline_scope
from cpo.llm import Source, build_chat_model, model_source
from cpo.models import Citation, EmailDraft, EmailRequest, EmailVariant, ValidationIssue, ValidationReport
from cpo.offline import OfflineChatModel
from cpo.pricing import PriceBook
from cpo.prompts import PromptSet
from cpo.retries import is_transient, refuses_format
from cpo.settings import Settings
from cpo.validation import ValidationLimits, validate_draft

log = logging.getLogger(__name__)

EMAIL_DRAFT_JSON_SCHEMA = {
    "name": "EmailDraft",
    "schema": openai.pydantic_function_tool(EmailDraft)["function"]["parameters"],
    "strict": True,
}
JSON_SCHEMA_RESPONSE_FORMAT = {"type": "json_schema", "json_schema": EMAIL_DRAFT_JSON_SCHEMA}
METHODS_AFTER = {"json_schema": "function_calling", "function_calling": "json_mode"}
# Why a paid draft was kept without its checks passing, by the error that stopped the email.
STOPPED: dict[type[Exception], str] = {
    BudgetExceeded: "budget",
    UnpricedBudget: "budget",
    DeadlineExceeded: "deadline",
    Interrupted: "interrupted",
}
STOPPERS = tuple(STOPPED)
Step = tuple[BaseChatModel, list[BaseMessage]]
Steps = Generator[Step, AIMessage, EmailVariant]


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
        max_output_tokens: int,
        deadline_s: float,
    ) -> None:
        self.model, self.prompts, self.limits, self.max_repairs = model, prompts, limits, max_repairs
        self.prices, self.fallback = prices, fallback
        self.max_output_tokens, self.deadline_s = max_output_tokens, deadline_s
        self.source = model_source(model)
        self.method = method
        self._lock = threading.Lock()
        self._bound_models: dict[tuple[int, str], Runnable[Any, Any]] = {}
        self._fallback_announced = False

    def _bound(self, model: BaseChatModel, method: str) -> Runnable[Any, Any]:
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
                limit = {"max_tokens": self.max_output_tokens}
                bound: Runnable[Any, Any]
                if method == "json_schema":
                    # Sent as extra_body: the same JSON on the wire, but the openai SDK skips its per-call
                    # type-driven transform of the nested schema (about 1 ms of client CPU per email).
                    bound = model.bind(extra_body={"response_format": JSON_SCHEMA_RESPONSE_FORMAT}, **limit)
                elif method == "function_calling":
                    bound = model.bind_tools([EmailDraft], tool_choice="EmailDraft", **limit)
                else:
                    bound = model.bind(response_format={"type": "json_object"}, **limit)
                self._bound_models[key] = bound
            return self._bound_models[key]

    def _refused(self, exc: Exception) -> bool:
        """A refusal of the structured-output method by an OpenAI-compatible server, not a fault.

        Never a content filter, never a transient 5xx: only a 400/422, or a 500 that names the format.
        """
        return self.source == "openai-compatible" and self.method in METHODS_AFTER and refuses_format(exc)

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
        callbacks: Any = config.get("callbacks")
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
        source: Source,
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
            run_id=str(run_ids[0]) if run_ids else None,
        )

    def _steps(self, request: EmailRequest, messages: list[BaseMessage], local: CostTracker) -> Steps:
        """The generate-validate-repair loop, written once for sync and async drivers.

        Yields (model, messages) to call; receives the reply, or the call's exception thrown in. A
        transient failure (retries exhausted) switches to the offline fallback once, when configured.
        A budget refusal, a deadline or an interruption after a paid reply returns that reply's draft,
        marked invalid with the reason; before any paid reply, it raises.
        """
        started = time.perf_counter()
        model, fallback_used = self.model, False
        source: Source = self.source
        draft: EmailDraft | None = None
        report: ValidationReport | None = None
        attempts = 0
        while attempts <= self.max_repairs:
            attempts += 1
            try:
                try:
                    output = yield model, messages
                except Exception as exc:
                    if self.fallback is None or fallback_used or not is_transient(exc):
                        raise
                    self._announce_fallback(exc)
                    model, source, fallback_used = self.fallback, "offline", True
                    output = yield model, messages
            except STOPPERS as stop:
                if report is None:
                    raise
                attempts -= 1
                code = next(code for kind, code in STOPPED.items() if isinstance(stop, kind))
                report = report.model_copy(
                    update={
                        "valid": False,
                        "issues": [*report.issues, ValidationIssue(code=code, message=f"repair not made: {stop}")],
                    }
                )
                break
            draft, error = self._draft(output)
            report = self._report(request, draft, error)
            if report.valid:
                break
            previous = draft.model_dump_json() if draft else str(output.content)
            messages = [*messages, AIMessage(previous), self.prompts.repair(report.reasons)]
        assert report is not None
        return self._variant(
            request,
            draft,
            report,
            local=local,
            started=started,
            attempts=attempts,
            source=source,
            fallback_used=fallback_used,
        )

    def _announce_fallback(self, exc: Exception) -> None:
        """One log line per chain when the offline fallback first engages, naming the fault."""
        with self._lock:
            first, self._fallback_announced = not self._fallback_announced, True
        if first:
            brief = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            log.warning(
                "the endpoint kept failing (%s: %s); using the offline drafting model for such emails "
                "(CPO_OFFLINE_FALLBACK), marked fallback_used",
                type(exc).__name__,
                brief,
            )

    def _start(self, request: Any, config: RunnableConfig) -> tuple[Steps, RunnableConfig]:
        request = request if isinstance(request, EmailRequest) else EmailRequest.model_validate(request)
        local = CostTracker(prices=self.prices)
        steps = self._steps(request, self.prompts.render(request, self.limits), local)
        return steps, self._config(config, local)

    @staticmethod
    def _advance(
        steps: Steps, output: AIMessage | None = None, error: BaseException | None = None
    ) -> Step | EmailVariant:
        """The next call the loop wants, or the finished variant; an error it does not handle propagates."""
        try:
            if error is not None:
                return steps.throw(error)
            return next(steps) if output is None else steps.send(output)
        except StopIteration as done:
            return cast(EmailVariant, done.value)

    def invoke(self, request: Any, config: RunnableConfig) -> EmailVariant:
        steps, sub = self._start(request, config)
        with deadline_scope(self.deadline_s):
            step = self._advance(steps)
            while not isinstance(step, EmailVariant):
                try:
                    output = self._call(*step, sub)
                except Exception as exc:
                    step = self._advance(steps, error=exc)
                    continue
                step = self._advance(steps, output)
            return step

    async def ainvoke(self, request: Any, config: RunnableConfig) -> EmailVariant:
        steps, sub = self._start(request, config)
        stop = current_stop.get()
        with deadline_scope(self.deadline_s):
            step = self._advance(steps)
            while not isinstance(step, EmailVariant):
                try:
                    call = self._acall(*step, sub)
                    output = await (call if stop is None else stop.run(call))
                except asyncio.CancelledError:
                    if stop is None or not stop.stopped_this():
                        raise
                    step = self._advance(steps, error=Interrupted("interrupted (Ctrl-C)"))
                    continue
                except Exception as exc:
                    step = self._advance(steps, error=exc)
                    continue
                step = self._advance(steps, output)
            return step

    def _call(self, model: BaseChatModel, messages: list[BaseMessage], config: RunnableConfig) -> AIMessage:
        while True:
            method = self.method
            try:
                return cast(AIMessage, self._bound(model, method).invoke(messages, config))
            except Exception as exc:
                if model is not self.model or not self._refused(exc):
                    raise
                self._next_method(method)

    async def _acall(self, model: BaseChatModel, messages: list[BaseMessage], config: RunnableConfig) -> AIMessage:
        while True:
            method = self.method
            try:
                return cast(AIMessage, await self._bound(model, method).ainvoke(messages, config))
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
        max_output_tokens=settings.max_output_tokens,
        deadline_s=settings.email_deadline,
    )
    return RunnableLambda(chain.invoke, afunc=chain.ainvoke, name="email")
