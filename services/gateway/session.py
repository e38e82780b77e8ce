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

from services.common.bus import ClaimResult, PublishUncertain, Resolution
from services.common.redis import RedisError, RedisUnavailable
from services.gateway import protocol as p
from services.gateway.accounts import AUTH_COST, Check, locked_line_text
from services.gateway.commands import (
    BAD_LINE_COST,
    CHAT_COST,
    NICK_ATTEMPT_COST,
    Commands,
    command_cost,
)
from services.gateway.flood import TokenBucket
from services.gateway.interfaces import Chat
from services.gateway.writer import Writer

log = structlog.get_logger()

RECEIVE_BYTES = 16384
FAREWELL_TIMEOUT_S = 5.0
FLUSH_TIMEOUT_S = 2.0
_conn_ids = itertools.count(1)

# At most one flood notice a second: the lines refused in between are counted and
# reported in the next notice, so the flooder learns of each one without getting
# a line of output per line of input.
FLOOD_NOTICE_INTERVAL_S = 1.0
FLOODED = p.error("too many lines, slow down; your line was not sent")


def flooded(count: int) -> bytes:
    """The notice for ``count`` lines refused by flood control since the last one."""
    if count == 1:
        return FLOODED
    return p.error(f"too many lines, slow down; {count} lines were not sent")


class Session:
    """A connected client.  Created and run by the gateway's listener.

    Memory per connection is what limits a gateway's capacity, so an idle session
    is one task and a few small objects: a writer task exists only while the
    socket cannot take what is queued, and the logger is bound on use.
    """

    __slots__ = (
        "_rooms",
        "_task",
        "account_hash",
        "awaiting_password",
        "chat",
        "close_reason",
        "commands",
        "conn_id",
        "creates",
        "flood",
        "flood_dropped",
        "flood_notice_at",
        "folded",
        "framer",
        "last_published",
        "leave_text",
        "lines_before_nick",
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
        self.account_hash: str | None = None
        # A registered nickname chosen at the prompt, whose password comes next.
        self.awaiting_password: str | None = None
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
        self.flood_dropped = 0  # lines refused for flood and not reported yet
        self.flood_notice_at = -math.inf  # when the next flood notice may go out
        self.creates: TokenBucket | None = None  # made on the first /join (memory)
        self.lines_before_nick = 0
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

    @property
    def address(self) -> str:
        """The client's address without the port (the PROXY header's when trusted)."""
        return self.peer.rsplit(":", 1)[0].strip("[]") if ":" in self.peer else self.peer

    def spend(self, cost: float = 1.0) -> bool:
        """Take ``cost`` from the flood budget.  ``False`` when it is spent: the line
        is dropped, and its sender told (at once, or counted into the next notice
        when one went out less than a second ago)."""
        if self.flood.take(cost):
            return True
        self.chat.count_rejected("flood")
        self.flood_dropped += 1
        self.report_flood()
        return False

    def report_flood(self) -> None:
        """Send the pending flood notice if one is due."""
        now = trio.current_time()
        if self.flood_dropped and now >= self.flood_notice_at:
            self.deliver(flooded(self.flood_dropped))
            self.flood_dropped = 0
            self.flood_notice_at = now + FLOOD_NOTICE_INTERVAL_S

    def _creates(self) -> TokenBucket:
        if self.creates is None:
            per_minute = self.settings.rooms_per_minute
            self.creates = TokenBucket(per_minute, per_minute / 60.0)
        return self.creates

    def may_create_room(self) -> bool:
        """Whether this connection may create a room now (``rooms_per_minute``)."""
        return self._creates().available(1.0)

    def created_room(self) -> None:
        self._creates().take(1.0)

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
        max_before_nick = self.settings.max_lines_before_nick
        while True:
            for event in pending:
                before_nick = self.nick is None
                if isinstance(event, p.BadLine):
                    if self.spend(BAD_LINE_COST):
                        self._reject(event.reason)
                elif await self._handle(event.text) == "quit":
                    if self.last_published is not None:
                        await self.chat.wait_delivered(*self.last_published, timeout_s=1.0)
                    self.deliver(p.info("bye"))
                    return "quit"
                if before_nick and self.nick is None:
                    # Only a few lines before a nickname: a client that sends more
                    # is not trying to chat (each one could cost a /help reply).
                    self.lines_before_nick += 1
                    if self.lines_before_nick >= max_before_nick:
                        self.close_reason = f"no nickname chosen in {max_before_nick} lines"
                        return "too many lines"
            pending = []
            if self.nick:
                timeout = self.settings.idle_timeout_s
                deadline = trio.current_time() + timeout
            else:
                timeout, deadline = self.settings.nick_timeout_s, nick_deadline
            # A flood notice still owed wakes the loop when it becomes due.
            wake = self.flood_notice_at if self.flood_dropped else math.inf
            timed_out = False
            try:
                if math.isinf(deadline) and math.isinf(wake):
                    # No timeout: no cancel scope either (it costs memory per client).
                    data = await self.stream.receive_some(RECEIVE_BYTES)
                else:
                    data = b""
                    with trio.move_on_at(min(deadline, wake)) as idle:
                        data = await self.stream.receive_some(RECEIVE_BYTES)
                    timed_out = idle.cancelled_caught and trio.current_time() >= deadline
                    if idle.cancelled_caught and not timed_out:
                        self.report_flood()
                        continue
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
        if not self.spend(CHAT_COST):
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
            self.awaiting_password = None  # a command at the password prompt goes back
            if command.name == "quit":
                return "quit"
            if not self.spend(command_cost(command.name)):
                return None
            if command.name == "help":
                for line in p.HELP_LINES:
                    self.deliver(p.info(line))
            elif command.name != "back":
                self.deliver(p.error("choose a nickname first"))
            self.deliver(p.NICK_PROMPT)
            return None
        if not self.spend(NICK_ATTEMPT_COST):
            return None
        if self.awaiting_password is not None:
            # The line answers "?? NICK is registered; enter its password".
            nick, password = self.awaiting_password, text
            self.awaiting_password = None
        else:
            # "alice" or "alice PASSWORD"; only the nickname part is ever logged.
            nick, _, password = text.partition(" ")
            password = password.strip()
            problem = p.validate_nick(nick)
            if problem:
                self.log.info("nick.rejected", attempted=nick[:64], reason="invalid")
                self.deliver(p.error(f"invalid nickname: {problem}"))
                self.deliver(p.NICK_PROMPT)
                return None
        folded = p.fold_nick(nick)
        try:
            proven = ""
            if password:
                proven = await self._prove(folded, nick, password)
                if not proven:
                    self.deliver(p.NICK_PROMPT)
                    return None
            claimed = await self.chat.claim_nick(self, folded, nick, proven)
        except RedisError as exc:
            self.log.warning("nick.unavailable", attempted=nick, error=str(exc))
            self._not_counted()
            self.deliver(p.unavailable(str(exc)))
            self.deliver(p.NICK_PROMPT)
            return None
        if claimed is ClaimResult.REGISTERED and not password:
            self.log.info("nick.rejected", attempted=nick, reason="registered")
            self.awaiting_password = nick
            self.deliver(p.password_prompt(nick))
            return None
        if not claimed:
            self.log.info("nick.rejected", attempted=nick, reason="taken")
            if claimed is ClaimResult.REGISTERED:  # its password changed while we checked
                self.deliver(p.error(f"wrong password for {nick}"))
            else:
                self.deliver(p.error(f'nickname "{nick}" is taken, choose another'))
            self.deliver(p.NICK_PROMPT)
            return None
        self.rebind()
        self.log.info("client.joined")
        if proven:
            self.log.info("account.identified")
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
            self._not_counted()
            self.deliver(p.unavailable(str(exc)))
            self.deliver(p.NICK_PROMPT)
        return None

    def _not_counted(self) -> None:
        # A nickname attempt that failed because Redis did is not the client's
        # fault: it does not count towards max_lines_before_nick (the nickname
        # timeout still bounds a client waiting out an outage).
        self.lines_before_nick -= 1

    async def _prove(self, folded: str, nick: str, password: str) -> str:
        """Check a password given at the nickname prompt: the account hash it
        matched, or ``""`` with the client told why not.  Raises RedisError."""
        # The line already paid NICK_ATTEMPT_COST: a login costs AUTH_COST in all.
        if not self.spend(AUTH_COST - NICK_ATTEMPT_COST):
            return ""
        checked = await self.chat.check_password(folded, self.address, password)
        if checked.outcome is Check.OK:
            return checked.password_hash
        self.log.info("account.identify_failed", account=nick, reason=checked.outcome.value)
        if checked.outcome is Check.NOT_REGISTERED:
            self.deliver(p.error(
                f'{nick} is not registered (a nickname is one word; "NICK PASSWORD" '
                "logs in to a registered one)"
            ))
        elif checked.outcome is Check.LOCKED:
            self.deliver(p.error(locked_line_text(checked, nick)))
        else:
            self.deliver(p.error(f"wrong password for {nick}"))
        return ""

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
        if self.flood_dropped and not self.writer.overflowed:
            final += flooded(self.flood_dropped)  # owed, and never sent silently
        if self.close_reason is not None:
            # A fresh line: an interrupted write may have left a partial line behind.
            final = (b"\r\n" if self.writer.overflowed else final) + p.error(
                f"disconnected: {self.close_reason}"
            )
        # A slow consumer reads its reason only once it reads again: wait a while
        # (cut short if the gateway's output budget needs the bytes).
        await self.writer.send_last(final, FAREWELL_TIMEOUT_S)
        await trio.aclose_forcefully(self.stream)

