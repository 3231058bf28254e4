"""One model call's attempts: where a timed-out, refused or failed attempt ends.

The sync and async call paths of `ResilientChatModel` share this object and differ only in how they
wait. Before each attempt the enclosing deadline is checked (none starts past it) and the attempt gets
its own run id, so every attempt is seen, counted and priced by a `CostTracker`. After a failure the
retry policy decides: wait and go again (transient faults only, `retry-after` honoured up to the cap),
or end the call with the error (as `DeadlineExceeded` when the email's deadline is what ran out, with a
note saying why no retry was made). Whatever happened, `close` tells every tracker the attempt is over:
a reservation never used is given back, an attempt cancelled in flight becomes a call of unknown cost.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from cpo.core.deadlines import deadline_error, time_left
from cpo.net.faults import brief
from cpo.net.retries import RetryPolicy

if TYPE_CHECKING:
    from cpo.accounting.tracker import CostTracker

log = logging.getLogger(__name__)

# An attempt that fails this close to the deadline failed because of it.
DEADLINE_SLACK_S = 0.05


class Attempts:
    """The attempts of one call: `next()` before each, `failed(exc)` after a failure, `close()` after each."""

    def __init__(
        self,
        policy: RetryPolicy,
        trackers: list[CostTracker],
        prompt: Sequence[Any],
        params: Callable[[Any], dict[str, Any]],
        run_id: uuid.UUID | None,
    ) -> None:
        self.policy, self.trackers, self.prompt, self.params = policy, trackers, prompt, params
        self.run_id = run_id
        self.retries = 0
        self.failed_on: list[Any] = []  # a pool's deployments this call failed on (transiently, or refused there)

    def next(self) -> uuid.UUID:
        """The run id of the next attempt (the caller's for the first); none starts past the deadline."""
        left = time_left()
        if left is not None and left <= 0:
            raise deadline_error(f"before attempt {self.retries + 1}")
        return self.run_id if self.retries == 0 and self.run_id is not None else uuid.uuid4()

    def failed(self, exc: Exception, elsewhere: bool = False) -> float:
        """Seconds to wait before the next attempt; or re-raise (DeadlineExceeded if the deadline ended it).
        `elsewhere`: another deployment can take the retry at once (a pool's)."""
        left = time_left()
        decision = self.policy.decide(exc, self.retries, left, elsewhere=elsewhere)
        if decision.retry:
            log.info("attempt %d failed (%s); retrying in %.2f s", self.retries + 1, brief(exc), decision.wait_s)
            self.retries += 1
            return decision.wait_s
        if left is not None and left <= DEADLINE_SLACK_S:
            raise deadline_error(f"during attempt {self.retries + 1} ({brief(exc)})") from exc
        if decision.reason:
            exc.add_note(decision.reason)
        raise exc

    def close(self, attempt_id: uuid.UUID) -> None:
        """The attempt is over: each tracker settles it (an unused reservation back, a cancelled call unknown)."""
        for tracker in self.trackers:
            tracker.close_call(attempt_id)
