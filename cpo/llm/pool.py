"""Several Azure deployments as one chat model: work shared by quota, moved off a deployment that keeps failing.

A campaign that outgrows one deployment's quota is spread over several (regions, resources), listed in
the deployments file (`cpo.core.deployments`). Each attempt of a call goes to one deployment, picked
when it starts:
- **By quota.** Each deployment gets work in proportion to what its quota sustains (its own pacer, as
  believed now: a 429 lowers it), counted by the attempts it has in flight; a deployment held by a
  429's `retry-after` gets none while another is free.
- **Failover.** A deployment that answers only 429, 5xx or timeouts for longer than `failover_after`
  seconds gets no new work for that long; then one attempt at a time tries it: a success brings it
  back, a failure takes it out for twice as long (up to 16 times `failover_after`). A deployment that
  refuses the key or does not exist (401, 403, 404) gets no more work.
- **Retries elsewhere.** A transient failure is retried at once on another deployment when one is
  healthy (the retry policy's wait and the failing deployment's `retry-after` are its own).
Each deployment is a model of its own, so every attempt is recorded, priced and paced as that
deployment's: the ledger, costs.json and the budget see the name the deployments file gives it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import openai
from pydantic import Field

from cpo.core.deployments import Deployment
from cpo.llm.attempts import Attempts
from cpo.llm.chat_models import CpoAzureChatOpenAI
from cpo.llm.resilient import ResilientChatModel
from cpo.net.faults import TryElsewhere, brief, is_transient
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
    pacer: QuotaPacer | None
    in_flight: int = 0
    attempts: int = 0
    failures: int = 0
    failing_since: float | None = None  # the first failure of an unbroken run of transient ones
    out_until: float = 0.0  # no new work before then (math.inf: never again)
    outages: int = 0  # times in a row it was taken out; while > 0 it gets one attempt at a time (a probe)
    reason: str = ""

    @property
    def name(self) -> str:
        return self.entry.name

    def rate(self) -> float | None:
        """Requests a second its quota sustains now; None without a quota."""
        return self.pacer.requests_per_s() if self.pacer is not None else None


class Router:
    """Picks the deployment of each attempt and learns from how it ended. Thread-safe."""

    def __init__(
        self, members: list[Member], failover_after: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not members:
            raise ValueError("a pool needs at least one deployment")
        self.members, self.failover_after, self._clock = members, failover_after, clock
        self._lock = threading.Lock()

    def choose(self, avoid: Member | None = None) -> Member:
        """The deployment for the next attempt (counted in flight until `ended`)."""
        with self._lock:
            now = self._clock()
            live = [m for m in self.members if m.out_until <= now and not (m.outages and m.in_flight)]
            if not live:  # every deployment is out: the one back soonest (the retry policy bounds the rest)
                live = [min(self.members, key=lambda m: m.out_until)]
            elsewhere = [m for m in live if m is not avoid] or live
            free = [m for m in elsewhere if m.pacer is None or m.pacer.held_for() == 0] or elsewhere
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
                member.failures += 1
                member.out_until, member.reason = math.inf, brief(failure)
                log.warning("deployment %s refused the request (%s): it gets no more work", member.name, brief(failure))
                return
            if not is_transient(failure):
                return  # it answered (a content filter, a bad request): the deployment is fine
            member.failures += 1
            member.failing_since = member.failing_since if member.failing_since is not None else now
            if member.out_until > now:
                return  # sent before it was taken out
            if member.outages or now - member.failing_since >= self.failover_after:
                # taken out (again: its probe failed), for twice as long each time, up to MAX_OUTAGE_FACTOR times
                out_for = self.failover_after * min(2.0**member.outages, MAX_OUTAGE_FACTOR)
                member.outages += 1
                member.out_until, member.reason = now + out_for, brief(failure)
                log.warning(
                    "deployment %s has failed for %.1f s (%s): new work goes to the others for %g s",
                    member.name,
                    now - member.failing_since,
                    brief(failure),
                    out_for,
                )

    def healthy_besides(self, member: Member) -> bool:
        """Another deployment can take a retry now: in rotation, not failing, not held by a 429."""
        with self._lock:
            now = self._clock()
            return any(
                m is not member
                and m.out_until <= now
                and m.failing_since is None
                and (m.pacer is None or m.pacer.held_for() == 0)
                for m in self.members
            )

    @contextmanager
    def sending(self, attempts: Attempts) -> Iterator[CpoAzureDeployment]:
        """One attempt on the deployment chosen for it (avoiding the one this call last failed on)."""
        member = self.choose(avoid=attempts.failed_on)
        try:
            yield member.model
        except Exception as exc:
            self.ended(member, exc)
            broken = member.out_until == math.inf and isinstance(exc, openai.APIStatusError)
            attempts.failed_on = member if broken or is_transient(exc) else None
            if broken and self.healthy_besides(member):
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

    def _deployment(self, attempts: Attempts) -> AbstractContextManager[ResilientChatModel]:
        return self.router.sending(attempts)

    def _retry_wait(self, attempts: Attempts, wait: float) -> float:
        failed_on = attempts.failed_on
        if isinstance(failed_on, Member) and self.router.healthy_besides(failed_on):
            return 0.0  # another deployment is free: its quota is not the failing one's
        return wait

    @property
    def members(self) -> list[Member]:
        return self.router.members
