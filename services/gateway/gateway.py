"""The gateway: listener, local registry, fan-out, and the cluster duties.

A :class:`Gateway` owns everything one process serves: the Redis command client
and subscriber, the sessions, the local view of rooms (which local sessions are
in which room), the heartbeat lease, the reaper of dead gateways, the canary
that proves the subscriber loop is alive, and the graceful drain.

Fan-out is synchronous: :meth:`Gateway._on_message` is called by the subscriber's
reader for every Redis message, decodes it once, formats it once and hands the
same bytes to each local member's outbox.  It never waits on a client.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from services.common.bus import (
    REPLAY_WINDOW,
    Bus,
    Publication,
    decode_publication,
)
from services.common.config import Settings
from services.common.http import serve_http
from services.common.keys import Keys, incarnation_id
from services.common.metrics import Metrics
from services.common.redis import Backoff, RedisClient, RedisError, RedisUnavailable, Subscriber
from services.gateway import protocol as p
from services.gateway.commands import Commands
from services.gateway.outcomes import Outcomes
from services.gateway.proxy_protocol import ProxyProtocolError, is_trusted, read_proxy_header
from services.gateway.session import Session

log = structlog.get_logger()

PROXY_HEADER_TIMEOUT_S = 5.0
FD_RESERVE = 64
# A client arriving before the gateway could serve it for the first time (Redis
# connected, subscriber up, predecessors settled) waits this long, not refused.
STARTUP_HOLD_S = 5.0
# Publications held while a gap is filled; past this, fill what can be and say so.
BACKLOG_LIMIT = 20000
GAP_FILL_GIVE_UP_S = 60.0


@dataclass(eq=False)
class LocalRoom:
    """This gateway's view of one room: its local members and the channel's state."""

    name: str
    channel: bytes
    members: set[Session] = field(default_factory=set)
    joining: dict[Session, list[Publication]] = field(default_factory=dict)
    subscribed: bool = False
    epoch: str | None = None
    last_seq: int | None = None
    filling: bool = False
    fill_abandoned: bool = False
    fill_upto: int = 0  # the newest sequence number known to exist when the fill began
    backlog: list[Publication] = field(default_factory=list)
    progress: trio.Event | None = None  # set on each delivery while someone waits

    @property
    def empty(self) -> bool:
        return not self.members and not self.joining


class Gateway:
    """One gateway process's state.  Run :meth:`serve` with ``nursery.start``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.gateway_id: str = settings.gateway_id
        # This process's identity in Redis: the configured name plus a token of its
        # own, so a process restarted under the same name never takes its dead
        # predecessor's nicknames and rooms for its own.
        self.incarnation = incarnation_id(self.gateway_id, os.urandom(4).hex())
        self.started_at = time.time()
        self.keys = Keys(settings.key_prefix)
        self.metrics = Metrics(self.gateway_id)
        self.redis = RedisClient(
            settings.redis_url,
            timeout_s=settings.redis_timeout_s,
            name=f"chat:{self.gateway_id}:cmd",
            on_state=self._on_redis_state,
            on_reconnect=self.metrics.redis_reconnects_total.labels(connection="command").inc,
        )
        self.subscriber = Subscriber(
            settings.redis_url,
            self._on_message,
            on_batch_end=self._flush_batch,
            timeout_s=settings.redis_timeout_s,
            name=f"chat:{self.gateway_id}:sub",
            on_state=self._on_redis_state,
            on_reconnect=self._on_subscriber_reconnect,
        )
        self.bus = Bus(self.redis, self.keys, self.incarnation)
        self.commands = Commands(self)
        self.sessions: set[Session] = set()
        self.dirty: list[Session] = []  # sessions with fan-out bytes queued in this batch
        self.by_nick: dict[str, Session] = {}
        self.claiming: set[str] = set()
        self.rooms: dict[str, LocalRoom] = {}
        self.node_channel = self.keys.node_channel(self.incarnation).encode()
        self.all_channel = self.keys.all_channel.encode()
        self.room_prefix = self.keys.room_channel("").encode()
        self.available = False
        self._first_available = trio.Event()
        self.draining = False
        self.ports: list[int] = []
        self.capacity = settings.max_clients
        self.http_port: int | None = None
        self.last_canary = -math.inf
        self.canary_failures = 0
        self.lease_renewed_at = -math.inf
        self.known_epoch: bytes | None = None
        self.canary_sent = 0
        self._state_changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._listen_scope = trio.CancelScope()
        self._all_gone = trio.Event()
        self.outcomes = Outcomes(
            self.bus, self.spawn, lambda: self.redis.connected and self.subscriber.connected
        )

    # -- metrics hooks ----------------------------------------------------------------
    def metrics_rejected(self, reason: str) -> None:
        self.metrics.rejected_lines_total.labels(reason=reason).inc()

    def metrics_slow_consumer(self) -> None:
        self.metrics.slow_consumer_disconnects_total.inc()

    def metrics_message_in(self) -> None:
        self.metrics.messages_in_total.inc()

    # -- readiness ----------------------------------------------------------------------
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

    # -- serving --------------------------------------------------------------------------
    async def serve(self, *, task_status: trio.TaskStatus[list[int]] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Connect to Redis (in the background), listen, and serve until cancelled.

        ``task_status.started`` receives the bound chat ports once listening.
        """
        open_files = raise_open_files_limit()
        # Each client costs one descriptor; keep some for Redis, HTTP, logs.
        capacity = max(0, min(self.settings.max_clients, open_files - FD_RESERVE))
        if capacity < self.settings.max_clients:
            log.warning("gateway.capacity_limited", max_clients=self.settings.max_clients,
                        open_files=open_files, capacity=capacity)
        self.capacity = capacity
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.subscriber.wanted.update({self.node_channel, self.all_channel})
            await nursery.start(self.redis.run)
            await nursery.start(self.subscriber.run)
            nursery.start_soon(self._watch_redis_state)
            nursery.start_soon(self._heartbeat_loop)
            nursery.start_soon(self._canary_loop)
            listen = self.settings.listen
            listeners = await trio.open_tcp_listeners(listen.port, host=listen.host or None)
            self.ports = [ln.socket.getsockname()[1] for ln in listeners]
            log.info(
                "gateway.started",
                incarnation=self.incarnation,
                listen=str(listen),
                ports=self.ports,
                redis=str(self.settings.redis_url),
                pid=os.getpid(),
                max_clients=self.settings.max_clients,
                open_files=open_files,
                capacity=capacity,
            )
            nursery.start_soon(self._accept, listeners)
            if self.settings.http_listen is not None:
                hp = self.settings.http_listen
                self.http_port = await nursery.start(
                    functools.partial(serve_http, hp.host, hp.port, ready=self.ready,
                                      metrics=self.metrics)
                )
                log.info("http.started", listen=f"{hp.host}:{self.http_port}")
            task_status.started(self.ports)

    async def _accept(self, listeners: list[trio.SocketListener]) -> None:
        with self._listen_scope:
            await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        peer = _peer_name(stream)
        _enable_keepalive(stream)
        leftover = b""
        if self.settings.proxy_protocol:
            proxied = await self._read_proxy_header(stream, peer)
            if proxied is None:
                return
            peer, leftover = proxied
        if not self._first_available.is_set():
            # Starting up: serve this client once we can, rather than refuse it.
            with trio.move_on_after(STARTUP_HOLD_S):
                await self._first_available.wait()
        session = Session(self, stream, peer)
        if len(self.sessions) >= self.capacity or self.draining:
            reason = "gateway shutting down" if self.draining else "server full"
            log.warning("client.refused", peer=peer, reason=reason)
            with trio.move_on_after(1.0):
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(p.error(f"disconnected: {reason}; try again later"))
            await trio.aclose_forcefully(stream)
            return
        self.sessions.add(session)
        self.metrics.connections.inc()
        self.metrics.connections_total.inc()
        try:
            await session.run(leftover)
        except Exception:
            # One client's bug must not take the gateway down: log it once, with traceback.
            log.exception("client.crashed", conn=session.conn_id, peer=peer)
        finally:
            self.sessions.discard(session)
            self.metrics.connections.dec()
            if self.draining and not self.sessions:
                self._all_gone.set()

    async def _read_proxy_header(
        self, stream: trio.SocketStream, peer: str
    ) -> tuple[str, bytes] | None:
        """The real client address from a PROXY header, and the bytes after it;
        ``None`` (connection closed, event logged) when it is untrusted or malformed."""
        peer_ip = peer.rsplit(":", 1)[0].strip("[]")
        if not is_trusted(peer_ip, self.settings.trusted_proxies):
            log.warning("proxy.untrusted", peer=peer)
            await trio.aclose_forcefully(stream)
            return None
        try:
            header, leftover = await read_proxy_header(stream, PROXY_HEADER_TIMEOUT_S)
        except ProxyProtocolError as exc:
            log.warning("proxy.malformed", peer=peer, error=str(exc))
            await trio.aclose_forcefully(stream)
            return None
        if header.source is None:  # LOCAL: a health check from the proxy itself
            return peer, leftover
        host, port = header.source
        return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}"), leftover

    # -- nicknames and rooms ----------------------------------------------------------------
    async def claim_nick(self, session: Session, folded: str, nick: str) -> bool:
        """Claim a nickname for ``session`` across the cluster.  Raises RedisError."""
        if folded in self.by_nick or folded in self.claiming:
            return False
        self.claiming.add(folded)
        try:
            if not await self.bus.claim_nick(folded, nick):
                return False
        except RedisUnavailable:
            # The claim may still reach Redis after we gave up on it: release it
            # later unless this gateway meanwhile gave the name to someone.
            self.spawn(self._release_orphan, folded, nick)
            raise
        finally:
            self.claiming.discard(folded)
        session.nick, session.folded = nick, folded
        self.by_nick[folded] = session
        self.metrics.joins_total.inc()
        return True

    def spawn(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Start a background task owned by the gateway (it ends with the gateway)."""
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)

    async def _release_orphan(self, folded: str, nick: str) -> None:
        for _ in range(10):
            await trio.sleep(self.settings.redis_timeout_s)
            if folded in self.by_nick or folded in self.claiming:
                return
            try:
                await self.bus.release_nick(folded, nick)
                return
            except RedisError:
                continue

    async def join_room(
        self, session: Session, name: str, *, kind: str = "join", greeting: bytes = b""
    ) -> None:
        """Make ``session`` a member of room ``name`` here and in Redis, replay the
        room's history to it, then announce the join.  Raises RedisError (the
        session is then not a member)."""
        assert session.nick is not None and session.folded is not None
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = LocalRoom(name, self.keys.room_channel(name).encode())
        room.joining[session] = []
        try:
            if not room.subscribed:
                await self.subscriber.subscribe(room.channel)
                room.subscribed = True
            await self.bus.join_room(name, session.folded, session.nick)
            history = await self.bus.history(name, self.settings.history_size)
        except BaseException:
            room.joining.pop(session, None)
            await self._drop_room_if_empty(room)
            raise
        buffered = room.joining.pop(session, [])
        room.members.add(session)
        if greeting:
            session.deliver(greeting)
        if name in session.rooms:
            session.rooms.remove(name)
        session.rooms.append(name)
        last_seen = self._replay_history(session, room, history)
        for pub in buffered:
            if pub.seq > last_seen:
                session.deliver(self._format(room.name, pub))
        try:
            await self.bus.publish(name, kind, session.nick)
        except RedisError as exc:
            # The membership stands; only the announcement was lost.
            session.log.warning("room.join_unannounced", room=name, error=str(exc))

    def _replay_history(self, session: Session, room: LocalRoom, history: list[bytes]) -> int:
        chat: list[Publication] = []
        last_seq = 0
        for raw in history:
            try:
                pub = decode_publication(raw)
            except (ValueError, KeyError, TypeError):
                continue
            last_seq = max(last_seq, pub.seq)
            if pub.kind in ("msg", "act"):
                chat.append(pub)
        shown = chat[-self.settings.history_size :] if self.settings.history_size else []
        if shown:
            session.deliver(p.info(f"last {len(shown)} messages in {room.name}:"))
            for pub in shown:
                session.deliver(self._format(room.name, pub, history=True))
            session.deliver(p.info(f"end of history of {room.name}"))
        return last_seq

    async def part_room(self, session: Session, name: str) -> None:
        """Leave one room (not the last one) and announce it.  Raises RedisError."""
        assert session.nick is not None and session.folded is not None
        await self.bus.publish(name, "part", session.nick)
        await self.bus.leave_room(name, session.folded)
        session.rooms.remove(name)
        room = self.rooms.get(name)
        if room is not None:
            room.members.discard(session)
            await self._drop_room_if_empty(room)

    async def _drop_room_if_empty(self, room: LocalRoom) -> None:
        if room.empty and self.rooms.get(room.name) is room:
            del self.rooms[room.name]
            if room.subscribed:
                await self.subscriber.unsubscribe(room.channel)

    async def forget(self, session: Session, reason: str = "") -> None:
        """Remove a leaving session everywhere: local rooms, then Redis (nickname,
        memberships and the leave announcements, in one atomic step)."""
        for name in list(session.rooms):
            room = self.rooms.get(name)
            if room is not None:
                room.members.discard(session)
                room.joining.pop(session, None)
        for name in list(self.rooms):
            room = self.rooms.get(name)
            if room is not None:
                room.joining.pop(session, None)
                await self._drop_room_if_empty(room)
        if session.folded is None or session.nick is None:
            return
        folded, nick = session.folded, session.nick
        if self.by_nick.get(folded) is session:
            del self.by_nick[folded]
        await self.bus.release_nick(folded, nick, reason)

    async def rename(self, session: Session, new: str) -> int:
        """1 renamed, 0 taken.  Raises RedisError."""
        assert session.nick is not None and session.folded is not None
        new_folded = p.fold_nick(new)
        if new_folded != session.folded and (
            new_folded in self.by_nick or new_folded in self.claiming
        ):
            return 0
        self.claiming.add(new_folded)
        try:
            result = await self.bus.rename_nick(session.folded, session.nick, new_folded, new)
        finally:
            self.claiming.discard(new_folded)
        if result != 1:
            return 0
        old = session.nick
        del self.by_nick[session.folded]
        session.nick, session.folded = new, new_folded
        self.by_nick[new_folded] = session
        session.rebind()
        for name in session.rooms:
            try:
                await self.bus.publish(name, "nick", old, new)
            except RedisError as exc:
                # The rename itself is done; only this room's announcement is lost.
                session.log.warning("nick.rename_unannounced", room=name, error=str(exc))
        return 1

    async def publish(self, room: str, kind: str, nick: str, text: str = "") -> int:
        """Publish in ``room``; returns the sequence number.  Raises RedisError."""
        started = trio.current_time()
        seq = await self.bus.publish(room, kind, nick, text)
        self.metrics.publish_latency_seconds.observe(trio.current_time() - started)
        return seq

    async def wait_delivered(self, room_name: str, seq: int, timeout_s: float) -> None:
        """Wait (bounded) until this gateway has delivered ``room_name`` up to ``seq``,
        so a client leaving right after sending still sees its own last line."""
        with trio.move_on_after(timeout_s):
            while True:
                room = self.rooms.get(room_name)
                if room is None or room.last_seq is None or room.last_seq >= seq:
                    return
                if room.progress is None:
                    room.progress = trio.Event()
                await room.progress.wait()

    # -- fan-out ----------------------------------------------------------------------------
    def _on_message(self, channel: bytes, data: bytes) -> None:
        try:
            if channel.startswith(self.room_prefix):
                room = self.rooms.get(channel[len(self.room_prefix) :].decode())
                if room is not None:
                    self._accept_publication(room, decode_publication(data))
            elif channel == self.node_channel:
                self._on_node_message(json.loads(data))
            elif channel == self.all_channel:
                self._on_broadcast(json.loads(data))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            log.error("bus.malformed", channel=channel.decode(errors="replace"), error=str(exc))

    def _flush_batch(self) -> None:
        """End of one read from Redis: write each touched client's bytes in one go."""
        dirty, self.dirty = self.dirty, []
        for session in dirty:
            session.flush()

    def _accept_publication(self, room: LocalRoom, pub: Publication) -> None:
        """Deliver publications of a room in sequence order, each once; a gap (a
        sequence number skipped) is filled from the room's log before anything
        newer is delivered."""
        if pub.id and pub.gateway == self.incarnation:
            self.outcomes.saw(pub.id)
        if room.filling:
            room.backlog.append(pub)
            if len(room.backlog) > BACKLOG_LIMIT:
                room.fill_abandoned = True
            return
        if room.epoch != pub.epoch:
            if room.epoch is None:
                # The first publication since this gateway subscribed: the numbering
                # starts here (members who join later get the history).
                room.epoch, room.last_seq = pub.epoch, pub.seq
                self._fan_out(room, pub)
                return
            if _epoch_order(pub.epoch) < _epoch_order(room.epoch):
                log.warning("bus.stale_epoch", room=room.name, epoch=pub.epoch, seq=pub.seq)
                return
            # Redis lost its data and numbering restarted: everything of the new
            # epoch counts, from seq 1, whatever this gateway missed while it was
            # resubscribing.
            log.info("room.new_epoch", room=room.name, old=room.epoch, new=pub.epoch)
            room.epoch, room.last_seq = pub.epoch, 0
        assert room.last_seq is not None
        if pub.seq <= room.last_seq:
            return  # already delivered (a gap fill overlapped the live stream)
        if pub.seq > room.last_seq + 1:
            self._start_fill(room, [pub])
            return
        room.last_seq = pub.seq
        self._fan_out(room, pub)

    def _start_fill(self, room: LocalRoom, backlog: list[Publication], upto: int = 0) -> None:
        room.filling = True
        room.fill_abandoned = False
        room.fill_upto = upto
        room.backlog.extend(backlog)
        assert self._nursery is not None
        self._nursery.start_soon(self._fill_gap, room)

    def _fan_out(self, room: LocalRoom, pub: Publication) -> None:
        if pub.time:
            self.metrics.observe_subscriber_lag(time.time() - pub.time)
        line = self._format(room.name, pub)
        for session in room.members:
            session.deliver_batched(line)
        for buffer in room.joining.values():
            buffer.append(pub)
        if room.progress is not None:
            room.progress.set()
            room.progress = None
        self.metrics.deliveries_total.inc(len(room.members))

    async def _fill_gap(self, room: LocalRoom) -> None:
        """Deliver what the subscriber missed from the room's log, then the backlog.

        A read that fails because Redis is not reachable is retried once it is,
        while newer publications wait in the backlog; only what the log no longer
        holds (or a fill given up after :data:`GAP_FILL_GIVE_UP_S`) is skipped, and
        the room's members are told so in one line."""
        entries: list[bytes] = []
        backoff = Backoff(base_s=0.05, cap_s=1.0)
        with trio.move_on_after(GAP_FILL_GIVE_UP_S) as give_up:
            while not room.fill_abandoned and self.rooms.get(room.name) is room:
                try:
                    entries = await self.bus.log(room.name, self._gap_size(room))
                    break
                except RedisError as exc:
                    log.info("gap.fill_retry", room=room.name, error=str(exc))
                    await trio.sleep(backoff.next_delay())
        if give_up.cancelled_caught or room.fill_abandoned:
            log.error("gap.fill_failed", room=room.name, backlog=len(room.backlog))
        pubs: dict[int, Publication] = {}
        expected_from = (room.last_seq or 0) + 1
        for raw in entries:
            try:
                pub = decode_publication(raw)
            except (ValueError, KeyError, TypeError):
                continue
            if pub.epoch == room.epoch and pub.seq >= expected_from:
                pubs[pub.seq] = pub
        newer_epoch: list[Publication] = []
        for pub in room.backlog:
            if pub.epoch == room.epoch:
                if pub.seq >= expected_from:
                    pubs.setdefault(pub.seq, pub)
            elif room.epoch is None or _epoch_order(pub.epoch) > _epoch_order(room.epoch):
                newer_epoch.append(pub)
        room.backlog = []
        room.filling = False
        missing = 0
        recovered = 0
        for seq in sorted(pubs):
            if room.last_seq is not None and seq > room.last_seq + 1:
                missing += seq - room.last_seq - 1
            room.last_seq = seq
            self._fan_out(room, pubs[seq])
            recovered += 1
        if missing:
            log.error("gap.unrecoverable", room=room.name, missing=missing)
            for session in room.members:
                session.deliver(p.missed_line(room.name, missing))
        self._flush_batch()
        log.info("gap.filled", room=room.name, delivered=recovered, missing=missing)
        for pub in newer_epoch:
            self._accept_publication(room, pub)
        self._flush_batch()

    @staticmethod
    def _gap_size(room: LocalRoom) -> int:
        """How many of the log's newest entries cover the gap (all of them when the
        epoch changed or the top is unknown)."""
        same = [pub.seq for pub in room.backlog if pub.epoch == room.epoch]
        if room.fill_upto:
            same.append(room.fill_upto)
        if not same or room.last_seq is None:
            return REPLAY_WINDOW
        # Entries published after the backlog's newest one push it back in the log.
        return max(same) - room.last_seq + len(room.backlog) + 64

    def _format(self, room: str, pub: Publication, *, history: bool = False) -> bytes:
        kind = pub.kind
        if kind == "msg":
            if history:
                return f"{room} (history) <{pub.nick}> {pub.text}\r\n".encode()
            return p.chat_line(room, pub.nick, pub.text)
        if kind == "act":
            if history:
                return f"{room} (history) * {pub.nick} {pub.text}\r\n".encode()
            return p.action_line(room, pub.nick, pub.text)
        if kind == "join":
            return p.event_line(room, f"{pub.nick} joined the chat!")
        if kind == "leave":
            suffix = f" ({pub.text})" if pub.text else ""
            return p.event_line(room, f"{pub.nick} left the chat!{suffix}")
        if kind == "enter":
            return p.event_line(room, f"{pub.nick} joined {room}")
        if kind == "part":
            return p.event_line(room, f"{pub.nick} left {room}")
        if kind == "nick":
            return p.event_line(room, f"{pub.nick} is now known as {pub.text}")
        return p.event_line(room, f"{pub.nick}: {pub.text}")

    def _on_node_message(self, msg: dict[str, Any]) -> None:
        kind = msg.get("t")
        if kind == "canary":
            self.last_canary = trio.current_time()
            self.metrics.subscriber_up.set(1)
        elif kind == "kick":
            session = self.by_nick.get(p.fold_nick(str(msg.get("nick", ""))))
            if session is not None:
                reason = str(msg.get("reason") or "no reason given")
                session.log.info("client.kicked", reason=reason)
                session.disconnect(f"kicked by an operator: {reason}")
        elif kind == "pm":
            session = self.by_nick.get(str(msg.get("to", "")))
            if session is not None:
                session.deliver(
                    p.private_line(session.nick or "", str(msg["from"]), p.sanitize(str(msg["text"])))
                )

    def _on_broadcast(self, msg: dict[str, Any]) -> None:
        if msg.get("t") == "announce":
            line = p.info(f"announcement: {p.sanitize(str(msg.get('text', '')))}")
            for session in self.sessions:
                if session.nick is not None:
                    session.deliver(line)

    def broadcast_local(self, line: bytes) -> None:
        for session in self.sessions:
            session.deliver(line)

    def _on_subscriber_reconnect(self) -> None:
        self.metrics.redis_reconnects_total.labels(connection="subscriber").inc()
        if self._nursery is not None:
            self._nursery.start_soon(self._catch_up)

    async def _catch_up(self) -> None:
        """After the subscriber reconnected (and Redis confirmed every subscription),
        fill what every room missed meanwhile, even if no new publication arrives to
        reveal the gap.  Retried until Redis answers, while the subscriber stays up."""
        backoff = Backoff(base_s=0.05, cap_s=1.0)
        while self.subscriber.connected:
            rooms = [room for room in self.rooms.values() if room.last_seq is not None]
            if not rooms:
                return
            try:
                epoch, seqs = await self.bus.room_position([room.name for room in rooms])
                break
            except RedisError as exc:
                log.info("gap.check_retry", error=str(exc))
                await trio.sleep(backoff.next_delay())
        else:
            return
        for room, seq in zip(rooms, seqs, strict=True):
            if room.filling or room.last_seq is None or epoch is None or seq == 0:
                continue
            if self.rooms.get(room.name) is not room:
                continue
            if epoch != room.epoch:
                if room.epoch is not None and _epoch_order(epoch) < _epoch_order(room.epoch):
                    continue
                log.info("room.new_epoch", room=room.name, old=room.epoch, new=epoch)
                room.epoch, room.last_seq = epoch, 0
            if seq > room.last_seq:
                self._start_fill(room, [], upto=seq)

    # -- Redis state ------------------------------------------------------------------------
    def _on_redis_state(self, connected: bool) -> None:
        self.metrics.redis_up.set(1 if self.redis.connected else 0)
        if not self.subscriber.connected:
            self.metrics.subscriber_up.set(0)
        elif math.isinf(self.settings.canary_interval_s):
            self.metrics.subscriber_up.set(1)  # no canary: the connection is all we know
        self._state_changed.set()

    async def _watch_redis_state(self) -> None:
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
                self.broadcast_local(
                    p.info("chat interrupted: lost the connection to Redis; reconnecting...")
                )
            else:
                if not await self._reassert_until_done():
                    continue  # lost Redis again meanwhile; the next state change decides
                self.available = True
                self._first_available.set()
                if ever:
                    log.info("chat.restored")
                    self.broadcast_local(p.info("chat is back"))
            was_available = now
            ever = ever or now

    async def _reassert_until_done(self) -> bool:
        """Re-assert, retrying while Redis stays connected; ``False`` if it went away."""
        backoff = Backoff(base_s=0.2, cap_s=2.0)
        while self.redis.connected:
            if await self._reassert():
                return True
            await trio.sleep(backoff.next_delay())
        return False

    async def _reassert(self, *, announce: bool = False) -> bool:
        """After a reconnect Redis may be empty, and after a lapsed lease other
        gateways may have released our users: claim every live nickname again,
        rejoin rooms, release what Redis still holds for sessions that are gone.
        With ``announce``, users whose nickname had been released are announced
        as joining again (the others were told they left)."""
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
            held = await self.bus.owned_nicks()
            for folded in held - set(self.by_nick) - self.claiming:
                owner = await self.bus.nick_owner(folded)
                if owner is not None and owner[0] == self.incarnation:
                    await self.bus.release_nick(folded, owner[1], "connection lost")
            for folded, session in list(self.by_nick.items()):
                assert session.nick is not None
                claimed = await self.bus.claim_nick(folded, session.nick)
                if not claimed:
                    await self._resolve_conflict(session)
                    continue
                for name in session.rooms:
                    await self.bus.join_room(name, folded, session.nick)
                    if announce and claimed == 2:
                        await self.bus.publish(name, "join", session.nick)
        except RedisError as exc:
            log.warning("redis.reassert_failed", error=str(exc))
            return False
        log.info("redis.reasserted", nicks=len(self.by_nick))
        return True

    async def _settle_predecessors(self) -> None:
        """End what earlier processes under this gateway's name left in Redis (their
        users' leaves announced once in every room, nicknames and memberships
        released), without waiting for their leases to expire: a process restarted
        under the same name must not serve clients beside its ghost."""
        for dead in await self.bus.predecessors(self.gateway_id):
            released = await self.bus.reap(dead, force=True)
            log.warning("gateway.predecessor_reaped", predecessor=dead, released=len(released))

    async def _resolve_conflict(self, session: Session) -> None:
        """Another gateway re-asserted this nickname first: that one keeps it (first
        come after a restart wins), this session is renamed."""
        assert session.nick is not None and session.folded is not None
        old = session.nick
        del self.by_nick[session.folded]
        for attempt in range(20):
            suffix = f"_{os.urandom(2).hex()}" if attempt else "_"
            new = (old[: p.NICK_MAX - len(suffix)] + suffix) if attempt else (old[:31] + "_")
            folded = p.fold_nick(new)
            if folded in self.by_nick:
                continue
            if await self.bus.claim_nick(folded, new):
                session.nick, session.folded = new, folded
                session.rebind()
                self.by_nick[folded] = session
                for name in session.rooms:
                    await self.bus.join_room(name, folded, new)
                    await self.bus.publish(name, "nick", old, new)
                session.log.warning("nick.conflict_renamed", old=old, new=new)
                session.deliver(
                    p.error(f'your nickname "{old}" was taken by another user while this '
                            f'gateway was out of touch with the cluster; you are now "{new}"')
                )
                return
        session.disconnect(f'nickname "{old}" lost while this gateway was out of touch')

    # -- cluster duties ------------------------------------------------------------------
    async def _heartbeat(self) -> bool:
        """Renew the lease; ``False`` when it had lapsed (see :meth:`Bus.heartbeat`)."""
        held = await self.bus.heartbeat(
            self.settings.heartbeat_ttl_s,
            {
                "clients": len(self.sessions),
                "listen": str(self.settings.listen),
                "pid": os.getpid(),
                "started_at": int(self.started_at),
                "name": self.gateway_id,
            },
        )
        self.lease_renewed_at = trio.current_time()
        return held

    async def _heartbeat_loop(self) -> None:
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
                        log.warning("gateway.lease_lost", clients=len(self.by_nick))
                        reclaim_pending = True
                    if reclaim_pending:
                        reclaim_pending = not await self._reassert(announce=True)
                    # Right after (re)connecting, our view of the leases is not to be
                    # trusted: after a Redis stall every lease looks expired until its
                    # owner has had a chance to renew it.
                    if trio.current_time() - self.redis.connected_at < self.settings.heartbeat_ttl_s:
                        await trio.sleep(self.settings.heartbeat_interval_s)
                        continue
                    for dead in await self.bus.dead_gateways():
                        released = await self.bus.reap(dead)
                        if released:
                            log.warning("gateway.reaped", dead_gateway=dead, released=len(released))
                except RedisError as exc:
                    log.warning("heartbeat.failed", error=str(exc))
            await trio.sleep(self.settings.heartbeat_interval_s)

    async def _canary_loop(self) -> None:
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
                await self.bus.send_to_node(self.incarnation, {"t": "canary"})
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

    # -- shutdown ---------------------------------------------------------------------------
    async def drain(self) -> None:
        """Stop accepting, tell every client why, release everything, within the deadline."""
        self.draining = True
        self._listen_scope.cancel()
        log.info("gateway.draining", clients=len(self.sessions))
        with trio.move_on_after(self.settings.drain_timeout_s):
            for session in list(self.sessions):
                session.disconnect(
                    "this gateway is shutting down; reconnect and you will land on another one"
                )
            if self.sessions:
                await self._all_gone.wait()
            try:
                await self.bus.retire()
            except RedisUnavailable:
                pass
            except RedisError as exc:
                log.warning("gateway.retire_failed", error=str(exc))
        log.info("gateway.stopped", clients_left=len(self.sessions))


def _epoch_order(epoch: str) -> int:
    """Epochs are Redis's clock (seconds and microseconds) when one began."""
    try:
        return int(epoch)
    except ValueError:
        return 0


def _peer_name(stream: trio.SocketStream) -> str:
    try:
        addr = stream.socket.getpeername()
    except OSError:
        return "unknown"
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _enable_keepalive(stream: trio.SocketStream) -> None:
    import socket

    try:
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 6)
    except OSError:
        pass


def raise_open_files_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft

