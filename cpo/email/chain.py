"""The email chain: prompt -> structured output -> normalize -> validate -> targeted repair.

`build_email_chain(model)` returns an `EmailChain`, a Runnable[EmailRequest, EmailVariant] with typed
input and output schemas. In a LangChain trace one email is one run named for its segment and tone
("email High-Value Recent / urgent"), with a child run per step: each model call ("draft",
"repair: rewrite", "repair: subject", "repair: fresh", "judge") and each "validate" with its report.

The loop is `cpo.email.loop.EmailLoop`; this module drives it. `_drive` and `_adrive` are the one pair
of twins: they differ only in how a call is awaited (and in the async one, Ctrl-C through the runner's
`StopSignal`). Each email has a wall-clock deadline (CPO_EMAIL_DEADLINE) covering all its calls, and
every call asks for at most CPO_MAX_OUTPUT_TOKENS.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from functools import partial
from pathlib import Path
from typing import Any, cast

from langchain_core.callbacks import BaseCallbackManager
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from langchain_core.runnables.config import ensure_config, patch_config

from cpo.accounting.pricing import PriceBook, price_book_for
from cpo.accounting.tracker import EMAIL_TAG, CostTracker
from cpo.core.cancel import StopSignal, current_stop
from cpo.core.deadlines import deadline_scope
from cpo.core.errors import ConfigError, Interrupted
from cpo.core.models import EmailRequest, EmailVariant
from cpo.core.settings import Settings
from cpo.email.loop import Drafting, EmailLoop
from cpo.email.methods import StructuredOutput
from cpo.email.prompts import PromptSet
from cpo.email.repairs import Call, Check
from cpo.email.validation import ValidationLimits
from cpo.llm.endpoints import EndpointNotes, notes_for
from cpo.llm.factory import build_chat_model, model_source
from cpo.llm.offline import OfflineChatModel
from cpo.net.faults import brief

log = logging.getLogger(__name__)


class EmailChain(Runnable[EmailRequest, EmailVariant]):
    """Holds what is shared across invocations: model, prompts, limits, price book, method choice."""

    name = "email"

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
        judge: BaseChatModel | None = None,
        notes: EndpointNotes | None = None,
        remember_method: bool = True,
    ) -> None:
        self.model, self.prompts, self.limits, self.max_repairs = model, prompts, limits, max_repairs
        self.prices, self.fallback, self.judge = prices, fallback, judge
        self.max_output_tokens, self.deadline_s = max_output_tokens, deadline_s
        self.source = model_source(model)
        self.methods = StructuredOutput(
            model,
            method=method,
            notes=notes or notes_for(None),
            remember=remember_method,
            max_output_tokens=max_output_tokens,
        )
        self._lock = threading.Lock()
        self._fallback_announced = False

    @property
    def InputType(self) -> type[EmailRequest]:
        return EmailRequest

    @property
    def OutputType(self) -> type[EmailVariant]:
        return EmailVariant

    @property
    def method(self) -> str:
        """The structured-output method in use now."""
        return self.methods.method

    @property
    def remember_method(self) -> bool:
        return self.methods.remember

    @property
    def notes(self) -> EndpointNotes:
        return self.methods.notes

    def drafting(self) -> Drafting:
        """What this chain's emails are drafted with, as its attributes say now (they may be changed)."""
        return Drafting(
            prompts=self.prompts,
            limits=self.limits,
            max_repairs=self.max_repairs,
            methods=self.methods,
            fallback=self.fallback,
            judge=self.judge,
            announce_fallback=self._announce_fallback,
        )

    def probe_method(self, config: RunnableConfig | None = None) -> str:
        """Find the structured-output method that works, from the configured one down; remember it."""
        return self.methods.probe(config)

    def _announce_fallback(self, exc: Exception) -> None:
        """One log line per chain when the offline fallback first engages, naming the fault."""
        with self._lock:
            first, self._fallback_announced = not self._fallback_announced, True
        if first:
            log.warning(
                "the endpoint kept failing (%s); using the offline drafting model for such emails "
                "(CPO_OFFLINE_FALLBACK), marked fallback_used",
                brief(exc, 160),
            )

    # -- one call, one check: their own runs in the trace ----------------------------------------

    def _step(self, call: Call) -> Runnable[list[BaseMessage], AIMessage]:
        """The call as its own child run in the trace, named for the step, sent by the method in use.

        A refusal of the structured-output method is asked again inside the same step run, by the next method.
        """
        methods = self.methods

        def send(messages: list[BaseMessage], config: RunnableConfig) -> AIMessage:
            while True:
                try:
                    return cast(AIMessage, methods.prepared(call).invoke(messages, config))
                except Exception as exc:
                    if not methods.refused(call, exc):
                        raise
                    messages = _rebased(call, messages)

        async def asend(messages: list[BaseMessage], config: RunnableConfig) -> AIMessage:
            while True:
                try:
                    return cast(AIMessage, await methods.prepared(call).ainvoke(messages, config))
                except Exception as exc:
                    if not methods.refused(call, exc):
                        raise
                    messages = _rebased(call, messages)

        return RunnableLambda(send, afunc=asend, name=call.name)

    @staticmethod
    def _trace(checks: list[Check], config: RunnableConfig) -> None:
        for check in checks:

            def report(_: dict[str, str], check: Check = check) -> dict[str, Any]:
                return check.report.model_dump()

            RunnableLambda(report, name="validate").invoke({"subject": check.subject, "body": check.body}, config)

    # -- the drivers ------------------------------------------------------------------------------

    def _drive(self, request: EmailRequest, local: CostTracker, config: RunnableConfig, run_manager: Any) -> Any:
        loop = EmailLoop(self.drafting(), request, local)
        with deadline_scope(self.deadline_s):
            while (call := loop.next_call()) is not None:
                try:
                    reply = self._step(call).invoke(call.messages, config)
                except Exception as exc:
                    loop.failed(exc)
                else:
                    self._trace(loop.answered(reply), config)
        return _owned(loop.variant(), run_manager)

    async def _adrive(self, request: EmailRequest, local: CostTracker, config: RunnableConfig, run_manager: Any) -> Any:
        loop = EmailLoop(self.drafting(), request, local)
        stop = current_stop.get()
        with deadline_scope(self.deadline_s):
            while (call := loop.next_call()) is not None:
                try:
                    reply = await _stoppable(self._step(call).ainvoke(call.messages, config), stop)
                except asyncio.CancelledError:
                    if stop is None or not stop.stopped_this():
                        raise
                    loop.failed(Interrupted("interrupted (Ctrl-C)"))
                except Exception as exc:
                    loop.failed(exc)
                else:
                    self._trace(loop.answered(reply), config)
        return _owned(loop.variant(), run_manager)

    # -- Runnable ---------------------------------------------------------------------------------

    def _prepare(self, request: Any, config: RunnableConfig | None) -> tuple[EmailRequest, CostTracker, RunnableConfig]:
        """The request, a tracker of this email's own usage, and the config that names and tags its run."""
        request = request if isinstance(request, EmailRequest) else EmailRequest.model_validate(request)
        local = CostTracker(prices=self.prices)
        config = ensure_config(config)
        callbacks: Any = config.get("callbacks")
        if isinstance(callbacks, BaseCallbackManager):
            callbacks = callbacks.copy()
            callbacks.add_handler(local, inherit=True)
        else:
            callbacks = [*(callbacks or []), local]
        name = config.get("run_name") or f"email {request.segment.name} / {request.tone}"
        config = patch_config(config, callbacks=callbacks, run_name=name)
        config["tags"] = [*config.get("tags", []), EMAIL_TAG]
        return request, local, config

    def _email_run(self, local: CostTracker) -> RunnableLambda[EmailRequest, EmailVariant]:
        """The email as one run of its own in the trace (the chain's steps are its children)."""
        return RunnableLambda(partial(self._drive, local=local), afunc=partial(self._adrive, local=local))

    def invoke(
        self, input: EmailRequest | dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> EmailVariant:
        request, local, config = self._prepare(input, config)
        return self._email_run(local).invoke(request, config)

    async def ainvoke(
        self, input: EmailRequest | dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> EmailVariant:
        request, local, config = self._prepare(input, config)
        return await self._email_run(local).ainvoke(request, config)


def _rebased(call: Call, messages: list[BaseMessage]) -> list[BaseMessage]:
    """The messages to ask again with after a refusal: a first prompt re-rendered for the new method."""
    if call.rebase is None:
        return messages
    call.rebase(call)
    return call.messages


def _owned(variant: EmailVariant, run_manager: Any) -> EmailVariant:
    """The email's run id is its own run's, also when it runs inside a larger run (a campaign graph)."""
    if run_manager is None:
        return variant
    return variant.model_copy(update={"run_id": str(run_manager.run_id)})


async def _stoppable(call: Coroutine[Any, Any, AIMessage], stop: StopSignal | None) -> AIMessage:
    """Await a model call, as a child task the runner's Ctrl-C can cancel when there is a runner."""
    if stop is None:
        return await call
    return await stop.run(call)


def build_email_chain(
    model: BaseChatModel | None = None,
    *,
    prompts_dir: str | Path | None = None,
    max_repairs: int = 2,
    limits: ValidationLimits | None = None,
    settings: Settings | None = None,
    prices: PriceBook | None = None,
    offline_fallback: bool | None = None,
    judge: BaseChatModel | bool = False,
    notes: EndpointNotes | None = None,
) -> EmailChain:
    """A Runnable that turns an EmailRequest into a validated (or honestly invalid) EmailVariant.

    `judge=True` checks each sentence of a draft that passed the rules with the same model (or pass a
    model); its unsupported sentences are repaired like any other violation, and its calls are billed
    to the email. `notes` keeps what was learned about the endpoint (see `cpo.llm.endpoints`).
    """
    if max_repairs < 0:
        raise ValueError("max_repairs must be >= 0")
    settings = settings or Settings()
    model = model or build_chat_model(settings)
    source = model_source(model)
    configured = settings.structured_output_method
    method = configured
    if method == "auto":
        method = "function_calling" if source == "offline" else "json_schema"
    judge_model = model if judge is True else (judge or None)
    if judge_model is not None and model_source(judge_model) == "offline":
        raise ConfigError("the offline drafting model cannot judge grounding; configure an endpoint to use --judge")
    if notes is None:
        ledger = settings.ledger_requested
        notes = notes_for(ledger.parent / "endpoints.json" if ledger is not None else None)
    use_fallback = settings.offline_fallback if offline_fallback is None else offline_fallback
    return EmailChain(
        model,
        prompts=PromptSet.load(prompts_dir or settings.prompts_dir, settings.prompt_profile),
        limits=limits or ValidationLimits(),
        max_repairs=max_repairs,
        method=method,
        prices=prices or price_book_for(settings),
        fallback=OfflineChatModel() if use_fallback and source != "offline" else None,
        max_output_tokens=settings.max_output_tokens,
        deadline_s=settings.email_deadline,
        judge=judge_model,
        notes=notes,
        remember_method=configured == "auto",
    )
