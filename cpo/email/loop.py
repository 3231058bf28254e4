"""One email's draft -> validate -> repair loop, as a state object both call styles drive.

The driver (sync or async, `cpo.email.chain`) asks `next_call()` for the model call to make, makes it,
and hands back the reply (`answered`, which returns the checks to trace) or the error (`failed`).
`variant()` is the result. The loop itself makes no call and never waits, so it is the same code for
`invoke` and `ainvoke`, and testable with scripted replies.

Repairs converge instead of repeating:
- each violation goes back with its measured value and the target;
- a repair round rewrites each failing part once: the subject first, then each paragraph holding a
  located problem, or the length; otherwise the whole email;
- an answer that gives back what it was asked to change is not asked for again the same way: the next
  call is varied (temperature, seed) and, for a whole email, starts a fresh conversation.

A draft once paid for is never thrown away: a repair refused by the budget, a deadline, a Ctrl-C or a
failed repair call returns the paid draft marked invalid with the reason.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import openai
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage

from cpo.accounting.tracker import CostTracker
from cpo.core.errors import BudgetExceeded, DeadlineExceeded, Interrupted, UnpricedBudget
from cpo.core.models import (
    Attempt,
    Citation,
    EmailDraft,
    EmailRequest,
    EmailVariant,
    GuidedDraft,
    Normalization,
    Source,
    ValidationIssue,
    ValidationReport,
)
from cpo.email.guided import assemble_checked, read_plan
from cpo.email.methods import StructuredOutput
from cpo.email.normalize import body_as_sent, normalize, paragraphs, word_count
from cpo.email.preheader import WRITTEN as PREHEADER_WRITTEN
from cpo.email.preheader import settled
from cpo.email.prompts import Profile, PromptSet, extend_plan
from cpo.email.repairs import (
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
from cpo.email.replies import judged_issues, read_draft, sentences_of, subject_candidates, tokens_of
from cpo.email.splice_guard import junk_in
from cpo.email.validation import ValidationLimits
from cpo.net.faults import is_transient

# Why a paid draft was kept without its checks passing, by the error that stopped the email.
STOPPED: dict[type[Exception], str] = {
    BudgetExceeded: "budget",
    UnpricedBudget: "budget",
    DeadlineExceeded: "deadline",
    Interrupted: "interrupted",
}


@dataclass(frozen=True)
class Drafting:
    """What every email of one chain is drafted with."""

    prompts: PromptSet
    limits: ValidationLimits
    max_repairs: int
    methods: StructuredOutput
    fallback: BaseChatModel | None
    judge: BaseChatModel | None
    announce_fallback: Callable[[Exception], None]


class EmailLoop:
    """The state of one email between its first draft and its variant."""

    def __init__(self, drafting: Drafting, request: EmailRequest, local: CostTracker) -> None:
        self.d, self.request, self.local = drafting, request, local
        self.started = time.perf_counter()
        self.model: BaseChatModel = drafting.methods.model
        self.source: Source = drafting.methods.source
        self.profile: Profile = self._profile()
        self.base = drafting.prompts.render(request, drafting.limits, self.profile)
        self.fallback_used = False
        self.sent: EmailDraft | None = None  # the email as sent (cpo's greeting and sign-off included)
        self.draft: EmailDraft | None = None  # the model's part, normalized
        self.report: ValidationReport | None = None
        self.changes: list[Normalization] = []
        self.preheader_written: tuple[str, Normalization] | None = None  # the preheader cpo wrote, and its record
        self.valid_raw = False
        self.steps: list[Attempt] = []
        self.seen: set[str] = set()  # fingerprints of every subject ("s:") and paragraph ("p:") the model wrote
        self.attempts = 0
        self.repeated = False
        self.last_text = ""
        self.judged: list[str] = []  # the sentences the judge was shown, numbered as it answers
        self.round_parts: set[str] = set()  # what the current repair round has fixed: "subject", "p1", ...
        self.same_round = False
        self.call: Call | None = None
        self._t0: float | None = None
        self._begin(Call("draft", self.model, self.base, shape=self._shape(), rebase=self._rebase), same_round=False)

    # -- what the driver calls ------------------------------------------------------------------

    def next_call(self) -> Call | None:
        """The model call to make now, or None when the email is finished."""
        if self.call is not None and self._t0 is None:
            self._t0 = time.perf_counter()
        return self.call

    def failed(self, exc: Exception) -> None:
        """The current call raised: ask again (offline fallback), keep the paid draft, or re-raise.

        A refusal of the structured-output method never arrives here: the chain's step asks again by the next
        method (`EmailChain._step`), so it stays one step of the email.
        """
        call = self.call
        assert call is not None
        fallback = self.d.fallback
        if fallback is not None and not self.fallback_used and call.kind != "judge" and is_transient(exc):
            self.d.announce_fallback(exc)
            self.model, self.source, self.fallback_used = fallback, "offline", True
            # The offline drafter writes whole emails from the full prompt only: anything else is asked of it as a
            # fresh email.
            whole = call.kind == "email" and call.shape == "email"
            full = self.d.prompts.render(self.request, self.d.limits, "full")
            self.call = Call(call.step if whole else "fresh", fallback, call.messages if whole else full)
            return
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError) or self.report is None:
            raise exc  # nothing paid for to keep, or a fault that ends the run
        self.steps.append(Attempt(step=call.step, seconds=self._seconds(), error=type(exc).__name__))
        stopped = next((code for kind, code in STOPPED.items() if isinstance(exc, kind)), None)
        if stopped is not None:
            self.attempts -= call.step != "judge" and not self.same_round
            self._keep(stopped, f"repair not made: {exc}")
        else:
            code = "judge_failed" if call.step == "judge" else "repair_failed"
            self._keep(code, f"the {call.name} call failed: {type(exc).__name__}: {exc}".splitlines()[0])
        self.call = None

    def answered(self, reply: AIMessage) -> list[Check]:
        """The current call's reply: read and check it, decide the next call; returns the checks to trace."""
        call = self.call
        assert call is not None
        self.d.methods.worked(call)
        seconds = self._seconds()
        if call.step == "judge":
            checks = self._judged(reply, seconds)
        else:
            checks = self._drafted(call, reply, seconds)
            if self._start_judge():
                return checks
        assert self.report is not None
        if self.report.valid:
            self.call = None
            return checks
        done = self.round_parts if call.kind == "text" and not self.repeated else set()
        following = self._next_call(done)
        # A repair round fixes each failing part once: a subject fix may follow a paragraph fix in the same round.
        same_round = (
            call.kind == "text"
            and following.kind == "text"
            and part_of(following) not in self.round_parts
            and not self.repeated
        )
        if not same_round and self.attempts > self.d.max_repairs:
            self.call = None
        else:
            self._begin(following, same_round)
        return checks

    def variant(self) -> EmailVariant:
        """The finished email: valid, or invalid with its reasons; never a paid draft thrown away."""
        assert self.report is not None and self.call is None
        draft = self.sent
        subject, body = (draft.subject.strip(), draft.body.strip()) if draft else ("", "")
        citations = []
        for cid in dict.fromkeys(draft.citations if draft else []):
            snippet = self.request.snippet(cid)
            if snippet is not None:
                citations.append(
                    Citation(id=snippet.id, title=snippet.title, section=snippet.section, quote=snippet.text)
                )
        models = list(self.local.session.by_model)
        run_ids = list(self.local.runs)
        return EmailVariant(
            variant_id=EmailVariant.make_id(self.request.segment.name, self.request.tone, subject, body),
            segment=self.request.segment.name,
            tone=self.request.tone,
            subject=subject,
            preheader=draft.preheader.strip() if draft else "",
            body=body,
            citations=citations,
            prompt_version=self.d.prompts.version(self.request.tone, self.profile),
            model=models[-1] if models else "<none>",
            usage=self.local.session,
            latency_s=time.perf_counter() - self.started,
            attempts=self.attempts,
            validation=self.report,
            source=self.source,
            fallback_used=self.fallback_used,
            run_id=str(run_ids[0]) if run_ids else None,
            steps=self.steps,
            normalizations=self.changes if draft is not None else [],
            valid_before_normalization=self.valid_raw and self.report.valid,
        )

    # -- the loop's own steps -----------------------------------------------------------------

    def _begin(self, call: Call, same_round: bool) -> None:
        if call.step != "judge" and not same_round:
            self.attempts += 1
            self.round_parts = set()
        self.round_parts.add(part_of(call))
        self.call, self.same_round, self._t0 = call, same_round, None

    def _profile(self) -> Profile:
        """The first prompt's profile for the method in use now; the offline drafter reads the full one only."""
        methods = self.d.methods
        if self.model is not methods.model or methods.source == "offline":
            return "full"
        return self.d.prompts.profile_for(methods.enforced, methods.small_model)

    def _rebase(self, call: Call) -> None:
        """The first draft asked again after a method refusal: in the profile of the method now in use."""
        call.messages, call.shape = self._base(), self._shape()

    def _shape(self) -> str:
        """What a whole-email call asks for in the profile in use: a plan to lay out (guided), or the email."""
        return "plan" if self.profile == "guided" else "email"

    def _base(self) -> list[BaseMessage]:
        """The first prompt in the profile of the method in use now: after a move down from json_schema
        mid-email, the calls that follow get that method's profile (a refused first draft is asked again in it too,
        `_rebase`)."""
        profile = self._profile()
        if profile != self.profile:
            self.profile, self.base = profile, self.d.prompts.render(self.request, self.d.limits, profile)
        return self.base

    def _seconds(self) -> float:
        return time.perf_counter() - self._t0 if self._t0 is not None else 0.0

    def _keep(self, code: str, message: str) -> None:
        """Mark the kept draft invalid with one more issue."""
        assert self.report is not None
        issue = ValidationIssue(code=code, message=message)
        self.report = self.report.model_copy(update={"valid": False, "issues": [*self.report.issues, issue]})

    def _judged(self, reply: AIMessage, seconds: float) -> list[Check]:
        assert self.report is not None and self.sent is not None
        tokens_in, tokens_out = tokens_of(reply)
        issues = judged_issues(reply, self.judged)
        self.steps.append(
            Attempt(
                step="judge",
                input_tokens=tokens_in,
                output_tokens=tokens_out,
                seconds=seconds,
                issues=[i.code for i in issues],
            )
        )
        if not issues:
            return []
        self.report = self.report.model_copy(update={"valid": False, "issues": [*self.report.issues, *issues]})
        return [Check(self.report, self.sent.subject, self.sent.body)]

    def _drafted(self, call: Call, reply: AIMessage, seconds: float) -> list[Check]:
        previous = self.report
        left_out: list[str] = []  # guided choices a check found at fault, left out or moved on (`assemble_checked`)
        if call.kind == "text":
            assert self.draft is not None
            text = str(reply.content or "")
            if reply.response_metadata.get("finish_reason") == "length":
                text = ""  # cut off mid-sentence: not put into the email (asked again, varied)
            if call.step == "subject":
                text = self._best_subject(self.draft, text)
            discarded = junk_in(text, self.request, subject=call.step == "subject")
            if discarded is not None:
                text = ""  # never spliced in: the draft stays as it was, and the next call is varied
            raw: EmailDraft | None = apply_answer(call, self.draft, text)
            error = None
        elif call.shape == "plan":
            plan, error = read_plan(reply)
            if isinstance(plan, GuidedDraft):
                framing = self.d.prompts.framings[self.request.tone]
                raw, left_out = assemble_checked(
                    self.request, plan, self.d.limits, framing, lambda draft: self._assess(draft)[2]
                )
            else:
                raw = None
            discarded = None
        else:
            raw, error = read_draft(reply)
            discarded = None
        before = self.last_text
        self.last_text = str(reply.content or "") or json.dumps([c["args"] for c in reply.tool_calls])
        if raw is None:
            issue = ValidationIssue(code="unparseable", message=error or "", field="reply")
            self.report = ValidationReport(valid=False, issues=[issue])
            # The same unreadable answer again: a rewrite would be the very request just answered, paid for twice.
            self.repeated = self.last_text == before
        else:
            self.draft, self.sent, self.report, self.changes = self._assess(raw)
            if call.shape == "plan":
                # Under guided composition cpo writes every line, the preheader too: that is the assembly, not a change.
                kept = [c for c in self.changes if c.code != PREHEADER_WRITTEN]
                self.changes = [*kept, *(Normalization(code="choice_changed", detail=s) for s in left_out)]
            self.valid_raw = self.report.valid and not self.changes
            self.repeated = not self.report.valid and repeats(call, self.draft, previous, self.seen)
            self.seen.add(f"s:{fingerprint(self.draft.subject)}")
            self.seen.update(f"p:{fingerprint(p)}" for p in paragraphs(self.draft.body))
        tokens_in, tokens_out = tokens_of(reply)
        self.steps.append(
            Attempt(
                step=call.step,
                input_tokens=tokens_in,
                output_tokens=tokens_out,
                seconds=seconds,
                issues=[i.code for i in self.report.issues],
                repeated=self.repeated,
                varied=bool(call.vary),
                discarded=discarded,
            )
        )
        sent = self.sent
        return [Check(self.report, sent.subject if sent else "", sent.body if sent else "")]

    def _start_judge(self) -> bool:
        """A draft that passed the rules goes to the grounding judge, when the chain has one."""
        judge, sent, draft = self.d.judge, self.sent, self.draft
        if judge is None or sent is None or draft is None or self.report is None or not self.report.valid:
            return False
        self.judged = sentences_of(f"{sent.subject}\n\n{draft.body}")
        messages = self.d.prompts.judge(self.request, sent.citations, self.judged)
        self._begin(Call("judge", judge, messages, kind="judge"), self.same_round)
        return True

    def _assess(self, raw: EmailDraft) -> tuple[EmailDraft, EmailDraft, ValidationReport, list[Normalization]]:
        """Normalize, assemble the email as sent (cpo's greeting and sign-off around it), validate; a missing
        or faulted preheader is written by cpo (`cpo.email.preheader`), and stays recorded as cpo's in repairs."""
        clean, changes = normalize(raw)
        sent = clean.model_copy(update={"body": body_as_sent(self.request, clean.body)})
        sent, report, written = settled(sent, self.request, self.d.limits)
        if written is not None:
            self.preheader_written = (sent.preheader, written)
        elif self.preheader_written and self.preheader_written[0] == sent.preheader:
            written = self.preheader_written[1]
        clean = clean.model_copy(update={"preheader": sent.preheader})
        return clean, sent, report, [*changes, *([written] if written else [])]

    def _best_subject(self, draft: EmailDraft, text: str) -> str:
        """The candidate subject that breaks the fewest rules (the first of equals): the model wrote them all."""
        candidates = [c for c in subject_candidates(text) if junk_in(c, self.request, subject=True) is None]
        if not candidates:
            return text  # no clean line: the guard reads the whole answer and discards it

        def broken(subject: str) -> int:
            _, _, report, _ = self._assess(draft.model_copy(update={"subject": subject}))
            return sum(i.field == "subject" for i in report.issues)

        return min(candidates, key=broken)

    def _next_call(self, done: set[str]) -> Call:
        """The cheapest request that can fix what failed, varied when the last answer repeated itself.

        A repair round fixes the subject first (the cheapest and surest call), then the body; `done`
        holds the parts this round already rewrote, so the round moves on to the other part.

        Only the subject failed: rewrite the subject. One paragraph holds every located problem: rewrite
        that paragraph. Only the length failed: add a paragraph, or shorten the longest. Otherwise the
        whole email is rewritten, in the same conversation, or in a fresh one after a repeated answer.
        """
        assert self.report is not None
        request, limits, prompts, model, draft = self.request, self.d.limits, self.d.prompts, self.model, self.draft
        vary = {"temperature": VARIED_TEMPERATURE, "seed": 1000 + self.attempts} if self.repeated else {}
        issues = self.report.issues
        if draft is not None and self.profile != "guided" and not any(i.code in WHOLE_EMAIL for i in issues):
            targeted = self._targeted(draft, done, vary)
            if targeted is not None:
                return targeted
        base = self._base()
        if self.repeated or self.profile == "guided":
            # Choices are asked for again from the start, with what failed: nothing the model wrote is there to edit,
            # and a text repair would put its words into an email of approved text.
            again = prompts.fresh(request, limits, self.report.reasons, self.profile)
            return Call("fresh", model, again, vary=vary, shape=self._shape())
        # Only the latest answer is shown back: a short context is faster, and nothing older to copy.
        previous = draft.model_dump_json() if draft is not None else self.last_text[:4000]
        messages: list[BaseMessage] = [*base, AIMessage(previous), prompts.repair(self.report.reasons)]
        return Call("rewrite", model, messages)

    def _targeted(self, draft: EmailDraft, done: set[str], vary: dict[str, float | int]) -> Call | None:
        """A repair of only the failing part (subject, one paragraph, the length), or None."""
        assert self.report is not None
        request, limits, prompts, model = self.request, self.d.limits, self.d.prompts, self.model
        issues = self.report.issues
        body_issues = [i for i in issues if i.field != "subject"]
        subject_issues = [i for i in issues if i.field == "subject"]
        if subject_issues and "subject" not in done:
            messages = prompts.subject_fix(request, limits, draft.subject, [i.message for i in subject_issues])
            return Call("subject", model, messages, kind="text", vary=vary, max_tokens=SUBJECT_FIX_MAX_TOKENS)
        cited = draft.citations
        parts = paragraphs(draft.body)
        located = [i for i in body_issues if i.code != "body_length"]
        where = {id(i): {j for j, part in enumerate(parts) for e in i.excerpts if e and e in part} for i in located}
        open_at = sorted({j for found in where.values() for j in found} - {int(p[1:]) for p in done if p[:1] == "p"})
        if located and all(where[id(i)] for i in located) and open_at:
            # Each paragraph holding a located problem is rewritten on its own, one per call, in one round.
            index = open_at[0]
            reasons = [i.message for i in located if index in where[id(i)]]
            messages = prompts.paragraph_fix(request, cited, parts[index], reasons)
            return Call(
                "paragraph", model, messages, kind="text", vary=vary, index=index, max_tokens=PARAGRAPH_MAX_TOKENS
            )
        if body_issues and all(i.code == "body_length" for i in body_issues):
            words = word_count(body_as_sent(request, draft.body))
            low, high = limits.body_min_words, limits.body_max_words
            if words < low:
                plan = extend_plan(words, low, high)
                messages = prompts.extend(request, cited, draft.body, words, low, high, plan)
                # A runaway answer is cut and asked again, varied, rather than kept too long.
                return Call("extend", model, messages, kind="text", vary=vary, max_tokens=SENTENCE_MAX_TOKENS * plan[2])
            index = max(range(len(parts)), key=lambda j: len(parts[j].split()))
            messages = prompts.shorten(parts[index], words, limits.body_max_words)
            return Call(
                "shorten", model, messages, kind="text", vary=vary, index=index, max_tokens=PARAGRAPH_MAX_TOKENS
            )
        return None
