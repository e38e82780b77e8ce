"""The outcome of chat lines whose publish got no answer.

A publish whose reply never came (the connection dropped after the command was
written, or Redis answered too late) may or may not have run.  Guessing either
way breaks a promise: "not delivered" for a line others saw invites a duplicate,
silence for a line nobody saw loses it.  :class:`Outcomes` finds out instead:

* the gateway's own subscriber may have seen the publication come back (its id
  is remembered for a while), or
* once Redis is reachable again and its clock has passed the publication's
  deadline (after which the publish script refuses it), the room's log says
  whether it is there (:meth:`~services.common.bus.Bus.resolve`).

The sender then sees exactly one outcome: its line echoed (delivered, possibly
through gap filling) or one ``!! not delivered`` line.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import structlog
import trio

from services.common.bus import Bus, PublishUncertain, Resolution
from services.common.redis import Backoff, RedisError

log = structlog.get_logger()

RECENT_IDS = 8192  # own publications remembered, newest last
GIVE_UP_S = 120.0  # after this long without Redis, say the outcome is unknown
PENDING_RETRY_S = 0.1


class Outcomes:
    """Resolves uncertain publications of one gateway; tasks run in ``spawn``'s nursery."""

    def __init__(
        self,
        bus: Bus,
        spawn: Callable[..., None],
        can_resolve: Callable[[], bool],
    ) -> None:
        self.bus = bus
        self.spawn = spawn
        self.can_resolve = can_resolve  # both Redis connections up
        self._recent: OrderedDict[str, None] = OrderedDict()
        self.pending = 0

    def saw(self, pub_id: str) -> None:
        """The subscriber received this gateway's own publication ``pub_id``."""
        recent = self._recent
        recent[pub_id] = None
        if len(recent) > RECENT_IDS:
            recent.popitem(last=False)

    def resolve_later(
        self,
        uncertain: PublishUncertain,
        report: Callable[[Resolution], None],
    ) -> None:
        """Find out what became of ``uncertain`` in the background; ``report`` is
        called once with ``PUBLISHED``, ``NOT_PUBLISHED`` or ``UNKNOWN``."""
        self.pending += 1
        self.spawn(self._resolve, uncertain, report)

    async def _resolve(
        self, uncertain: PublishUncertain, report: Callable[[Resolution], None]
    ) -> None:
        try:
            outcome = await self._find(uncertain)
        finally:
            self.pending -= 1
        log.info("message.resolved", room=uncertain.room, pub_id=uncertain.pub_id,
                 outcome=outcome.value)
        report(outcome)

    async def _find(self, uncertain: PublishUncertain) -> Resolution:
        backoff = Backoff(base_s=0.1, cap_s=2.0)
        with trio.move_on_after(GIVE_UP_S):
            while True:
                if uncertain.pub_id in self._recent:
                    return Resolution.PUBLISHED
                if self.can_resolve():
                    try:
                        outcome, _seq = await self.bus.resolve(uncertain)
                    except RedisError:
                        outcome = None
                    if outcome is Resolution.PENDING:
                        await trio.sleep(PENDING_RETRY_S)
                        continue
                    if outcome is not None:
                        if outcome is not Resolution.PUBLISHED and uncertain.pub_id in self._recent:
                            return Resolution.PUBLISHED
                        return outcome
                await trio.sleep(backoff.next_delay())
        return Resolution.UNKNOWN
