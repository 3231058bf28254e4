"""The email chain: prompt -> structured output -> normalize -> validate -> targeted repair.

`build_email_chain(model)` returns an `EmailChain`, a Runnable[EmailRequest, EmailVariant] with typed
input and output schemas. In a LangChain trace one email is one run named for its segment and tone
("email High-Value Recent / urgent"), with a child run per step: each model call ("draft",
"repair: rewrite", "repair: subject", "repair: fresh", "judge") and each "validate" with its report.

Repairs converge instead of repeating:
- the repair request names each violation with its measured value and the target;
- when only the subject failed, only the subject is rewritten (a ~60-token call, not a whole email);
- an answer that repeats an earlier subject or opening paragraph is not asked for again the same way:
  the next attempt starts a fresh conversation with a different temperature and seed.

Each email has a wall-clock deadline (CPO_EMAIL_DEADLINE) covering all its calls, and every call asks
for at most CPO_MAX_OUTPUT_TOKENS. A draft once paid for is never thrown away: a repair refused by the
budget, a deadline, a Ctrl-C or a failed repair call returns the paid draft marked invalid with the reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Generator
from functools import partial
from pathlib import Path
from typing import Any, cast

import openai
from langchain_core.callbacks import BaseCallbackManager
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from langchain_core.runnables.config import ensure_config, patch_config

from cpo.cancel import current_stop
from cpo.chains.normalize import body_as_sent, normalize, paragraphs, word_count
from cpo.chains.repairs import (
    PARAGRAPH_MAX_TOKENS,
    SENTENCE_MAX_TOKENS,
    SUBJECT_FIX_MAX_TOKENS,
    VARIED_TEMPERATURE,
    WHOLE_EMAIL,
    Call,
    Check,
    apply_answer,
    fingerprint,
    part_of,
    repeats,
)
from cpo.chains.replies import judged_issues, read_draft, sentences_of, subject_candidates, tokens_of
from cpo.costs import EMAIL_TAG, CostTracker, price_book_for
from cpo.endpoints import EndpointNotes, endpoint_key, notes_for
from cpo.errors import BudgetExceeded, ConfigError, DeadlineExceeded, Interrupted, UnpricedBudget
from cpo.http import deadline_scope
from cpo.llm import Source, build_chat_model, model_source
from cpo.models import (
    Attempt,
    Citation,
    EmailDraft,
    EmailRequest,
    EmailVariant,
    Normalization,
    ValidationIssue,
    ValidationReport,
)
from cpo.offline import OfflineChatModel
from cpo.pricing import PriceBook
from cpo.prompts import PromptSet, extend_plan
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
JUDGE_MAX_TOKENS = 400
Steps = Generator[Call | Check, Any, EmailVariant]


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
        self.notes = notes or notes_for(None)
        self.endpoint = endpoint_key(model)
        self.remember_method = remember_method
        self.configured_method = method
        remembered = self.notes.get(self.endpoint, "method") if remember_method else None
        self.method = remembered if remembered in (*METHODS_AFTER, "json_mode") else method
        self._lock = threading.Lock()
        self._bound_models: dict[tuple[int, str], Runnable[Any, Any]] = {}
        self._fallback_announced = False

    @property
    def InputType(self) -> type[EmailRequest]:
        return EmailRequest

    @property
    def OutputType(self) -> type[EmailVariant]:
        return EmailVariant

    # -- binding and calling ------------------------------------------------------------------------

    def _bound(self, model: BaseChatModel, kind: str, method: str) -> Runnable[Any, Any]:
        """The model bound for one kind of call; email replies are parsed here, leniently, not by a parser.

        No `with_structured_output(include_raw=True)`: it runs a parallel map per call (two threads),
        and with a pydantic schema the openai SDK itself raises on bad JSON or a `length` finish,
        losing the usage and the chance to repair.
        """
        if model_source(model) == "offline":
            method = "function_calling"
        if kind != "email":
            method = kind
        key = (id(model), method)
        with self._lock:
            if key not in self._bound_models:
                bound: Runnable[Any, Any]
                if method == "text":
                    bound = model  # each plain-text call carries its own max_tokens
                elif method == "judge":
                    bound = model.bind(
                        response_format={"type": "json_object"},
                        max_tokens=min(JUDGE_MAX_TOKENS, self.max_output_tokens),
                    )
                elif method == "json_schema":
                    # Sent as extra_body: the same JSON on the wire, but the openai SDK skips its per-call
                    # type-driven transform of the nested schema (about 1 ms of client CPU per email).
                    bound = model.bind(
                        extra_body={"response_format": JSON_SCHEMA_RESPONSE_FORMAT}, max_tokens=self.max_output_tokens
                    )
                elif method == "function_calling":
                    bound = model.bind_tools([EmailDraft], tool_choice="EmailDraft", max_tokens=self.max_output_tokens)
                else:
                    bound = model.bind(response_format={"type": "json_object"}, max_tokens=self.max_output_tokens)
                self._bound_models[key] = bound
            return self._bound_models[key]

    def _refused(self, exc: Exception, method: str) -> bool:
        """A refusal of the structured-output method by an OpenAI-compatible server, not a fault.

        Never a content filter, never a transient 5xx: only a 400/422, or a 500 that names the format.
        """
        return self.source == "openai-compatible" and method in METHODS_AFTER and refuses_format(exc)

    def _switch_method(self, failed: str, exc: Exception) -> None:
        with self._lock:
            if self.method != failed:
                return
            self.method = METHODS_AFTER[failed]
        log.warning(
            "the endpoint refused structured output by %s (%s); using %s from now on%s",
            failed,
            str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__,
            self.method,
            " (remembered for this endpoint)" if self.notes.path else "",
        )

    def _worked(self, method: str) -> None:
        if self.remember_method and self.source != "offline":
            self.notes.note(self.endpoint, method=method)

    def _prepared(self, call: Call) -> tuple[str, Runnable[Any, Any]]:
        """The method in use and the model bound for this call (its sampling and output limit included)."""
        method = self.method
        bound = self._bound(call.model, call.kind, method)
        extra = {**call.vary, **({"max_tokens": call.max_tokens} if call.max_tokens else {})}
        return method, bound.bind(**extra) if extra else bound

    def _settle_method(self, call: Call, method: str, exc: Exception | None) -> None:
        """After a call: remember the method that worked, or move down on a refusal (else re-raise)."""
        ours = call.kind == "email" and call.model is self.model
        if exc is None:
            if ours:
                self._worked(method)
            return
        if not ours or not self._refused(exc, method):
            raise exc
        self._switch_method(method, exc)

    def _invoke_model(self, call: Call, messages: list[BaseMessage], config: RunnableConfig) -> AIMessage:
        while True:
            method, bound = self._prepared(call)
            try:
                reply = cast(AIMessage, bound.invoke(messages, config))
            except Exception as exc:
                self._settle_method(call, method, exc)
                continue
            self._settle_method(call, method, None)
            return reply

    async def _ainvoke_model(self, call: Call, messages: list[BaseMessage], config: RunnableConfig) -> AIMessage:
        while True:
            method, bound = self._prepared(call)
            try:
                reply = cast(AIMessage, await bound.ainvoke(messages, config))
            except Exception as exc:
                self._settle_method(call, method, exc)
                continue
            self._settle_method(call, method, None)
            return reply

    def probe_method(self, config: RunnableConfig | None = None) -> str:
        """Find the structured-output method that works, from the configured one down; remember it."""
        with self._lock:
            self.method = self.configured_method
        probe: list[BaseMessage] = [
            HumanMessage('Return this JSON object and nothing else: {"subject": "ok", "body": "ok", "citations": []}')
        ]
        self._invoke_model(Call("draft", self.model, probe), probe, ensure_config(config))
        return self.method

    def _step_runnable(self, call: Call) -> Runnable[list[BaseMessage], AIMessage]:
        """The call as its own child run in the trace, named for the step."""
        return RunnableLambda(
            partial(self._invoke_model, call), afunc=partial(self._ainvoke_model, call), name=call.name
        )

    @staticmethod
    def _record_check(check: Check, config: RunnableConfig) -> None:
        def report(_: dict[str, str]) -> dict[str, Any]:
            return check.report.model_dump()

        RunnableLambda(report, name="validate").invoke({"subject": check.subject, "body": check.body}, config)

    # -- reading replies ----------------------------------------------------------------------------

    # -- the loop -----------------------------------------------------------------------------------

    def _assess(
        self, request: EmailRequest, raw: EmailDraft
    ) -> tuple[EmailDraft, EmailDraft, ValidationReport, list[Normalization]]:
        """Normalize, assemble the email as sent (cpo's greeting and sign-off around it), validate."""
        clean, changes = normalize(raw)
        sent = clean.model_copy(update={"body": body_as_sent(request, clean.body)})
        return clean, sent, validate_draft(sent, request, self.limits), changes

    def _best_subject(self, request: EmailRequest, draft: EmailDraft, text: str) -> str:
        """The candidate subject that breaks the fewest rules (the first of equals): the model wrote them all."""
        candidates = subject_candidates(text)
        if not candidates:
            return text

        def broken(subject: str) -> int:
            _, _, report, _ = self._assess(request, draft.model_copy(update={"subject": subject}))
            return sum(i.field == "subject" for i in report.issues)

        return min(candidates, key=broken)

    def _steps(self, request: EmailRequest, local: CostTracker) -> Steps:
        """The draft-validate-repair loop, written once for sync and async drivers.

        Yields a Call (receives the reply, or the call's exception thrown in) or a Check (to trace).
        """
        started = time.perf_counter()
        base = self.prompts.render(request, self.limits)
        model, fallback_used = self.model, False
        source: Source = self.source
        call = Call("draft", model, base)
        sent: EmailDraft | None = None  # the email as sent (cpo's greeting and sign-off included)
        model_draft: EmailDraft | None = None  # the model's part, normalized
        report: ValidationReport | None = None
        changes: list[Normalization] = []
        valid_raw = False
        log_: list[Attempt] = []
        seen: set[str] = set()  # fingerprints of every subject ("s:") and paragraph ("p:") the model wrote
        attempts = 0
        repeated = False
        last_text = ""
        judged: list[str] = []  # the sentences the judge was shown, numbered as it answers

        def keep(code: str, message: str) -> None:
            nonlocal report
            assert report is not None
            issue = ValidationIssue(code=code, message=message)
            report = report.model_copy(update={"valid": False, "issues": [*report.issues, issue]})

        round_parts: set[str] = set()  # what the current repair round has fixed: "subject", "body"
        same_round = False
        while True:
            if call.step != "judge" and not same_round:
                attempts += 1
                round_parts = set()
            round_parts.add(part_of(call))
            t0 = time.perf_counter()
            try:
                try:
                    reply = yield call
                except Exception as exc:
                    if self.fallback is None or fallback_used or call.kind == "judge" or not is_transient(exc):
                        raise
                    self._announce_fallback(exc)
                    model, source, fallback_used = self.fallback, "offline", True
                    call = Call(call.step, model, call.messages, call.kind)
                    reply = yield call
            except STOPPERS as stop:
                if report is None:
                    raise
                log_.append(Attempt(step=call.step, seconds=time.perf_counter() - t0, error=type(stop).__name__))
                attempts -= call.step != "judge" and not same_round
                code = next(code for kind, code in STOPPED.items() if isinstance(stop, kind))
                keep(code, f"repair not made: {stop}")
                break
            except (openai.AuthenticationError, openai.PermissionDeniedError):
                raise
            except Exception as exc:
                if report is None:
                    raise
                log_.append(Attempt(step=call.step, seconds=time.perf_counter() - t0, error=type(exc).__name__))
                code = "judge_failed" if call.step == "judge" else "repair_failed"
                keep(code, f"the {call.name} call failed: {type(exc).__name__}: {exc}".splitlines()[0])
                break
            seconds = time.perf_counter() - t0
            tokens_in, tokens_out = tokens_of(reply)

            if call.step == "judge":
                assert report is not None and sent is not None
                issues = judged_issues(reply, judged)
                log_.append(
                    Attempt(
                        step="judge",
                        input_tokens=tokens_in,
                        output_tokens=tokens_out,
                        seconds=seconds,
                        issues=[i.code for i in issues],
                    )
                )
                if issues:
                    report = report.model_copy(update={"valid": False, "issues": [*report.issues, *issues]})
                    yield Check(report, sent.subject, sent.body)
            else:
                previous = report
                if call.kind == "text":
                    assert model_draft is not None
                    text = str(reply.content or "")
                    if reply.response_metadata.get("finish_reason") == "length":
                        text = ""  # cut off mid-sentence: not put into the email (asked again, varied)
                    if call.step == "subject":
                        text = self._best_subject(request, model_draft, text)
                    raw: EmailDraft | None = apply_answer(call, model_draft, text)
                    error = None
                else:
                    raw, error = read_draft(reply)
                last_text = str(reply.content or "") or json.dumps([c["args"] for c in reply.tool_calls])
                if raw is None:
                    report = ValidationReport(
                        valid=False, issues=[ValidationIssue(code="unparseable", message=error or "", field="reply")]
                    )
                    repeated = False
                else:
                    model_draft, sent, report, changes = self._assess(request, raw)
                    valid_raw = report.valid and not changes
                    repeated = not report.valid and repeats(call, model_draft, previous, seen)
                    seen.add(f"s:{fingerprint(model_draft.subject)}")
                    seen.update(f"p:{fingerprint(p)}" for p in paragraphs(model_draft.body))
                log_.append(
                    Attempt(
                        step=call.step,
                        input_tokens=tokens_in,
                        output_tokens=tokens_out,
                        seconds=seconds,
                        issues=[i.code for i in report.issues],
                        repeated=repeated,
                        varied=bool(call.vary),
                    )
                )
                yield Check(report, sent.subject if sent else "", sent.body if sent else "")
                if report.valid and self.judge is not None and sent is not None and model_draft is not None:
                    judged = sentences_of(f"{sent.subject}\n\n{model_draft.body}")
                    call = Call("judge", self.judge, self.prompts.judge(request, sent.citations, judged), kind="judge")
                    continue

            if report.valid:
                break
            done = round_parts if call.kind == "text" and not repeated else set()
            following = self._next_call(
                request, base, model, model_draft, last_text, report, repeated, attempts, done=done
            )
            # A repair round fixes each failing part once: a subject fix may follow a paragraph fix in the same round.
            same_round = (
                call.kind == "text"
                and following.kind == "text"
                and part_of(following) not in round_parts
                and not repeated
            )
            if not same_round and attempts > self.max_repairs:
                break
            call = following

        assert report is not None
        return self._variant(
            request,
            sent,
            report,
            local=local,
            started=started,
            attempts=attempts,
            source=source,
            fallback_used=fallback_used,
            steps=log_,
            changes=changes if sent is not None else [],
            valid_raw=valid_raw and report.valid,
        )

    def _next_call(
        self,
        request: EmailRequest,
        base: list[BaseMessage],
        model: BaseChatModel,
        draft: EmailDraft | None,
        last_text: str,
        report: ValidationReport,
        repeated: bool,
        attempts: int,
        done: set[str] | None = None,
    ) -> Call:
        """The cheapest request that can fix what failed, varied when the last answer repeated itself.

        A repair round fixes the subject first (the cheapest and surest call), then the body; `done`
        holds the parts this round already rewrote, so the round moves on to the other part.

        Only the subject failed: rewrite the subject. One paragraph holds every located problem: rewrite
        that paragraph. Only the length failed: add a paragraph, or shorten the longest. Otherwise the
        whole email is rewritten, in the same conversation, or in a fresh one after a repeated answer.
        """
        vary = {"temperature": VARIED_TEMPERATURE, "seed": 1000 + attempts} if repeated else {}
        issues = report.issues
        if draft is not None and not any(i.code in WHOLE_EMAIL for i in issues):
            body_issues = [i for i in issues if i.field != "subject"]
            subject_issues = [i for i in issues if i.field == "subject"]
            if subject_issues and "subject" not in (done or set()):
                messages = self.prompts.subject_fix(
                    request, self.limits, draft.subject, [i.message for i in subject_issues]
                )
                return Call("subject", model, messages, kind="text", vary=vary, max_tokens=SUBJECT_FIX_MAX_TOKENS)
            cited = draft.citations
            parts = paragraphs(draft.body)
            located = [i for i in body_issues if i.code != "body_length"]
            where = {id(i): {j for j, part in enumerate(parts) for e in i.excerpts if e and e in part} for i in located}
            open_at = sorted(
                {j for found in where.values() for j in found} - {int(p[1:]) for p in done or () if p[:1] == "p"}
            )
            if located and all(where[id(i)] for i in located) and open_at:
                # Each paragraph holding a located problem is rewritten on its own, one per call, in one round.
                index = open_at[0]
                reasons = [i.message for i in located if index in where[id(i)]]
                messages = self.prompts.paragraph_fix(request, cited, parts[index], reasons)
                return Call(
                    "paragraph", model, messages, kind="text", vary=vary, index=index, max_tokens=PARAGRAPH_MAX_TOKENS
                )
            if body_issues and all(i.code == "body_length" for i in body_issues):
                words = word_count(body_as_sent(request, draft.body))
                low, high = self.limits.body_min_words, self.limits.body_max_words
                if words < low:
                    plan = extend_plan(words, low, high)
                    messages = self.prompts.extend(request, cited, draft.body, words, low, high, plan)
                    # A runaway answer is cut and asked again, varied, rather than kept too long.
                    limit = SENTENCE_MAX_TOKENS * plan[2]
                    return Call("extend", model, messages, kind="text", vary=vary, max_tokens=limit)
                index = max(range(len(parts)), key=lambda j: len(parts[j].split()))
                messages = self.prompts.shorten(parts[index], words, self.limits.body_max_words)
                return Call(
                    "shorten", model, messages, kind="text", vary=vary, index=index, max_tokens=PARAGRAPH_MAX_TOKENS
                )
        if repeated:
            return Call("fresh", model, self.prompts.fresh(request, self.limits, report.reasons), vary=vary)
        # Only the latest answer is shown back: a short context is faster, and nothing older to copy.
        previous = draft.model_dump_json() if draft is not None else last_text[:4000]
        return Call("rewrite", model, [*base, AIMessage(previous), self.prompts.repair(report.reasons)])

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
        steps: list[Attempt],
        changes: list[Normalization],
        valid_raw: bool,
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
            steps=steps,
            normalizations=changes,
            valid_before_normalization=valid_raw,
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

    # -- Runnable -----------------------------------------------------------------------------------

    def _prepare(self, request: Any, config: RunnableConfig | None) -> tuple[EmailRequest, CostTracker, RunnableConfig]:
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

    @staticmethod
    def _advance(steps: Steps, sent: Any = None, error: BaseException | None = None) -> Call | Check | EmailVariant:
        """The next thing the loop wants, or the finished variant; an error it does not handle propagates."""
        try:
            if error is not None:
                return steps.throw(error)
            return next(steps) if sent is None else steps.send(sent)
        except StopIteration as done:
            return cast(EmailVariant, done.value)

    @staticmethod
    def _owned(variant: EmailVariant, run_manager: Any) -> EmailVariant:
        """The email's run id is its own run's, also when it runs inside a larger run (a campaign graph)."""
        if run_manager is None:
            return variant
        return variant.model_copy(update={"run_id": str(run_manager.run_id)})

    def _drive(
        self, request: EmailRequest, local: CostTracker, config: RunnableConfig, run_manager: Any = None
    ) -> EmailVariant:
        steps = self._steps(request, local)
        with deadline_scope(self.deadline_s):
            step = self._advance(steps)
            while not isinstance(step, EmailVariant):
                if isinstance(step, Check):
                    self._record_check(step, config)
                    step = self._advance(steps)
                    continue
                try:
                    reply = self._step_runnable(step).invoke(step.messages, config)
                except Exception as exc:
                    step = self._advance(steps, error=exc)
                    continue
                step = self._advance(steps, reply)
            return self._owned(step, run_manager)

    async def _adrive(
        self, request: EmailRequest, local: CostTracker, config: RunnableConfig, run_manager: Any = None
    ) -> EmailVariant:
        steps = self._steps(request, local)
        stop = current_stop.get()
        with deadline_scope(self.deadline_s):
            step = self._advance(steps)
            while not isinstance(step, EmailVariant):
                if isinstance(step, Check):
                    self._record_check(step, config)
                    step = self._advance(steps)
                    continue
                try:
                    call = self._step_runnable(step).ainvoke(step.messages, config)
                    reply = await (call if stop is None else stop.run(call))
                except asyncio.CancelledError:
                    if stop is None or not stop.stopped_this():
                        raise
                    step = self._advance(steps, error=Interrupted("interrupted (Ctrl-C)"))
                    continue
                except Exception as exc:
                    step = self._advance(steps, error=exc)
                    continue
                step = self._advance(steps, reply)
            return self._owned(step, run_manager)

    def invoke(
        self, input: EmailRequest | dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> EmailVariant:
        request, local, config = self._prepare(input, config)
        return self._call_with_config(partial(self._drive, local=local), request, config)

    async def ainvoke(
        self, input: EmailRequest | dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> EmailVariant:
        request, local, config = self._prepare(input, config)
        return await self._acall_with_config(partial(self._adrive, local=local), request, config)


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
    to the email. `notes` keeps what was learned about the endpoint (see `cpo.endpoints`).
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
        prompts=PromptSet.load(prompts_dir or settings.prompts_dir),
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
