"""The gateway process: its parts, wired together.

A :class:`Gateway` creates and connects the parts of one process and nothing
more:

* the Redis command client and subscriber (:mod:`services.common.redis`) and
  the bus over them (:mod:`services.common.bus`);
* :class:`~services.gateway.server.Server`: listeners, PROXY, admission, drain;
* :class:`~services.gateway.rooms.Rooms`: local rooms, sequencing, gap fill,
  fan-out;
* :class:`~services.gateway.registry.Nicknames`: claims, renames, re-assertion;
* :class:`~services.gateway.membership.Membership`: lease, reaper, canary,
  Redis state and readiness;
* :class:`~services.gateway.outcomes.Outcomes`: lines whose publish got no answer.

It dispatches what the subscriber reads (room channels to the rooms, this
process's node channel and the broadcast channel here), and implements
:class:`~services.gateway.interfaces.Chat` for sessions and commands by
delegating to the parts.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import trio

from services.common.bus import (
    Bus,
    ClaimResult,
    PublishUncertain,
    RegisterResult,
    Resolution,
    epoch_check_command,
)
from services.common.bus.codec import (
    Announce,
    BansChanged,
    BroadcastMessage,
    Canary,
    Kick,
    MalformedMessage,
    NodeMessage,
    PrivateMessage,
    decode_broadcast,
    decode_node_message,
)
from services.common.config import HostPort, Settings
from services.common.http import serve_http
from services.common.keys import Keys, incarnation_id
from services.common.logging import LogThrottle
from services.common.metrics import Metrics
from services.common.redis import (
    RedisClient,
    RedisError,
    RedisUnavailable,
    Subscriber,
    redis_tls_context,
    topology_for,
)
from services.gateway import protocol as p
from services.gateway.accounts import Accounts, Checked
from services.gateway.admission import Admission
from services.gateway.commands import Commands
from services.gateway.interfaces import Member
from services.gateway.membership import Membership
from services.gateway.outcomes import Outcomes
from services.gateway.registry import Nicknames
from services.gateway.rooms import Rooms
from services.gateway.server import Server
from services.gateway.session import Session
from services.gateway.writer import OutboxBudget

log = structlog.get_logger()

DRAIN_REASON = "this gateway is shutting down; reconnect and you will land on another one"
# At most one bus.malformed (and one bus.handler_failed) line per this many
# seconds; the line carries how many were dropped without a line meanwhile.
BUS_LOG_INTERVAL_S = 10.0


class Gateway:
    """One gateway process.  Run :meth:`serve` with ``nursery.start``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.gateway_id: str = settings.gateway_id
        # This process's identity in Redis: the configured name plus a token of its
        # own, so a process restarted under the same name never takes its dead
        # predecessor's nicknames and rooms for its own.
        self.incarnation = incarnation_id(self.gateway_id, os.urandom(4).hex())
        self.keys = Keys(settings.key_prefix)
        self.metrics = Metrics(self.gateway_id)
        # Every client's output bytes together: N clients that stop reading cannot
        # hold more than this between them (the furthest behind are cut first).
        self.outbox_budget = OutboxBudget(settings.outbox_total_bytes)
        self.metrics.outbox_queued_bytes.set_function(lambda: self.outbox_budget.used)
        self._nursery: trio.Nursery | None = None
        redis_tls = redis_tls_context(settings)  # ConfigError for unusable files
        # Where the primary is (CHAT_REDIS_MODE); both connections follow it.
        self.topology = topology_for(settings)
        self.redis = RedisClient(
            settings.redis_url,
            timeout_s=settings.redis_timeout_s,
            name=f"chat:{self.gateway_id}:cmd",
            on_state=self._on_redis_state,
            on_reconnect=self.metrics.redis_reconnects_total.labels(connection="command").inc,
            tls=redis_tls,
            topology=self.topology,
            # Before this gateway publishes anything on a (new) primary: a new
            # epoch if the data may have gone back in time.
            setup=[epoch_check_command(self.keys)],
        )
        self.subscriber = Subscriber(
            settings.redis_url,
            self._on_message,
            on_batch_end=self._on_batch_end,
            timeout_s=settings.redis_timeout_s,
            name=f"chat:{self.gateway_id}:sub",
            on_state=self._on_redis_state,
            on_reconnect=self._on_subscriber_reconnect,
            tls=redis_tls,
            topology=self.topology,
        )
        self.bus = Bus(self.redis, self.keys, self.incarnation, room_ttl_s=settings.room_ttl_s,
                       log_bytes=settings.room_log_bytes,
                       history_bytes=settings.room_history_bytes)
        self.outcomes = Outcomes(
            self.bus, self.spawn, lambda: self.redis.connected and self.subscriber.connected
        )
        self.nicknames = Nicknames(settings, self.bus, self.metrics, spawn=self.spawn,
                                   incarnation=self.incarnation)
        self.rooms = Rooms(settings, self.keys, self.bus, self.subscriber, self.metrics,
                           spawn=self.spawn, saw_own=self.outcomes.saw,
                           incarnation=self.incarnation)
        self.accounts = Accounts(settings, self.bus)
        self.commands = Commands(self)
        self.admission = Admission(settings, self.bus)
        self.membership = Membership(
            settings, self.keys, self.bus, self.redis, self.subscriber, self.metrics,
            self.nicknames, name=self.gateway_id, incarnation=self.incarnation,
            client_count=lambda: len(self.server.sessions),
            tell_everyone=lambda line: self.server.tell_everyone(line),
            admission=self.admission,
            on_bans_loaded=lambda: self.server.disconnect_banned(),
        )
        self.server = Server(settings, self.metrics, make_session=self._make_session,
                             admitting=self.membership.first_available,
                             admission=self.admission)
        self.node_channel = self.keys.node_channel(self.incarnation).encode()
        self.all_channel = self.keys.all_channel.encode()
        self.http_port: int | None = None
        self._malformed_log = LogThrottle(BUS_LOG_INTERVAL_S)
        self._failed_log = LogThrottle(BUS_LOG_INTERVAL_S)

    # -- what tests and operators look at ---------------------------------------------
    @property
    def ports(self) -> list[int]:
        return self.server.ports

    @property
    def tls_ports(self) -> list[int]:
        return self.server.tls_ports

    @property
    def sessions(self) -> set[Any]:
        return self.server.sessions

    @property
    def available(self) -> bool:
        return self.membership.available

    @property
    def canary_failures(self) -> int:
        return self.membership.canary_failures

    @property
    def draining(self) -> bool:
        return self.membership.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.membership.draining = value

    def ready(self) -> tuple[bool, str]:
        return self.membership.ready()

    # -- serving --------------------------------------------------------------------
    async def serve(self, *, task_status: trio.TaskStatus[list[int]] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Connect to Redis (in the background), listen, and serve until cancelled.
        ``task_status.started`` receives the bound chat ports once listening."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.subscriber.wanted.update({self.node_channel, self.all_channel})
            await nursery.start(self.topology.watch)
            await nursery.start(self.redis.run)
            await nursery.start(self.subscriber.run)
            nursery.start_soon(self.membership.watch_redis_state)
            nursery.start_soon(self.membership.heartbeat_loop)
            nursery.start_soon(self.membership.canary_loop)
            ports = await nursery.start(self.server.serve)
            listen = self.settings.listen
            if ports:
                self.membership.listen_address = str(HostPort(listen.host, ports[0]))
            log.info(
                "gateway.started",
                incarnation=self.incarnation,
                listen=str(self.settings.listen),
                ports=ports,
                tls_ports=self.server.tls_ports,
                redis=str(self.settings.redis_url),
                pid=os.getpid(),
                max_clients=self.settings.max_clients,
                open_files=self.server.open_files,
                capacity=self.server.capacity,
            )
            if self.settings.http_listen is not None:
                hp = self.settings.http_listen
                self.http_port = await nursery.start(
                    functools.partial(serve_http, hp.host, hp.port, ready=self.ready,
                                      metrics=self.metrics)
                )
                log.info("http.started", listen=f"{hp.host}:{self.http_port}")
            task_status.started(ports)

    def _make_session(self, stream: trio.abc.Stream, peer: str) -> Session:
        return Session(self, self.commands, stream, peer)

    async def drain(self) -> None:
        """Stop accepting, tell every client why, release everything, within the deadline."""
        self.draining = True
        log.info("gateway.draining", clients=len(self.server.sessions))
        with trio.move_on_after(self.settings.drain_timeout_s):
            await self.server.drain(DRAIN_REASON)
            try:
                await self.bus.release_addresses(self.incarnation, force=True)
                await self.bus.retire()
            except RedisUnavailable:
                pass
            except RedisError as exc:
                log.warning("gateway.retire_failed", error=str(exc))
        log.info("gateway.stopped", clients_left=len(self.server.sessions))

    # -- what the subscriber reads ---------------------------------------------------
    def _on_message(self, channel: bytes, data: bytes) -> None:
        """Dispatch one message.  Nothing raises into the subscriber's reader: a
        malformed message is counted, logged (rate limited) and dropped; a bug in
        handling a valid one is logged with its traceback (rate limited) and the
        message dropped, so no message can end the reader or the process."""
        kind = "other"
        try:
            if channel.startswith(self.rooms.channel_prefix):
                kind = "room"
                self.rooms.on_publication(channel, data)
            elif channel == self.node_channel:
                kind = "node"
                self._on_node_message(decode_node_message(data))
            elif channel == self.all_channel:
                kind = "all"
                self._on_broadcast(decode_broadcast(data))
        except MalformedMessage as exc:
            self.metrics.bus_malformed_total.labels(channel=kind).inc()
            if self._malformed_log.allow():
                log.error("bus.malformed", channel=channel.decode(errors="replace"),
                          error=str(exc)[:200], size=len(data),
                          suppressed=self._malformed_log.take_suppressed())
        except Exception:
            self.metrics.bus_malformed_total.labels(channel=kind).inc()
            if self._failed_log.allow():
                log.exception("bus.handler_failed", channel=channel.decode(errors="replace"),
                              size=len(data), suppressed=self._failed_log.take_suppressed())

    def _on_batch_end(self) -> None:
        self.rooms.flush_batch()

    def _on_node_message(self, message: NodeMessage) -> None:
        match message:
            case Canary():
                self.membership.on_canary()
            case Kick(nick=nick, reason=reason):
                member = self.nicknames.get(p.fold_nick(nick))
                if member is not None:
                    reason = p.sanitize(reason) or "no reason given"
                    member.log.info("client.kicked", reason=reason)
                    member.disconnect(f"kicked by an operator: {reason}")
            case PrivateMessage(to=to, sender=sender, text=text):
                member = self.nicknames.get(to)
                if member is not None:
                    member.deliver(p.private_line(member.nick or "", sender, p.sanitize(text)))

    def _on_broadcast(self, message: BroadcastMessage) -> None:
        match message:
            case Announce(text=text):
                line = p.info(f"announcement: {p.sanitize(text)}")
                for member in list(self.nicknames.by_nick.values()):
                    member.deliver(line)
            case BansChanged():
                self.spawn(self.membership.reload_bans)

    def _on_redis_state(self, connected: bool) -> None:
        self.membership.on_redis_state(connected)

    def _on_subscriber_reconnect(self) -> None:
        self.metrics.redis_reconnects_total.labels(connection="subscriber").inc()
        self.spawn(self.rooms.catch_up, lambda: self.subscriber.connected)

    # -- Chat (what sessions and commands use) -----------------------------------------
    def spawn(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Start a background task owned by the gateway (it ends with the gateway)."""
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)

    def count_rejected(self, reason: str) -> None:
        self.metrics.rejected_lines_total.labels(reason=reason).inc()

    def count_slow_consumer(self) -> None:
        self.metrics.slow_consumer_disconnects_total.inc()

    def count_outbox_budget_cut(self) -> None:
        self.metrics.outbox_budget_disconnects_total.inc()

    def count_message_in(self) -> None:
        self.metrics.messages_in_total.inc()

    async def claim_nick(
        self, member: Member, folded: str, nick: str, proven_hash: str = ""
    ) -> ClaimResult:
        return await self.nicknames.claim(member, folded, nick, proven_hash)

    async def rename(self, member: Member, new: str, proven_hash: str = "") -> str:
        return await self.nicknames.rename(member, new, proven_hash)

    async def check_password(self, folded: str, address: str, password: str) -> Checked:
        return await self.accounts.check(folded, address, password)

    async def register_account(
        self, member: Member, password: str, address: str
    ) -> tuple[str, float]:
        assert member.folded is not None and member.nick is not None
        result, password_hash, retry_s = await self.accounts.register(
            member.folded, member.nick, password, address
        )
        if result is RegisterResult.REGISTERED:
            member.account_hash = password_hash
        return {
            RegisterResult.REGISTERED: "registered",
            RegisterResult.ALREADY_REGISTERED: "already",
            RegisterResult.NOT_OURS: "lost",
            RegisterResult.ADDRESS_LIMITED: "limited",
        }[result], retry_s

    async def change_password(self, member: Member, old_hash: str, new_password: str) -> bool:
        assert member.folded is not None
        new_hash = await self.accounts.change(member.folded, old_hash, new_password)
        if new_hash is None:
            return False
        member.account_hash = new_hash
        return True

    async def forget(self, member: Member, reason: str = "") -> None:
        await self.rooms.leave_all(member)
        await self.nicknames.release(member, reason)

    async def join_room(
        self, member: Member, name: str, *, kind: str = "join", greeting: bytes = b"",
        may_create: bool = True,
    ) -> bool:
        return await self.rooms.join(member, name, kind=kind, greeting=greeting,
                                     may_create=may_create)

    async def part_room(self, member: Member, name: str) -> None:
        await self.rooms.part(member, name)

    async def publish(
        self, room: str, kind: str, nick: str, text: str = "",
        *, on_lost: Callable[[], None] | None = None,
    ) -> int:
        started = trio.current_time()
        seq, epoch = await self.bus.publish_in_epoch(room, kind, nick, text)
        self.metrics.publish_latency_seconds.observe(trio.current_time() - started)
        if on_lost is not None:
            self.rooms.await_echo(room, epoch, seq, on_lost)
        return seq

    def resolve_later(
        self, uncertain: PublishUncertain, report: Callable[[Resolution], None]
    ) -> None:
        self.outcomes.resolve_later(uncertain, report)

    async def wait_delivered(self, room: str, seq: int, timeout_s: float) -> None:
        await self.rooms.wait_delivered(room, seq, timeout_s)

    async def online(self, limit: int) -> tuple[int, list[str]]:
        return await self.bus.online(limit)

    async def room_members(self, room: str, limit: int) -> tuple[int, list[str]]:
        return await self.bus.room_members(room, limit)

    async def room_counts(self, limit: int) -> tuple[int, list[tuple[str, int]]]:
        return await self.bus.rooms(limit)

    async def send_private(self, sender: str, target: str, text: str) -> str | None:
        folded = p.fold_nick(target)
        owner = await self.bus.nick_owner(folded)
        if owner is None:
            return None
        gateway, display = owner
        receivers = await self.bus.send_to_node(
            gateway, PrivateMessage(to=folded, sender=sender, text=text)
        )
        if receivers == 0:
            raise LookupError(display)
        return display
