"""Slash commands.  Each handler answers its caller with server lines.

Handlers return ``"quit"`` to end the session, otherwise ``None``.  Redis
failures become an error line for the caller; nothing here raises to the session.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from services.common.redis import RedisError
from services.gateway import protocol as p

if TYPE_CHECKING:
    from services.gateway.gateway import Gateway
    from services.gateway.session import Session

Handler = Callable[["Session", str], Awaitable[str | None]]

WHO_LIMIT = 500
MAX_ROOMS_PER_CLIENT = 20
NO_ROOM = p.error("you are in no room; /join #room to chat")

UNAVAILABLE = p.error("chat is unavailable right now (cannot reach Redis); try again shortly")


class Commands:
    """The command table of one gateway."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.table: dict[str, Handler] = {
            "help": self.help,
            "who": self.who,
            "quit": self.quit,
            "join": self.join,
            "part": self.part,
            "rooms": self.rooms,
            "msg": self.msg,
            "nick": self.nick,
            "me": self.me,
        }

    async def run(self, session: Session, command: p.Command) -> str | None:
        handler = self.table.get(command.name)
        if handler is None:
            self.gateway.metrics_rejected("unknown_command")
            session.deliver(
                p.error(f"unknown command /{p.sanitize(command.name)[:32]}; type /help for the list")
            )
            return None
        try:
            return await handler(session, command.arg)
        except RedisError as exc:
            session.log.warning("command.failed", command=command.name, error=str(exc))
            session.deliver(UNAVAILABLE)
            return None

    async def help(self, session: Session, arg: str) -> str | None:
        for line in p.HELP_LINES:
            session.deliver(p.info(line))
        return None

    async def who(self, session: Session, arg: str) -> str | None:
        if arg:
            room = p.normalize_room(arg)
            problem = p.validate_room(room)
            if problem:
                session.deliver(p.error(f"invalid room: {problem}"))
                return None
            nicks = await self.gateway.bus.room_members(room)
            where = f" in {room}"
        else:
            nicks = await self.gateway.bus.online()
            where = " online"
        shown = ", ".join(nicks[:WHO_LIMIT])
        more = f" and {len(nicks) - WHO_LIMIT} more" if len(nicks) > WHO_LIMIT else ""
        session.deliver(p.info(f"{len(nicks)}{where}: {shown}{more}"))
        return None

    async def join(self, session: Session, arg: str) -> str | None:
        if not arg:
            session.deliver(p.error("usage: /join #room"))
            return None
        room = p.normalize_room(arg)
        problem = p.validate_room(room)
        if problem:
            session.deliver(p.error(f"invalid room: {problem}"))
            return None
        if room in session.rooms:
            session.rooms.remove(room)
            session.rooms.append(room)
            session.deliver(p.info(f"now talking in {room}"))
            return None
        if len(session.rooms) >= MAX_ROOMS_PER_CLIENT:
            session.deliver(p.error(f"you are in {MAX_ROOMS_PER_CLIENT} rooms already; /part one first"))
            return None
        await self.gateway.join_room(session, room, kind="enter")
        session.deliver(p.info(f"now talking in {room}"))
        return None

    async def part(self, session: Session, arg: str) -> str | None:
        if not session.rooms:
            session.deliver(p.error("you are in no room"))
            return None
        room = p.normalize_room(arg) if arg else session.rooms[-1]
        if room not in session.rooms:
            session.deliver(p.error(f"you are not in {room}"))
            return None
        await self.gateway.part_room(session, room)
        if session.rooms:
            session.deliver(p.info(f"left {room}; now talking in {session.rooms[-1]}"))
        else:
            session.deliver(p.info(f"left {room}; you are in no room now, /join one to chat"))
        return None

    async def rooms(self, session: Session, arg: str) -> str | None:
        rooms = await self.gateway.bus.rooms()
        listing = ", ".join(f"{name} ({count})" for name, count in sorted(rooms.items()))
        session.deliver(p.info(f"{len(rooms)} rooms: {listing}" if rooms else "0 rooms"))
        return None

    async def msg(self, session: Session, arg: str) -> str | None:
        target, _, text = arg.partition(" ")
        text = text.strip()
        if not target or not text:
            session.deliver(p.error("usage: /msg NICK TEXT"))
            return None
        assert session.nick is not None
        if not session.flood.take():
            self.gateway.metrics_rejected("flood")
            session.deliver(p.error("too many lines, slow down; your line was not sent"))
            return None
        folded = p.fold_nick(target)
        owner = await self.gateway.bus.nick_owner(folded)
        if owner is None:
            shown = p.sanitize(target)[:40]
            session.deliver(p.error(f'no such nickname "{shown}"; /who lists who is online'))
            return None
        gateway_id, display = owner
        receivers = await self.gateway.bus.send_to_node(
            gateway_id, {"t": "pm", "to": folded, "from": session.nick, "text": text}
        )
        if receivers == 0:
            session.deliver(p.error(f'"{display}" is unreachable right now; your message was not sent'))
            return None
        session.deliver(p.private_line(display, session.nick, text))
        return None

    async def nick(self, session: Session, arg: str) -> str | None:
        new = arg.strip()
        problem = p.validate_nick(new)
        if problem:
            session.deliver(p.error(f"invalid nickname: {problem}"))
            return None
        if new == session.nick:
            return None
        if not await self.gateway.rename(session, new):
            session.deliver(p.error(f'nickname "{new}" is taken, choose another'))
            return None
        session.deliver(p.info(f"you are now {new}"))
        return None

    async def me(self, session: Session, arg: str) -> str | None:
        if not arg:
            session.deliver(p.error("usage: /me ACTION"))
            return None
        if not session.rooms:
            session.deliver(NO_ROOM)
            return None
        if not session.flood.take():
            self.gateway.metrics_rejected("flood")
            session.deliver(p.error("too many lines, slow down; your line was not sent"))
            return None
        await session.say("act", arg)
        return None

    async def quit(self, session: Session, arg: str) -> str | None:
        session.leave_text = arg[:200]
        return "quit"
