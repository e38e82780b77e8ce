"""One client connection: handshake, commands and chat, then a clean goodbye.

A :class:`Session` owns its stream and reads it; its :class:`Writer` owns the
write path (the bounded buffer, direct writes, the writer task started on
demand).  The rest of the gateway reaches the client only through
:meth:`Session.deliver` and the writer, which never wait.  A session talks to
the gateway through the narrow :class:`~services.gateway.interfaces.Chat`
protocol.  Whatever ends the session (EOF, ``/quit``, overflow, kick, drain),
the ``finally`` block announces the leave and releases the nickname, bounded by
a deadline, and tells the client why when the server is the one closing.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import structlog
import trio

from services.common.bus import PublishUncertain, Resolution
from services.common.redis import RedisError, RedisUnavailable
from services.gateway import protocol as p
from services.gateway.commands import Commands
from services.gateway.flood import TokenBucket
from services.gateway.interfaces import Chat
from services.gateway.writer import Writer

log = structlog.get_logger()

RECEIVE_BYTES = 16384
FAREWELL_TIMEOUT_S = 5.0
FLUSH_TIMEOUT_S = 2.0
_conn_ids = itertools.count(1)

FLOODED = p.error("too many lines, slow down; your line was not sent")


class Session:
    """A connected client.  Created and run by the gateway's listener.

    Memory per connection is what limits a gateway's capacity, so an idle session
    is one task and a few small objects: a writer task exists only while the
    socket cannot take what is queued, and the logger is bound on use.
    """

    __slots__ = (
        "_rooms",
        "_task",
        "chat",
        "close_reason",
        "commands",
        "conn_id",
        "flood",
        "folded",
        "framer",
        "last_published",
        "leave_text",
        "nick",
        "peer",
        "scope",
        "settings",
        "stream",
        "writer",
    )

    def __init__(self, chat: Chat, commands: Commands, stream: trio.abc.Stream, peer: str) -> None:
        self.chat = chat
        self.commands = commands
        self.settings = chat.settings
        self.stream = stream
        self.peer = peer
        self.conn_id = f"c{next(_conn_ids)}"
        self.nick: str | None = None
        self.folded: str | None = None
        self._rooms: list[str] = []  # joined rooms; the last one is the current room
        self.writer = Writer(
            stream, self.settings.outbox_bytes, on_overflow=self._overflowed,
            on_broken=self._broken, spawn=chat.spawn, budget=chat.outbox_budget,
        )
        self.scope = trio.CancelScope()
        self.close_reason: str | None = None  # set when the server ends the session
        self.leave_text = ""
        self.last_published: tuple[str, int] | None = None
        self.flood = TokenBucket(self.settings.flood_burst, self.settings.flood_rate)
        self.framer = p.LineFramer(self.settings.max_line_bytes)
        self._task: trio.lowlevel.Task | None = None

    @property
    def rooms(self) -> list[str]:
        """Joined rooms, oldest first; the last one is the current room (read only:
        :meth:`entered` and :meth:`left` change it)."""
        return self._rooms

    def entered(self, room: str) -> None:
        if room in self._rooms:
            self._rooms.remove(room)
        self._rooms.append(room)

    def left(self, room: str) -> None:
        if room in self._rooms:
            self._rooms.remove(room)

    def spend(self) -> bool:
        if self.flood.take():
            return True
        self.chat.count_rejected("flood")
        self.deliver(FLOODED)
        return False

    @property
    def log(self) -> Any:
        """A logger with this client's ``conn``, ``peer`` and ``nick``, usable from
        any task (fan-out, kicks); bound on use, so idle sessions carry none."""
        if self.nick is None:
            return log.bind(conn=self.conn_id, peer=self.peer)
        return log.bind(conn=self.conn_id, peer=self.peer, nick=self.nick)

    # -- called by fan-out and by the gateway (synchronous, never blocks) ----------
    def deliver(self, data: bytes) -> None:
        """Queue ``data`` for the client and send it as soon as possible.  Never blocks."""
        self.writer.put(data)

    def disconnect(self, reason: str) -> None:
        """End this session; the client is told ``reason`` before the close."""
        if self.close_reason is None:
            self.close_reason = reason
        self.scope.cancel()

    def rebind(self) -> None:
        """Bind ``conn``, ``peer`` and ``nick`` to the connection task's context when
        called from it, so everything logged on its behalf carries them."""
        context: dict[str, str] = {"conn": self.conn_id, "peer": self.peer}
        if self.nick is not None:
            context["nick"] = self.nick
        if trio.lowlevel.current_task() is self._task:
            if self.nick is None:
                structlog.contextvars.unbind_contextvars("nick")
            structlog.contextvars.bind_contextvars(**context)

    def _broken(self) -> None:
        self.scope.cancel()  # the client is gone: nobody to tell why

    def _overflowed(self) -> None:
        if self.writer.budget_cut:
            total = self.settings.outbox_total_bytes
            self.chat.count_outbox_budget_cut()
            self.log.warning("client.outbox_budget_cut", total_limit=total,
                             waiting=self.writer.cut_waiting)
            self.disconnect(
                f"output buffers full (this server's {total} bytes for all clients; you"
                f" were furthest behind with {self.writer.cut_waiting} bytes waiting):"
                " you are not reading fast enough"
            )
            return
        self.chat.count_slow_consumer()
        self.log.warning(
            "client.slow_consumer", outbox_limit=self.settings.outbox_bytes
        )
        self.disconnect(f"output buffer full ({self.settings.outbox_bytes} bytes): "
                        "you are not reading fast enough")

    # -- the connection task --------------------------------------------------------
    async def run(self, leftover: bytes = b"") -> None:
        self._task = trio.lowlevel.current_task()
        self.rebind()
        self.log.info("client.connected")
        ended_by = "closed"
        try:
            with self.scope:
                self.writer.start()  # and anything queued before the session ran
                ended_by = await self._serve(leftover)
                # The client is done sending; let a running writer flush what is
                # queued (a /quit's own last lines), bounded, rather than cut it off.
                await self.writer.wait_flushed(FLUSH_TIMEOUT_S)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            ended_by = "connection reset"
        finally:
            with trio.CancelScope(shield=True):
                await self.writer.stop()
                await self._finish(ended_by)

    async def _serve(self, leftover: bytes) -> str:
        """Read and handle lines until the client leaves; returns how it ended."""
        self.deliver(p.info(f"welcome to the chat on gateway {self.chat.gateway_id}"))
        if not self.chat.available:
            self.deliver(p.UNAVAILABLE)
        self.deliver(p.NICK_PROMPT)
        pending = self.framer.feed(leftover) if leftover else []
        nick_deadline = trio.current_time() + self.settings.nick_timeout_s
        while True:
            for event in pending:
                if isinstance(event, p.BadLine):
                    self._reject(event.reason)
                    continue
                if await self._handle(event.text) == "quit":
                    if self.last_published is not None:
                        await self.chat.wait_delivered(*self.last_published, timeout_s=1.0)
                    self.deliver(p.info("bye"))
                    return "quit"
            if self.nick:
                timeout = self.settings.idle_timeout_s
                deadline = trio.current_time() + timeout
            else:
                timeout, deadline = self.settings.nick_timeout_s, nick_deadline
            timed_out = False
            try:
                if math.isinf(deadline):
                    # No timeout: no cancel scope either (it costs memory per client).
                    data = await self.stream.receive_some(RECEIVE_BYTES)
                else:
                    data = b""
                    with trio.move_on_at(deadline) as idle:
                        data = await self.stream.receive_some(RECEIVE_BYTES)
                    timed_out = idle.cancelled_caught
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return "connection reset"
            if timed_out:
                self.close_reason = (
                    f"idle for {timeout:g}s" if self.nick else f"no nickname chosen in {timeout:g}s"
                )
                return "timeout"
            if not data:
                return "closed" if not self.framer.pending_bytes else "closed mid-line"
            pending = self.framer.feed(data)

    def _reject(self, reason: str) -> None:
        self.chat.count_rejected(reason)
        self.log.info("line.rejected", reason=reason)
        self.deliver(p.reject_line(reason, self.settings.max_line_bytes))

    async def _handle(self, text: str) -> str | None:
        if self.nick is None:
            return await self._choose_nick(text)
        command = p.parse_command(text)
        if command is not None:
            return await self.commands.run(self, command)
        if not self.spend():
            return None
        if not self.rooms:
            self.deliver(p.NO_ROOM)
            return None
        await self.say("msg", p.chat_text(text))
        return None

    async def say(self, kind: str, text: str) -> None:
        """Publish a chat line or action in the current room.  Its sender learns
        exactly one outcome: the line echoed through Redis, or a "not delivered"
        line (after finding out, when Redis's answer was lost)."""
        assert self.nick is not None
        room = self.rooms[-1]
        try:
            seq = await self.chat.publish(room, kind, self.nick, text,
                                          on_lost=self._lost_with_redis)
        except PublishUncertain as exc:
            self.log.warning("message.uncertain", room=room, error=str(exc))
            self.chat.resolve_later(exc, self._report_outcome)
            return
        except RedisError as exc:
            self.log.warning("message.not_delivered", room=room, error=str(exc))
            self.deliver(p.not_delivered(str(exc)))
            return
        self.last_published = (room, seq)
        self.chat.count_message_in()

    def _lost_with_redis(self) -> None:
        # Redis answered, then lost its data before the line came back: it may have
        # reached some gateways, or none.
        self.deliver(p.NOT_CONFIRMED)

    def _report_outcome(self, outcome: Resolution) -> None:
        if outcome is Resolution.PUBLISHED:
            self.chat.count_message_in()
        elif outcome is Resolution.NOT_PUBLISHED:
            self.deliver(p.NOT_DELIVERED)
        else:
            self.deliver(p.NOT_CONFIRMED)

    async def _choose_nick(self, text: str) -> str | None:
        command = p.parse_command(text)
        if command is not None:
            if command.name == "quit":
                return "quit"
            if command.name == "help":
                for line in p.HELP_LINES:
                    self.deliver(p.info(line))
            else:
                self.deliver(p.error("choose a nickname first"))
            self.deliver(p.NICK_PROMPT)
            return None
        nick = text
        problem = p.validate_nick(nick)
        if problem:
            self.log.info("nick.rejected", attempted=nick[:64], reason="invalid")
            self.deliver(p.error(f"invalid nickname: {problem}"))
            self.deliver(p.NICK_PROMPT)
            return None
        folded = p.fold_nick(nick)
        try:
            claimed = await self.chat.claim_nick(self, folded, nick)
        except RedisError as exc:
            self.log.warning("nick.unavailable", attempted=nick, error=str(exc))
            self.deliver(p.unavailable(str(exc)))
            self.deliver(p.NICK_PROMPT)
            return None
        if not claimed:
            self.log.info("nick.rejected", attempted=nick, reason="taken")
            self.deliver(p.error(f'nickname "{nick}" is taken, choose another'))
            self.deliver(p.NICK_PROMPT)
            return None
        self.rebind()
        self.log.info("client.joined")
        room = self.settings.default_room
        welcome = p.info(f"welcome, {nick}! You are in {room}. Type /help for commands.")
        try:
            # The welcome goes out only once the join succeeded, before the history.
            await self.chat.join_room(self, room, greeting=welcome)
        except RedisError as exc:
            # Half a login is worse than none: give the nickname back and ask again.
            self.log.warning("room.join_failed", room=room, error=str(exc))
            with trio.move_on_after(self.settings.redis_timeout_s):
                try:
                    await self.chat.forget(self)
                except RedisError:
                    pass  # re-assertion or the lease reaper releases it later
            self.nick = self.folded = None
            self.rebind()
            self.deliver(p.unavailable(str(exc)))
            self.deliver(p.NICK_PROMPT)
        return None

    async def _finish(self, ended_by: str) -> None:
        """Leave every room, release the nickname, say goodbye, close.  Bounded."""
        reason = self.close_reason or ended_by
        with trio.move_on_after(max(self.settings.redis_timeout_s * 2, 1.0)):
            try:
                await self.chat.forget(self, self.leave_text)
            except RedisUnavailable as exc:
                # The nickname stays recorded under this gateway; it is released when
                # Redis is back (reconciliation) or by the lease reaper.
                self.log.warning("client.cleanup_failed", error=str(exc))
            except RedisError as exc:
                self.log.error("client.cleanup_failed", error=str(exc))
        if self.nick is not None:
            self.log.info("client.left", reason=reason)
        self.log.info("client.disconnected", reason=reason)
        final = self.writer.take()
        if self.close_reason is not None:
            # A fresh line: an interrupted write may have left a partial line behind.
            final = (b"\r\n" if self.writer.overflowed else final) + p.error(
                f"disconnected: {self.close_reason}"
            )
        # A slow consumer reads its reason only once it reads again: wait a while
        # (cut short if the gateway's output budget needs the bytes).
        await self.writer.send_last(final, FAREWELL_TIMEOUT_S)
        await trio.aclose_forcefully(self.stream)

