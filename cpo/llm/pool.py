"""Several Azure deployments as one chat model: work shared by quota, moved off a deployment that keeps failing.

A campaign that outgrows one deployment's quota is spread over several (regions, resources), listed in
the deployments file (`cpo.core.deployments`). Each attempt of a call goes to one deployment, picked
when it starts:
- **By quota.** Each deployment gets work in proportion to what its quota sustains (its own pacer, as
  believed now: a 429 lowers it), counted by the attempts it has in flight; a deployment held by a
  `retry-after` (a 429's, a 503's; with or without a quota) gets none while another is free.
- **Failover.** A deployment that answers only 429, 5xx or timeouts for longer than `failover_after`
  seconds gets no new work for that long; then one attempt at a time tries it: a success brings it
  back, a failure takes it out for twice as long (up to 16 times `failover_after`). A deployment that
  refuses the key or does not exist (401, 403, 404) gets no more work.
- **Retries elsewhere.** A transient failure is retried at once on a healthy deployment the call has
  not failed on, when there is one (the failing deployment's `retry-after` and the backoff are its
  own); a refusal of the deployment's own (401, 403, 404) is retried on another while one is left.
Each deployment is a model of its own, so every attempt is recorded, priced and paced as that
deployment's: the ledger, costs.json and the budget see the name the deployments file gives it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Literal

import openai
from pydantic import Field

from cpo.core.deployments import Deployment
from cpo.llm.attempts import Attempts
from cpo.llm.chat_models import CpoAzureChatOpenAI
from cpo.llm.resilient import ResilientChatModel
from cpo.net.faults import TryElsewhere, brief, is_transient, retry_after_s
from cpo.net.hooks import NamesItsDeployment
from cpo.net.pacing import QuotaPacer

log = logging.getLogger(__name__)

MAX_OUTAGE_FACTOR = 16.0  # a deployment that stays down is tried every 16 x failover_after at the most
BROKEN_STATUSES = (401, 403, 404)  # the key, the network rule or the deployment is wrong: asking again cannot help


class CpoAzureDeployment(NamesItsDeployment, CpoAzureChatOpenAI):
    """One deployment of a pool: an Azure model whose calls carry the deployments file's name for it."""


@dataclass(eq=False)
class Member:
    """A deployment in a pool, with what the pool has learnt of it."""

    entry: Deployment
    model: CpoAzureDeployment
    in_flight: int = 0
    attempts: int = 0
    failing_since: float | None = None  # the first failure of an unbroken run of transient ones
    out_until: float = 0.0  # no new work before then (math.inf: never again)
    outages: int = 0  # times in a row it was taken out; while > 0 it gets one attempt at a time (a probe)
    held_until: float = 0.0  # a 429's or 503's retry-after (also without a quota, so without a pacer)

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def pacer(self) -> QuotaPacer | None:
        """The deployment's quota, which its own transports pace by (None: no rpm or tpm in the file)."""
        return getattr(self.model, "quota_pacer", None)

    def rate(self) -> float | None:
        """Requests a second its quota sustains now; None without a quota."""
        return self.pacer.requests_per_s() if self.pacer is not None else None

    def held(self, now: float) -> bool:
        return self.held_until > now or (self.pacer is not None and self.pacer.held_for() > 0)

    def available(self, now: float) -> bool:
        """In rotation: not taken out, and not already probing (after an outage, one attempt at a time)."""
        return self.out_until <= now and not (self.outages and self.in_flight)

    def healthy(self, now: float) -> bool:
        return self.available(now) and self.failing_since is None and not self.held(now)


class Router:
    """Picks the deployment of each attempt and learns from how it ended. Thread-safe."""

    def __init__(
        self, members: list[Member], failover_after: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not members:
            raise ValueError("a pool needs at least one deployment")
        self.members, self.failover_after, self._clock = members, failover_after, clock
        self._lock = threading.Lock()

    def choose(self, avoid: Collection[Member] = ()) -> Member:
        """The deployment for the next attempt (counted in flight until `ended`). A retry (`avoid`: the ones
        this call failed on) goes to a healthy deployment it has not failed on when there is one."""
        with self._lock:
            now = self._clock()
            live = [m for m in self.members if m.available(now)]
            if not live:  # every deployment is out: the one back soonest (the retry policy bounds the rest)
                live = [min(self.members, key=lambda m: m.out_until)]
            fresh = [m for m in live if m not in avoid] or live
            if avoid:
                fresh = [m for m in fresh if m.healthy(now)] or fresh
            free = [m for m in fresh if not m.held(now)] or fresh
            rates = {id(m): m.rate() for m in free}
            known = [r for r in rates.values() if r]
            default = max(known) if known else 1.0
            chosen = min(free, key=lambda m: ((m.in_flight + 1) / (rates[id(m)] or default), m.attempts))
            chosen.in_flight += 1
            chosen.attempts += 1
            return chosen

    def ended(self, member: Member, failure: BaseException | None) -> None:
        """An attempt on `member` is over: answered (failure None), failed, or cancelled (not a verdict)."""
        with self._lock:
            member.in_flight -= 1
            now = self._clock()
            if failure is None:
                if member.outages:
                    log.info("deployment %s answers again", member.name)
                member.failing_since, member.out_until, member.outages = None, 0.0, 0
                return
            status = getattr(failure, "status_code", None)
            if isinstance(failure, openai.APIStatusError) and status in BROKEN_STATUSES:
                member.out_until = math.inf
                log.warning("deployment %s refused the request (%s): it gets no more work", member.name, brief(failure))
                return
            if not is_transient(failure):
                return  # it answered (a content filter, a bad request): the deployment is fine
            hinted = retry_after_s(failure)
            if hinted is not None:
                member.held_until = max(member.held_until, now + hinted)
            member.failing_since = member.failing_since if member.failing_since is not None else now
            if member.out_until > now:
                return  # sent before it was taken out
            if member.outages or now - member.failing_since >= self.failover_after:
                # taken out (again: its probe failed), for twice as long each time, up to MAX_OUTAGE_FACTOR times
                out_for = self.failover_after * min(2.0**member.outages, MAX_OUTAGE_FACTOR)
                member.outages += 1
                member.out_until = now + out_for
                log.warning(
                    "deployment %s has failed for %.1f s (%s): new work goes to the others for %g s",
                    member.name,
                    now - member.failing_since,
                    brief(failure),
                    out_for,
                )

    def healthy_besides(self, avoid: Collection[Member]) -> bool:
        """A deployment this call has not failed on can take a retry now: in rotation, not failing, not held."""
        with self._lock:
            now = self._clock()
            return any(m not in avoid and m.healthy(now) for m in self.members)

    def left_besides(self, member: Member) -> bool:
        """Another deployment is still in the pool (perhaps failing for now, perhaps one this call failed on)."""
        with self._lock:
            return any(m is not member and m.out_until != math.inf for m in self.members)

    @contextmanager
    def sending(self, attempts: Attempts) -> Iterator[CpoAzureDeployment]:
        """One attempt on the deployment chosen for it; a refusal of this deployment's own (its key, its name)
        becomes `TryElsewhere` while another deployment is left, so the email is not lost to it."""
        member = self.choose(avoid=attempts.failed_on)
        try:
            yield member.model
        except Exception as exc:
            self.ended(member, exc)
            broken = member.out_until == math.inf and isinstance(exc, openai.APIStatusError)
            if broken or is_transient(exc):
                attempts.failed_on.append(member)
            if broken and self.left_besides(member):
                raise TryElsewhere(f"deployment {member.name}: {brief(exc)}") from exc
            raise
        except BaseException:
            self.ended(member, CANCELLED)
            raise
        self.ended(member, None)


class _Cancelled(Exception):
    """An attempt cancelled by the caller (Ctrl-C, a cancelled task): it says nothing about the deployment."""


CANCELLED = _Cancelled()


class DeploymentPool(CpoAzureChatOpenAI):
    """Several Azure deployments as one model (its own fields are the first deployment's, which is what
    `bind_tools`, `with_structured_output` and `root_client` see); every attempt goes to one of them."""

    router: Router = Field(exclude=True)
    # Streaming would go to the first deployment's client, past the pool: `stream()` answers through `invoke`.
    disable_streaming: bool | Literal["tool_calling"] = True

    def _deployment(self, attempts: Attempts) -> AbstractContextManager[ResilientChatModel]:
        return self.router.sending(attempts)

    def _elsewhere(self, attempts: Attempts) -> bool:
        """A retry goes at once to a healthy deployment this call has not failed on, when there is one: the
        failing deployment's `retry-after` and backoff are its own."""
        return bool(attempts.failed_on) and self.router.healthy_besides(attempts.failed_on)

    @property
    def members(self) -> list[Member]:
        return self.router.members
