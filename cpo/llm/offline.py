"""The offline drafting model: a deterministic LangChain chat model used when no LLM endpoint is set.

It reads the labelled lines of cpo's email prompt (Segment, Profile, Offer, Tone, snippets), writes
the email from a tone template and the supplied snippets (quoted verbatim, so every claim is grounded
by construction), answers structured-output requests with valid JSON, and reports tiktoken-counted
usage under the model name "cpo-offline" (priced $0). It is a drafting aid, not a language model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from cpo.accounting.pricing import OFFLINE_MODEL
from cpo.core.wording import says_again
from cpo.llm.resilient import ResilientChatModel
from cpo.net.tokens import count_text_tokens, count_tokens

NOT_CONFIGURED = (
    "No LLM endpoint is configured, so cpo used its offline drafting model. Set AZURE_OPENAI_ENDPOINT, "
    "AZURE_OPENAI_API_KEY and AZURE_OPENAI_DEPLOYMENT_NAME (or OPENAI_BASE_URL and CPO_MODEL_NAME) to use a real model."
)
PREHEADER_MAX = 120  # the validator's default preheader_max_chars
SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")
SNIPPET_LINE = re.compile(r"^\[(?P<id>[^\]\s]+)\] (?P<text>.+)$", re.MULTILINE)


@dataclass
class _Brief:
    """What the offline drafter understood from the prompt."""

    segment: str = ""
    profile: dict[str, str] = field(default_factory=dict)
    offer: str = ""
    tone: str = "control"
    snippets: list[dict[str, str]] = field(default_factory=list)
    subject_max: int = 60
    body_min: int = 150
    body_max: int = 200
    min_citations: int = 2


def _line(label: str, text: str) -> str | None:
    match = re.search(rf"^{label}:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else None


def read_brief(messages: list[BaseMessage]) -> _Brief | None:
    """The email brief in cpo's prompt, or None if these messages are not an email request."""
    request = next((m for m in messages if isinstance(m, HumanMessage) and SNIPPET_LINE.search(str(m.content))), None)
    if request is None:
        return None
    text = str(request.content)
    brief = _Brief(
        segment=_line("Segment", text) or "",
        offer=_line("Offer", text) or "",
        tone=(_line("Tone", text) or "control").split(".")[0].strip().lower(),
        snippets=[m.groupdict() for m in SNIPPET_LINE.finditer(text)],
    )
    profile = _line("Profile", text) or ""
    for part in profile.split(";"):
        key, sep, value = part.partition(":")
        if sep:
            brief.profile[key.strip()] = value.strip()
    system = "\n".join(str(m.content) for m in messages if isinstance(m, SystemMessage))
    if m := re.search(r"(?:at most|max) (\d+) characters", system):
        brief.subject_max = int(m.group(1))
    if m := re.search(r"(\d+)-(\d+) words in total", system):
        brief.body_min, brief.body_max = int(m.group(1)), int(m.group(2))
    if m := re.search(r"(?:at least (\d+)|(\d+)\+) snippet", system):
        brief.min_citations = int(m.group(1) or m.group(2))
    return brief


SUBJECTS = {
    "urgent": "{tier}claim your upgrade offer now",
    "informational": "What the upgrade includes, benefit by benefit",
    "friendly": "A thank-you for {tier_plain}",
    "control": "An upgrade offer for you",
}
OPENINGS = {
    "urgent": "We wanted you to hear this first{as_tier}, because this offer will not wait.",
    "informational": "Here is a clear look at what the upgrade gives you{as_tier}, so you can decide with the facts.",
    "friendly": "Thank you for {trait}. We thought of you when we put this together.",
    "control": "We have an upgrade offer available on your account.",
}
LEAD_INS = {
    "urgent": ["Here is what you unlock right away.", "There is more.", "And one more reason to act now."],
    "informational": [
        "Here is the first thing to know.",
        "Next, a benefit many members use.",
        "Finally, one more detail.",
    ],
    "friendly": ["Here is something we think you will like.", "We also think this will help.", "And a little extra."],
    "control": ["Here are the details.", "In addition:", "Also:"],
}
CLOSINGS = {
    "urgent": "Upgrade today from your account page so you do not miss out.",
    "informational": "You can compare the plans and upgrade from your account page whenever it suits you.",
    "friendly": "Whenever you are ready, you can upgrade from your account page in a minute or two.",
    "control": "You can upgrade from your account page.",
}
FILLERS = {
    "urgent": [
        "If you have a question before you decide, reply to this email and our team will help.",
        "We would hate for you to miss this one.",
        "Thank you for shopping with us.",
    ],
    "informational": [
        "If anything here is unclear, reply to this email and our team will explain.",
        "We hope this overview makes the decision easier.",
        "Thank you for shopping with us.",
    ],
    "friendly": [
        "If you have any questions at all, just reply to this email and we will be glad to help.",
        "It means a lot to have you with us.",
        "Thank you for being part of our community.",
    ],
    "control": [
        "If you have questions, reply to this email.",
        "Thank you for shopping with us.",
        "We hope you find this useful.",
    ],
}


def _trait(profile: dict[str, str]) -> str:
    """A qualitative phrase from the profile (its figures arrive as words: `cpo.email.prompts.PROFILE_WORDS`)."""
    last, orders = profile.get("last purchase", ""), profile.get("orders", "")
    if last == "long ago":
        return "the orders you have placed with us over time"
    if orders == "frequent":
        return "shopping with us so often"
    if last == "recent":
        return "your recent order"
    return "shopping with us"


def draft_email(brief: _Brief) -> dict[str, Any]:
    """Subject, body and citations for a brief; deterministic, grounded by construction."""
    tone = brief.tone if brief.tone in SUBJECTS else "control"
    generic = tone == "control"
    tier = "" if generic else brief.profile.get("tier", "")
    subject = SUBJECTS[tone].format(
        tier=f"{tier} members: " if tier else "", tier_plain=f"our {tier} members" if tier else "our members"
    )
    if tone == "urgent" and not tier:
        subject = "Claim your upgrade offer now"
    subject = subject[: brief.subject_max].rsplit(" ", 1)[0] if len(subject) > brief.subject_max else subject
    opening = OPENINGS[tone].format(as_tier=f" as a {tier} member" if tier else "", trait=_trait(brief.profile))

    def compose(snippets: list[dict[str, str]], fillers: int) -> str:
        """The paragraphs only: cpo adds the greeting and the sign-off around them."""
        paragraphs = [f"{opening} {brief.offer}".strip()]
        for lead, snippet in zip(LEAD_INS[tone], snippets, strict=False):
            # A snippet sentence that restates the offer is left out: the rubric refuses a thing said twice.
            kept = [s for s in SENTENCE.split(snippet["text"]) if not says_again(s, brief.offer)]
            paragraphs.append(f"{lead} {' '.join(kept or [snippet['text']])}")
        paragraphs.append(" ".join([CLOSINGS[tone], *FILLERS[tone][:fillers]]))
        return "\n\n".join(paragraphs)

    used = brief.snippets[:3]
    body = compose(used, 0)
    while len(body.split()) > brief.body_max and len(used) > brief.min_citations:
        used = used[:-1]
        body = compose(used, 0)
    fillers = 0
    while len(body.split()) < brief.body_min and fillers < len(FILLERS[tone]):
        fillers += 1
        body = compose(used, fillers)
    # The preheader: the first short sentence of a snippet the email quotes (approved text, so grounded).
    lines = [x for s in used for x in SENTENCE.split(s["text"]) if len(x) <= PREHEADER_MAX]
    lines = [x for x in lines if not says_again(x, subject)]
    preheader = lines[0] if lines else ""
    return {"subject": subject, "preheader": preheader, "body": body, "citations": [s["id"] for s in used]}


class OfflineChatModel(ResilientChatModel):
    """Deterministic drafting model for running cpo with no endpoint; honest about being offline."""

    model_name: str = OFFLINE_MODEL

    @property
    def _llm_type(self) -> str:
        return "cpo-offline"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    def _generate(
        self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        brief = read_brief(messages)
        if brief is None:
            prompt = str(messages[-1].content) if messages else ""
            if "connection successful" in prompt.lower():
                reply = "Connection successful (offline drafting model; no LLM endpoint is configured)"
            else:
                reply = NOT_CONFIGURED
            message = AIMessage(reply)
            output_text = reply
        else:
            draft = draft_email(brief)
            output_text = json.dumps(draft)
            tools = kwargs.get("tools") or []
            if tools:
                name = tools[0]["function"]["name"]
                message = AIMessage(
                    "", tool_calls=[{"name": name, "args": draft, "id": "call_offline", "type": "tool_call"}]
                )
            else:
                message = AIMessage(output_text)
        input_tokens = count_tokens(messages, self.model_name)
        output_tokens = count_text_tokens(output_text, self.model_name)
        message.usage_metadata = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        }
        message.response_metadata = {"model_name": self.model_name, "finish_reason": "stop", "source": "offline"}
        return ChatResult(
            generations=[ChatGeneration(message=message, generation_info={"finish_reason": "stop"})],
            llm_output={"model_name": self.model_name},
        )

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: Any = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], tool_choice=tool_choice, **kwargs)

    def with_structured_output(
        self, schema: Any, *, include_raw: bool = False, method: str | None = None, **kwargs: Any
    ) -> Runnable[LanguageModelInput, Any]:
        """Always answers through a tool call; `method` is accepted for parity with the OpenAI models."""
        return super().with_structured_output(schema, include_raw=include_raw, **kwargs)
