"""Unit tests of `EmailLoop`, the state object both email drivers (sync and async) step through.

The chain tests (`test_email_chain.py`, `test_repairs.py`) reach the loop through a model and a server;
these build a `Drafting` and an `EmailLoop` directly and hand back scripted replies, so each decision of
the loop (which call comes next, when it stops, what `attempts` counts, what `failed` keeps or
re-raises) is checked on its own, with no HTTP and no driver in between.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx2
import openai
import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_openai import ChatOpenAI

from cpo.accounting.tracker import CostTracker
from cpo.core.errors import BudgetExceeded, DeadlineExceeded, Interrupted
from cpo.email.content import ContentBundle
from cpo.email.loop import Drafting, EmailLoop
from cpo.email.methods import StructuredOutput
from cpo.email.normalize import body_as_sent, paragraphs
from cpo.email.prompts import PromptSet
from cpo.email.repairs import PARAGRAPH_MAX_TOKENS, SUBJECT_FIX_MAX_TOKENS, VARIED_TEMPERATURE, Call
from cpo.email.validation import ValidationLimits
from cpo.llm.endpoints import EndpointNotes
from cpo.llm.offline import OfflineChatModel, draft_email, read_brief

REQUEST = ContentBundle.load().request("High-Value Recent", "friendly")
PROMPTS = PromptSet.load()
LONG_SUBJECT = "A thank-you for our Gold members, with an upgrade offer made just for you"  # 74 characters
GOOD_SUBJECT = "Your Gold upgrade offer"
UNBACKED = "Here is something we think you will like, for just $12."  # no snippet states $12
HTTP_REQUEST = httpx2.Request("POST", "http://x")


# -- helpers -------------------------------------------------------------------------------------------


def openai_compatible() -> ChatOpenAI:
    """An OpenAI-compatible model; never called (the loop only builds calls)."""
    return ChatOpenAI(model="m", base_url="http://127.0.0.1:9/v1", api_key="k")  # type: ignore[call-arg]


def make_loop(
    model: BaseChatModel | None = None,
    *,
    method: str = "function_calling",
    max_repairs: int = 2,
    fallback: BaseChatModel | None = None,
    announce: Callable[[Exception], None] = lambda exc: None,
) -> EmailLoop:
    methods = StructuredOutput(
        model or OfflineChatModel(), method=method, notes=EndpointNotes(), remember=False, max_output_tokens=1000
    )
    drafting = Drafting(
        prompts=PROMPTS,
        limits=ValidationLimits(),
        max_repairs=max_repairs,
        methods=methods,
        fallback=fallback,
        judge=None,
        announce_fallback=announce,
    )
    return EmailLoop(drafting, REQUEST, CostTracker())


def send(loop: EmailLoop) -> Call:
    """The next call, prepared as the drivers prepare it (which notes the structured-output method on it)."""
    call = loop.next_call()
    assert call is not None, "the loop ended early"
    loop.d.methods.prepared(call)
    return call


def good(call: Call) -> dict[str, Any]:
    """A valid email for this call, written by the offline drafter from the call's own prompt."""
    brief = read_brief(call.messages)
    assert brief is not None
    return draft_email(brief)


def email(data: dict[str, Any]) -> AIMessage:
    """A structured-output reply: the email as tool-call arguments, with usage."""
    return AIMessage(
        "",
        tool_calls=[{"name": "EmailDraft", "args": data, "id": "c1", "type": "tool_call"}],
        usage_metadata={"input_tokens": 10, "output_tokens": 5, "total_tokens": 15},
    )


def text(answer: str) -> AIMessage:
    """A plain-text reply, as a subject, paragraph or length repair gets."""
    return AIMessage(answer, usage_metadata={"input_tokens": 4, "output_tokens": 2, "total_tokens": 6})


def with_paragraph(data: dict[str, Any], index: int, new: str) -> dict[str, Any]:
    parts = paragraphs(data["body"])
    parts[index] = new
    return {**data, "body": "\n\n".join(parts)}


def with_unbacked_number(data: dict[str, Any]) -> dict[str, Any]:
    """Paragraph 1 opens with an invented "$12"; everything else stays valid."""
    parts = paragraphs(data["body"])
    assert parts[1].startswith("Here is something we think you will like.")
    return with_paragraph(data, 1, parts[1].replace("Here is something we think you will like.", UNBACKED, 1))


def codes(loop: EmailLoop) -> set[str]:
    assert loop.report is not None
    return loop.report.codes


def refusal() -> openai.BadRequestError:
    return openai.BadRequestError(
        "response_format type json_schema is not supported",
        response=httpx2.Response(400, request=HTTP_REQUEST),
        body=None,
    )


def timeout() -> openai.APITimeoutError:
    return openai.APITimeoutError(request=HTTP_REQUEST)


def paid_draft_with_long_subject(loop: EmailLoop) -> dict[str, Any]:
    """Answer the draft call with an email whose only flaw is its subject; returns what was answered."""
    data = {**good(send(loop)), "subject": LONG_SUBJECT}
    loop.answered(email(data))
    assert codes(loop) == {"subject_length"}
    return data


# -- one email from draft to variant ------------------------------------------------------------------


def test_a_valid_first_draft_is_one_call_and_one_check() -> None:
    model = OfflineChatModel()
    loop = make_loop(model)
    call = send(loop)
    assert call.step == "draft" and call.kind == "email" and call.model is model and call.vary == {}
    data = good(call)

    checks = loop.answered(email(data))

    assert len(checks) == 1 and checks[0].report.valid
    assert loop.next_call() is None
    variant = loop.variant()
    assert variant.valid and variant.attempts == 1
    assert [(s.step, s.input_tokens, s.output_tokens, s.issues) for s in variant.steps] == [("draft", 10, 5, [])]
    assert variant.subject == data["subject"] == checks[0].subject
    assert variant.body == body_as_sent(REQUEST, data["body"]) == checks[0].body  # cpo's greeting and sign-off
    assert {c.id for c in variant.citations} == set(data["citations"])
    assert variant.source == "offline" and not variant.fallback_used


def test_only_the_subject_failing_gets_a_subject_call_and_the_candidate_that_passes() -> None:
    loop = make_loop()
    data = paid_draft_with_long_subject(loop)

    call = send(loop)
    assert call.step == "subject" and call.kind == "text" and call.max_tokens == SUBJECT_FIX_MAX_TOKENS == 96
    assert LONG_SUBJECT in str(call.messages[-1].content)
    assert paragraphs(data["body"])[1][:40] not in str(call.messages)  # the body is not sent again

    # Three candidates: too long, fine, shouting. The loop keeps the second, not the first.
    checks = loop.answered(text(f"1. {LONG_SUBJECT} today\n2. {GOOD_SUBJECT}\n3. YOUR GOLD UPGRADE OFFER AWAITS"))

    assert len(checks) == 1 and checks[0].report.valid and checks[0].subject == GOOD_SUBJECT
    assert loop.next_call() is None
    variant = loop.variant()
    assert variant.valid and variant.subject == GOOD_SUBJECT and variant.attempts == 2
    assert variant.body == body_as_sent(REQUEST, data["body"])  # untouched by the subject fix
    assert [s.step for s in variant.steps] == ["draft", "subject"]


def test_when_every_subject_line_is_too_long_the_half_of_a_two_part_line_that_fits_is_kept() -> None:
    """Real-model answer (held-out batch 2): every line over 60 characters, each in two parts."""
    loop = make_loop()
    paid_draft_with_long_subject(loop)
    send(loop)
    answer = (
        "1. Upgrade to Northwind Plus: Exclusive Offer for Your Gold Membership Today\n"
        f"2. {GOOD_SUBJECT}: a note on what members get with every single order\n"
        "3. Northwind Plus membership offer for customers like you, explained in full"
    )
    checks = loop.answered(text(answer))
    assert checks[0].report.valid and checks[0].subject == "Upgrade to Northwind Plus"


def test_a_located_problem_gets_a_call_for_its_paragraph_and_the_answer_replaces_only_it() -> None:
    loop = make_loop()
    data = good(send(loop))
    original = paragraphs(data["body"])
    loop.answered(email(with_unbacked_number(data)))
    assert codes(loop) == {"ungrounded_claim"}

    call = send(loop)
    assert call.step == "paragraph" and call.kind == "text" and call.index == 1
    assert call.max_tokens == PARAGRAPH_MAX_TOKENS
    prompt = str(call.messages[-1].content)
    assert UNBACKED in prompt and "$12" in prompt and original[0] not in prompt  # only that paragraph is sent

    rewritten = "We picked this with you in mind. " + original[1].split(". ", 1)[1]
    loop.answered(text(f"Paragraph: {rewritten}"))

    assert loop.next_call() is None
    variant = loop.variant()
    assert variant.valid, variant.validation.reasons
    assert variant.attempts == 2 and [s.step for s in variant.steps] == ["draft", "paragraph"]
    assert variant.body == body_as_sent(REQUEST, "\n\n".join([original[0], rewritten, *original[2:]]))


WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]  # no digits: no numbers to check


def never_passing_whole_email(call: Call, n: int) -> AIMessage:
    """Every answer cites nothing (a whole-email problem) and is a new email each time."""
    assert call.kind == "email"
    return email({**good(call), "citations": [], "subject": f"Offer {WORDS[n]}"})


def never_passing_subject(call: Call, n: int) -> AIMessage:
    """Every answer has a subject over 60 characters, a new one each time."""
    subject = f"{LONG_SUBJECT} {WORDS[n]}"
    return email({**good(call), "subject": subject}) if call.kind == "email" else text(subject)


@pytest.mark.parametrize("max_repairs", [0, 1, 2, 3])
@pytest.mark.parametrize(
    ("answer", "code"), [(never_passing_whole_email, "too_few_citations"), (never_passing_subject, "subject_length")]
)
def test_repair_rounds_stop_at_max_repairs_and_the_variant_stays_invalid(
    max_repairs: int, answer: Callable[[Call, int], AIMessage], code: str
) -> None:
    loop = make_loop(max_repairs=max_repairs)
    calls: list[Call] = []
    while (call := loop.next_call()) is not None and len(calls) < len(WORDS):
        loop.d.methods.prepared(call)
        checks = loop.answered(answer(call, len(calls)))
        calls.append(call)
        assert not any(c.report.valid for c in checks)

    assert loop.next_call() is None
    assert len(calls) == max_repairs + 1  # the draft and one call per round (one failing part here)
    variant = loop.variant()
    assert not variant.valid and variant.attempts == max_repairs + 1
    assert code in variant.validation.codes and variant.validation.reasons
    assert variant.subject.endswith(WORDS[len(calls) - 1])  # the last answer is the one kept
    assert [s.step for s in variant.steps] == [c.step for c in calls]


def test_a_repeated_subject_makes_the_next_call_varied() -> None:
    loop = make_loop()
    paid_draft_with_long_subject(loop)
    first = send(loop)
    assert first.step == "subject" and first.vary == {}

    loop.answered(text(LONG_SUBJECT))  # gives back the subject it was asked to change

    assert loop.steps[-1].repeated
    again = send(loop)
    assert again.step == "subject" and again.kind == "text"
    assert again.vary == {"temperature": VARIED_TEMPERATURE, "seed": 1002} and VARIED_TEMPERATURE == 0.9
    assert loop.attempts == 3  # a new round, not more of the same one

    loop.answered(text(GOOD_SUBJECT))
    variant = loop.variant()
    assert variant.valid and variant.attempts == 3
    assert [(s.step, s.repeated, s.varied) for s in variant.steps] == [
        ("draft", False, False),
        ("subject", True, False),
        ("subject", False, True),
    ]


# -- failures handed back with failed() ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (BudgetExceeded(Decimal("0.10"), Decimal("0.10")), "budget"),
        (DeadlineExceeded(120.0, "repairing"), "deadline"),
        (Interrupted("interrupted (Ctrl-C)"), "interrupted"),
    ],
)
def test_a_repair_that_was_never_sent_keeps_the_paid_draft(error: Exception, code: str) -> None:
    loop = make_loop()
    data = paid_draft_with_long_subject(loop)
    assert send(loop).step == "subject" and loop.attempts == 2

    loop.failed(error)  # does not raise

    assert loop.next_call() is None
    variant = loop.variant()
    assert not variant.valid
    assert [i.code for i in variant.validation.issues] == ["subject_length", code]
    assert variant.subject == LONG_SUBJECT and variant.body == body_as_sent(REQUEST, data["body"])  # the paid draft
    assert variant.attempts == 1  # the refused repair is not counted
    assert [(s.step, s.error) for s in variant.steps] == [("draft", None), ("subject", type(error).__name__)]


def test_a_failure_before_any_draft_is_re_raised() -> None:
    loop = make_loop()
    send(loop)
    error = BudgetExceeded(Decimal("0.10"), Decimal("0.10"))
    with pytest.raises(BudgetExceeded) as raised:
        loop.failed(error)
    assert raised.value is error


@pytest.mark.parametrize("status", [401, 403])
def test_an_authentication_failure_is_re_raised_even_after_a_paid_draft(status: int) -> None:
    kind = openai.AuthenticationError if status == 401 else openai.PermissionDeniedError
    error = kind("bad key", response=httpx2.Response(status, request=HTTP_REQUEST), body=None)
    loop = make_loop(openai_compatible(), method="json_schema", fallback=OfflineChatModel())
    paid_draft_with_long_subject(loop)
    send(loop)
    with pytest.raises(kind) as raised:
        loop.failed(error)
    assert raised.value is error
    assert not loop.fallback_used


@pytest.mark.parametrize(
    "error",
    [
        refusal(),
        # llama.cpp answers json_schema with a 500 that names the format: a refusal, not a transient fault.
        openai.InternalServerError(
            "response_format type must be one of text, json_object",
            response=httpx2.Response(500, request=HTTP_REQUEST),
            body=None,
        ),
    ],
)
def test_a_refused_structured_output_method_is_asked_again_within_the_same_step(error: Exception) -> None:
    """The chain's step sends the call again by the next method: one step of the email, one run in the trace,
    and never the offline fallback (a refusal is not a fault)."""
    from langchain_core.runnables import RunnableLambda

    from cpo.email.chain import build_email_chain

    chain = build_email_chain(openai_compatible(), offline_fallback=True)
    chain.prompts = PromptSet.load(None, "full")  # whole emails (the guided profile's re-ask: test_compact_prompt)
    chain.methods.method = "json_schema"
    loop = EmailLoop(chain.drafting(), ContentBundle.load().request("High-Value Recent", "friendly"), CostTracker())
    call = send(loop)
    sent: list[str] = []

    def scripted(bound_call: Call) -> Any:
        method = chain.methods.method
        bound_call.method = method
        sent.append(method)
        if method == "json_schema":
            return RunnableLambda(lambda _: (_ for _ in ()).throw(error))
        return RunnableLambda(lambda _: email(good(call)))

    chain.methods.prepared = scripted  # type: ignore[method-assign]
    runs: list[str] = []

    class Names(BaseCallbackHandler):
        def on_chain_start(self, serialized: Any, inputs: Any, *, name: str | None = None, **kw: Any) -> None:
            runs.append(name or "")

    reply = chain._step(call).invoke(call.messages, {"callbacks": [Names()]})
    assert sent == ["json_schema", "function_calling"] and chain.methods.method == "function_calling"
    assert runs.count("draft") == 1  # one step run, the refusal inside it
    loop.answered(reply)
    variant = loop.variant()
    assert variant.valid and variant.attempts == 1 and [s.step for s in variant.steps] == ["draft"]
    assert variant.source == "openai-compatible" and not variant.fallback_used


def test_a_refusal_reaching_the_loop_is_an_ordinary_failure() -> None:
    """The loop itself does not retry refusals (the step does): before a paid draft the error is raised."""
    loop = make_loop(openai_compatible(), method="json_schema", fallback=None)
    send(loop)
    error = refusal()
    with pytest.raises(openai.BadRequestError) as raised:
        loop.failed(error)
    assert raised.value is error


def test_a_transient_error_moves_the_email_to_the_offline_fallback_once() -> None:
    announced: list[Exception] = []
    fallback = OfflineChatModel()
    primary = openai_compatible()
    loop = make_loop(primary, method="json_schema", fallback=fallback, announce=announced.append)
    assert send(loop).model is primary
    error = timeout()

    loop.failed(error)

    assert announced == [error]
    call = send(loop)
    assert call.model is fallback and call.step == "draft" and call.kind == "email" and loop.attempts == 1
    loop.answered(email(good(call)))
    variant = loop.variant()
    assert variant.valid and variant.attempts == 1
    assert variant.fallback_used and variant.source == "offline"


def test_the_fallback_engages_only_once() -> None:
    announced: list[Exception] = []
    loop = make_loop(openai_compatible(), method="json_schema", fallback=OfflineChatModel(), announce=announced.append)
    send(loop)
    loop.failed(timeout())
    send(loop)
    second = timeout()
    with pytest.raises(openai.APITimeoutError) as raised:
        loop.failed(second)  # the fallback failing too: nothing paid for, nothing left to fall back to
    assert raised.value is second and len(announced) == 1


def test_a_fallback_during_a_targeted_repair_asks_the_offline_drafter_for_a_fresh_email() -> None:
    """The offline drafter cannot answer a plain-text repair (it would put its refusal in the subject, or a JSON
    email in a paragraph): the repair goes to it as the whole email again, in the same round."""
    fallback = OfflineChatModel()
    loop = make_loop(openai_compatible(), method="json_schema", fallback=fallback)
    loop.answered(email(with_unbacked_number(good(send(loop)))))
    repair = send(loop)
    assert repair.step == "paragraph" and repair.index == 1 and loop.attempts == 2

    loop.failed(timeout())

    again = send(loop)
    assert again.model is fallback and again.step == "fresh" and again.kind == "email"
    # the first prompt in the full profile (the one the offline drafter reads), in the same round
    assert again.messages == PROMPTS.render(REQUEST, ValidationLimits(), "full") and loop.attempts == 2
    loop.answered(email(good(again)))
    variant = loop.variant()
    assert variant.valid and variant.fallback_used and variant.source == "offline"
    assert [s.step for s in variant.steps] == ["draft", "fresh"]


# -- replies that are not an email ---------------------------------------------------------------------


def test_an_unparseable_reply_gets_the_whole_email_rewritten() -> None:
    loop = make_loop()
    draft = send(loop)

    checks = loop.answered(text("not json"))

    assert [i.code for i in checks[0].report.issues] == ["unparseable"]
    assert checks[0].subject == "" and checks[0].body == ""
    call = send(loop)
    assert call.step == "rewrite" and call.kind == "email" and call.vary == {}
    assert call.messages[: len(draft.messages)] == draft.messages  # the same conversation
    assert call.messages[-2].content == "not json"  # the answer shown back
    assert "not a JSON email object" in str(call.messages[-1].content)  # with what was wrong with it

    loop.answered(email(good(call)))
    variant = loop.variant()
    assert variant.valid and variant.attempts == 2 and [s.step for s in variant.steps] == ["draft", "rewrite"]
    assert variant.steps[0].issues == ["unparseable"]


def test_the_same_unreadable_answer_twice_is_not_asked_for_again_the_same_way() -> None:
    """A rewrite answered like the draft (a deterministic model cut off at the same point again) would be followed
    by the very request just answered; found by the fault-mix suite (tests/test_fault_mix.py)."""
    loop = make_loop()
    send(loop)
    loop.answered(text('{"subject": "Your upgrade", "body": "cut off'))
    rewrite = send(loop)
    assert rewrite.step == "rewrite" and rewrite.vary == {}

    loop.answered(text('{"subject": "Your upgrade", "body": "cut off'))  # the same answer again

    again = send(loop)
    assert again.step == "fresh" and again.vary == {"temperature": VARIED_TEMPERATURE, "seed": 1002}
    assert again.messages != rewrite.messages
    loop.answered(email(good(again)))
    variant = loop.variant()
    assert variant.valid and variant.attempts == 3
    assert [(s.step, s.repeated, s.varied) for s in variant.steps] == [
        ("draft", False, False),
        ("rewrite", True, False),
        ("fresh", False, True),
    ]
