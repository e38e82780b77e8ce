"""Per-address admission and operator bans, for one gateway.

:class:`Admission` decides whether a new connection from a client address may
be served, and keeps the cluster-wide count of what this gateway holds from
each address true:

* **bans** are kept in memory (loaded from Redis at start, after every
  reconnect, on every heartbeat, and at once when ``chat-admin`` announces a
  change) so checking one costs no Redis round trip;
* **limits** (``CHAT_MAX_CONNECTIONS_PER_IP``, ``CHAT_CONNECT_RATE_PER_IP`` with
  ``CHAT_CONNECT_BURST_PER_IP``) are counted in Redis by the ``admit`` script,
  across every gateway; each gateway's share of an address's count is its own
  hash field, so a dead gateway's share is dropped by the reaper
  (:meth:`~services.common.bus.Bus.release_addresses`) without touching the
  others';
* **while Redis is unreachable** (or an admission's answer is lost), the same
  limits are applied to this gateway alone (its own connections from the
  address, its own rate bucket), and the address is marked *dirty*: its count in
  Redis is set to this gateway's true count once Redis answers again
  (:meth:`sync`, run on every heartbeat and after every re-assertion).

This gateway's own count per address (:attr:`held`) is the truth; Redis holds
a copy, corrected whenever it may have drifted.  A count therefore never leaks
past the next successful sync, whichever way a session ends.
"""

from __future__ import annotations

import math
from collections import Counter

import structlog
import trio

from services.common.bans import Ban, decode_bans, matching_ban
from services.common.bus import Bus
from services.common.config import Settings
from services.common.redis import RedisError
from services.gateway.flood import TokenBucket

log = structlog.get_logger()

# Local rate buckets (used only while Redis is unreachable) are forgotten past this
# many addresses, so a spray of addresses cannot grow them without bound.
LOCAL_BUCKETS_MAX = 10000


class Admission:
    """Admission decisions and per-address counts of one gateway process."""

    def __init__(self, settings: Settings, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus
        self.held: Counter[str] = Counter()  # address -> connections admitted here
        self.dirty: set[str] = set()  # addresses whose count in Redis may be wrong
        self.bans: list[Ban] = []
        self._in_flight: Counter[str] = Counter()  # admissions awaiting Redis, by address
        self._local_buckets: dict[str, TokenBucket] = {}
        self._syncing = False
        self._full_sync_pending = False

    # -- bans -----------------------------------------------------------------------
    def banned(self, address: str) -> Ban | None:
        return matching_ban(address, self.bans)

    async def load_bans(self) -> list[Ban]:
        """Reload the ban list from Redis; returns it.  Raises :class:`RedisError`."""
        bans, problems = decode_bans(await self.bus.bans())
        for problem in problems:
            log.warning("bans.malformed", error=problem)
        if _signature(bans) != _signature(self.bans):
            log.info("bans.loaded", bans=sum(b.active() for b in bans))
        self.bans = bans
        return bans

    # -- limits ---------------------------------------------------------------------
    async def admit(self, address: str) -> tuple[str, str] | None:
        """Count a new connection from ``address``; ``None`` when admitted, else
        ``(reason, what to tell the client)`` (nothing counted then); the reason
        is ``connect_rate_per_ip`` or ``connections_per_ip``."""
        s = self.settings
        limit, rate = s.max_connections_per_ip, s.connect_rate_per_ip
        if limit == 0 and math.isinf(rate):
            self.held[address] += 1
            return None
        # Counted here first, so a sync running meanwhile includes this connection.
        self.held[address] += 1
        self._in_flight[address] += 1
        try:
            if self.bus.redis.connected and address not in self.dirty:
                try:
                    ok, why, held = await self.bus.admit_address(
                        address, limit, rate, s.connect_burst_per_ip
                    )
                except (RedisError, ValueError, IndexError, TypeError, AttributeError) as exc:
                    # No answer (it may have run) or one we cannot read: the count in
                    # Redis is set right by the next sync.
                    log.warning("admission.local", address=address, error=str(exc))
                    self.dirty.add(address)
                    ok, why, held = self._admit_locally(address)
            else:
                self.dirty.add(address)
                ok, why, held = self._admit_locally(address)
        except BaseException:
            # Cancelled (the gateway is stopping): not admitted; Redis's copy is
            # corrected by the next sync or dropped by the drain or the reaper.
            self._forget(address)
            self.dirty.add(address)
            raise
        finally:
            self._in_flight[address] -= 1
            if not self._in_flight[address]:
                del self._in_flight[address]
        if ok:
            return None
        self._forget(address)
        if why == "rate":
            return ("connect_rate_per_ip",
                    "connecting too often from your address; try again in a few seconds")
        return ("connections_per_ip",
                f"too many connections from your address ({held}, at most {limit})")

    def _admit_locally(self, address: str) -> tuple[bool, str, int]:
        """This gateway's own view, when Redis cannot count (``held`` already
        includes the connection being admitted)."""
        s = self.settings
        if not math.isinf(s.connect_rate_per_ip):
            bucket = self._local_buckets.get(address)
            if bucket is None:
                if len(self._local_buckets) >= LOCAL_BUCKETS_MAX:
                    self._local_buckets.clear()
                bucket = TokenBucket(s.connect_burst_per_ip, s.connect_rate_per_ip)
                self._local_buckets[address] = bucket
            if not bucket.take():
                return False, "rate", 0
        held = self.held[address]
        if s.max_connections_per_ip and held > s.max_connections_per_ip:
            return False, "connections", held - 1
        return True, "", held

    def _forget(self, address: str) -> None:
        self.held[address] -= 1
        if self.held[address] <= 0:
            del self.held[address]

    async def release(self, address: str) -> None:
        """A connection admitted from ``address`` ended.  Never raises; bounded by
        the Redis timeout (the caller shields it from cancellation)."""
        self._forget(address)
        s = self.settings
        if s.max_connections_per_ip == 0 and math.isinf(s.connect_rate_per_ip):
            return
        if address in self.dirty or not self.bus.redis.connected:
            self.dirty.add(address)  # the next sync writes the true count
            return
        try:
            await self.bus.release_address(address)
        except RedisError as exc:
            log.warning("admission.release_failed", address=address, error=str(exc))
            self.dirty.add(address)

    async def sync(self, *, everything: bool = False) -> bool:
        """Write this gateway's true count for every dirty address (with
        ``everything``: for every address, and drop counts Redis holds for
        addresses this gateway no longer serves, after Redis lost data or our
        lease lapsed; if a sync is running, the next one does it).  ``True`` when
        nothing is left to write.  Raises :class:`RedisError`."""
        if everything:
            self._full_sync_pending = True
        if self._syncing:
            return False
        self._syncing = True
        try:
            if self._full_sync_pending:
                stale = await self.bus.counted_addresses() - set(self.held)
                self.dirty |= stale | set(self.held)
                self._full_sync_pending = False
            for address in list(self.dirty):
                if address in self._in_flight:
                    continue  # its admission's answer decides; synced next time
                count = self.held.get(address, 0)
                await self.bus.set_address_count(address, count)
                if self.held.get(address, 0) == count and address not in self._in_flight:
                    self.dirty.discard(address)
            return not self.dirty
        finally:
            self._syncing = False

    async def sync_quietly(self, *, everything: bool = False) -> None:
        """:meth:`sync`, logging instead of raising."""
        if not (self.dirty or everything or self._full_sync_pending):
            return
        if not self.bus.redis.connected:
            return
        try:
            with trio.move_on_after(max(self.settings.redis_timeout_s * 4, 1.0)):
                await self.sync(everything=everything)
        except RedisError as exc:
            log.warning("admission.sync_failed", error=str(exc), dirty=len(self.dirty))


def _signature(bans: list[Ban]) -> set[tuple[str, str]]:
    return {(str(b.network), b.record()) for b in bans}
