"""An LLM call between its start callback and its end, and the ledger row that records it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from decimal import Decimal
from uuid import UUID

from langchain_core.messages import BaseMessage

from cpo.accounting.ledger_rows import STARTED, CallRow
from cpo.core.usage import TokenCounts


class Call:
    """An LLM call in flight: the root run it is counted under, what it will be priced as, its prompt."""

    __slots__ = ("deployment", "email", "messages", "model_hint", "root", "started")

    def __init__(
        self,
        root: UUID,
        model_hint: str | None,
        deployment: str | None,
        messages: Sequence[BaseMessage] | None,
        email: tuple[UUID, str] | None = None,
    ) -> None:
        self.root, self.model_hint, self.deployment, self.messages = root, model_hint, deployment, messages
        self.email = email
        self.started = time.perf_counter()

    def row(
        self,
        session_id: str,
        call_id: UUID,
        run_name: str | None,
        model: str,
        counts: TokenCounts | None = None,
        cost: Decimal | None = None,
        *,
        latency_s: float = 0.0,
        status: str = STARTED,
        estimated: bool = False,
    ) -> CallRow:
        """The ledger row of this call: at its start (by default), or at its end."""
        return CallRow(
            session_id=session_id,
            run_id=str(self.root),
            run_name=run_name,
            model=model,
            counts=counts or TokenCounts(),
            cost=cost,
            latency_s=latency_s,
            status=status,
            estimated=estimated,
            deployment=self.deployment,
            email_id=None if self.email is None else str(self.email[0]),
            email_name=None if self.email is None else self.email[1],
            call_id=str(call_id),
        )
