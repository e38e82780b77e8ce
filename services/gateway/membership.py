"""This gateway's place in the cluster: lease, reaper, canary, Redis state.

:class:`Membership` owns the duties that keep the cluster's view of this
gateway true:

* the **lease** (``{p}gw:{id}:alive``, renewed every heartbeat) and the
  registry entry; a lapsed lease (this process was paused) triggers a
  re-assertion that announces the users others had released;
* the **reaper**: users of gateways whose lease expired are released, their
  leaves announced once (the reap script is exactly-once); earlier processes
  under this gateway's own name are reaped at once, before clients are admitted;
* the **canary**: a message to our own node channel proves the subscriber loop
  delivers; readiness needs a fresh one;
* **Redis state**: clients are told once when chat is interrupted and once when
  it is back, and after every reconnect the state Redis may have lost is
  re-asserted.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import structlog
import trio

from services.common.bus import Bus
from services.common.bus.codec import Canary
from services.common.config import Settings
from services.common.keys import Keys
from services.common.metrics import Metrics
from services.common.redis import RECONNECT_CAP_S, Backoff, RedisClient, RedisError, Subscriber
from services.gateway import protocol as p
from services.gateway.admission import Admission
from services.gateway.registry import Nicknames

log = structlog.get_logger()


class Membership:
    """Lease, reaper, canary and Redis-state duties of one gateway process."""

    def __init__(
        self,
        settings: Settings,
        keys: Keys,
        bus: Bus,
        redis: RedisClient,
        subscriber: Subscriber,
        metrics: Metrics,
        nicknames: Nicknames,
        *,
        name: str,
        incarnation: str,
        client_count: Callable[[], int],
        tell_everyone: Callable[[bytes], None],
        admission: Admission,
        on_bans_loaded: Callable[[], int],
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.bus = bus
        self.redis = redis
        self.subscriber = subscriber
        self.metrics = metrics
        self.nicknames = nicknames
        self.name = name
        self.incarnation = incarnation
        self.client_count = client_count
        self.tell_everyone = tell_everyone
        self.admission = admission
        self.on_bans_loaded = on_bans_loaded
        # What the heartbeat tells operators; the bound address once listening
        # (the configured port may be 0).
        self.listen_address = str(settings.listen)
        self.started_at = time.time()
        self.available = False  # both connections up and re-asserted
        self.first_available = trio.Event()
        self.draining = False
        self.last_canary = -math.inf
        self.canary_failures = 0
        self.canary_sent = 0
        self.lease_renewed_at = -math.inf
        self.known_epoch: bytes | None = None
        self._state_changed = trio.Event()

    # -- readiness ------------------------------------------------------------------
    def ready(self) -> tuple[bool, str]:
        """Whether load balancers should send clients here, and why not."""
        if self.draining:
            return False, "draining"
        if not self.redis.connected:
            return False, "redis command connection down"
        if not self.subscriber.connected:
            return False, "redis subscriber down"
        if not self.canary_fresh():
            return False, "subscriber canary not seen recently"
        return True, "ready"

    def canary_fresh(self) -> bool:
        """Whether a canary came back through the subscriber within the canary
        timeout (with the canary off: whether the subscriber is connected)."""
        if math.isinf(self.settings.canary_interval_s):
            return self.subscriber.connected
        return trio.current_time() - self.last_canary <= self.settings.canary_timeout_s

    def on_canary(self) -> None:
        self.last_canary = trio.current_time()
        self.metrics.subscriber_up.set(1)

    # -- Redis state ----------------------------------------------------------------
    def on_redis_state(self, connected: bool) -> None:
        """Either Redis connection went up or down."""
        self.metrics.redis_up.set(1 if self.redis.connected else 0)
        if not self.subscriber.connected:
            self.metrics.subscriber_up.set(0)
        elif math.isinf(self.settings.canary_interval_s):
            self.metrics.subscriber_up.set(1)  # no canary: the connection is all we know
        self._state_changed.set()

    async def watch_redis_state(self) -> None:
        """Tell clients once when chat is interrupted and once when it is back, and
        re-assert this gateway's state after every reconnect."""
        was_available = False
        ever = False
        while True:
            await self._state_changed.wait()
            self._state_changed = trio.Event()
            now = self.redis.connected and self.subscriber.connected
            if now == was_available:
                if now:
                    await self._reassert_until_done()
                continue
            if not now:
                self.available = False
                log.warning("chat.interrupted")
                self.tell_everyone(
                    p.info("chat interrupted: lost the connection to Redis; reconnecting...")
                )
            else:
                if not await self._reassert_until_done():
                    continue  # lost Redis again meanwhile; the next state change decides
                self.available = True
                self.first_available.set()
                if ever:
                    log.info("chat.restored")
                    self.tell_everyone(p.info("chat is back"))
            was_available = now
            ever = ever or now

    async def _reassert_until_done(self) -> bool:
        """Re-assert, retrying while Redis stays connected; ``False`` if it went away."""
        backoff = Backoff(base_s=0.2, cap_s=2.0)
        while self.redis.connected:
            if await self.reassert():
                return True
            await trio.sleep(backoff.next_delay())
        return False

    async def reassert(self, *, announce: bool = False) -> bool:
        """After a reconnect Redis may be empty, and after a lapsed lease other
        gateways may have released our users: renew the lease, settle earlier
        processes under our name, claim every live nickname again.  With
        ``announce``, users whose nickname had been released are announced as
        joining again (the others were told they left).  ``False`` on failure."""
        if not self.redis.connected:
            return False
        try:
            await self.bus.sync_clock()
            # Same epoch: Redis kept its data, so a nickname of ours that is gone was
            # released by another gateway (which announced the leave): announce the
            # user again.  A new epoch means Redis lost everything; clients were told
            # chat was interrupted, and a flood of joins would only be noise.
            epoch = await self.redis.execute("GET", self.keys.epoch)
            if self.known_epoch is not None and epoch == self.known_epoch:
                announce = True
            self.known_epoch = epoch
            await self._heartbeat()
            await self._settle_predecessors()
            await self.nicknames.reassert(announce=announce)
            await self.admission.sync(everything=True)
            await self.admission.load_bans()
            self.on_bans_loaded()
        except RedisError as exc:
            log.warning("redis.reassert_failed", error=str(exc))
            return False
        log.info("redis.reasserted", nicks=len(self.nicknames))
        return True

    async def _settle_predecessors(self) -> None:
        """End what earlier processes under this gateway's name left in Redis (their
        users' leaves announced once in every room, nicknames and memberships
        released), without waiting for their leases to expire: a process restarted
        under the same name must not serve clients beside its ghost."""
        for dead in await self.bus.predecessors(self.name):
            # Addresses first: until the reap below, the predecessor stays listed,
            # so a failure here is retried with the next re-assertion.
            await self.bus.release_addresses(dead, force=True)
            released = await self.bus.reap(dead, force=True)
            log.warning("gateway.predecessor_reaped", predecessor=dead, released=len(released))

    async def reload_bans(self) -> None:
        """Reload the ban list and disconnect this gateway's clients it now covers."""
        try:
            await self.admission.load_bans()
        except RedisError as exc:
            log.warning("bans.load_failed", error=str(exc))
            return
        self.on_bans_loaded()

    # -- lease and reaper -------------------------------------------------------------
    async def _heartbeat(self) -> bool:
        """Renew the lease; ``False`` when it had lapsed (see :meth:`Bus.heartbeat`)."""
        held = await self.bus.heartbeat(
            self.settings.heartbeat_ttl_s,
            {
                "clients": self.client_count(),
                "listen": self.listen_address,
                "pid": os.getpid(),
                "started_at": int(self.started_at),
                "name": self.name,
            },
        )
        self.lease_renewed_at = trio.current_time()
        return held

    async def heartbeat_loop(self) -> None:
        reclaim_pending = False
        while True:
            if self.redis.connected:
                try:
                    # Any renewal on this connection (this loop's or a re-assertion's).
                    had_lease = self.lease_renewed_at >= self.redis.connected_at
                    held = await self._heartbeat()
                    if not held and had_lease:
                        # Same connection, yet our lease had lapsed (this process was
                        # paused, or Redis was too slow): the others may have released
                        # our users. Claim them back and tell the rooms.
                        log.warning("gateway.lease_lost", clients=len(self.nicknames))
                        reclaim_pending = True
                    if reclaim_pending:
                        reclaim_pending = not await self.reassert(announce=True)
                    # Pub/sub is at most once: a ban change announced while our
                    # subscriber was away is picked up here; so is a count that
                    # could not be written when a connection ended.
                    await self.reload_bans()
                    await self.admission.sync_quietly()
                    # Right after (re)connecting, our view of the leases is not to be
                    # trusted: after a Redis outage every lease looks expired until its
                    # owner has reconnected (its backoff may be longer than the lease)
                    # and renewed it.
                    if trio.current_time() - self.redis.connected_at < self._reap_grace_s():
                        await trio.sleep(self.settings.heartbeat_interval_s)
                        continue
                    for dead in await self.bus.dead_gateways():
                        # Its per-address counts first: until the reap, it stays
                        # listed, so a failure here is retried on the next beat.
                        addresses = await self.bus.release_addresses(dead)
                        released = await self.bus.reap(dead)
                        if addresses:
                            log.warning("gateway.addresses_released", dead_gateway=dead,
                                        addresses=addresses)
                        if released:
                            log.warning("gateway.reaped", dead_gateway=dead, released=len(released))
                except RedisError as exc:
                    log.warning("heartbeat.failed", error=str(exc))
            await trio.sleep(self.settings.heartbeat_interval_s)

    def _reap_grace_s(self) -> float:
        """How long after (re)connecting before leases are judged: a lease's
        lifetime, or long enough for every live gateway to have reconnected
        (its longest backoff plus a connect) and renewed, whichever is longer."""
        reconnect = RECONNECT_CAP_S + 2 * self.settings.redis_timeout_s
        return max(self.settings.heartbeat_ttl_s, reconnect + self.settings.heartbeat_interval_s)

    # -- canary ---------------------------------------------------------------------
    async def canary_loop(self) -> None:
        """Publish to our own node channel; if it does not come back, the subscriber
        loop is dead even if its socket looks fine: reconnect it.  The first canary
        goes out as soon as both connections are up, so readiness is proven early."""
        interval = self.settings.canary_interval_s
        if math.isinf(interval):
            return
        judged_from = trio.current_time()  # silence is counted from here at the earliest
        while True:
            if not (self.redis.connected and self.subscriber.connected):
                judged_from = trio.current_time()
                await trio.sleep(min(interval, 0.05))
                continue
            try:
                await self.bus.send_to_node(self.incarnation, Canary())
                self.canary_sent += 1
            except RedisError:
                pass
            await trio.sleep(interval)
            fresh = self.canary_fresh()
            self.metrics.subscriber_up.set(1 if self.subscriber.connected and fresh else 0)
            silent = trio.current_time() - max(self.last_canary, judged_from)
            if self.subscriber.connected and silent > self.settings.canary_timeout_s:
                log.error("redis.subscriber_stalled", silent_s=round(silent, 1))
                self.canary_failures += 1
                self.subscriber.force_reconnect()
                # Judge the new connection on its own canaries; readiness stays off
                # until one comes back.
                judged_from = trio.current_time()
