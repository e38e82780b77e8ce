"""Slash commands.  Each handler answers its caller with server lines.

Handlers return ``"quit"`` to end the session, otherwise ``None``.  Redis
failures become an error line for the caller; nothing here raises to the
session.  Commands see the gateway only through
:class:`~services.gateway.interfaces.Chat` and the caller through
:class:`~services.gateway.interfaces.Caller`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from services.common.redis import RedisError
from services.gateway import protocol as p
from services.gateway.interfaces import Caller, Chat

Handler = Callable[[Caller, str], Awaitable[str | None]]

WHO_LIMIT = 500
MAX_ROOMS_PER_CLIENT = 20



class Commands:
    """The command table of one gateway."""

    def __init__(self, chat: Chat) -> None:
        self.chat = chat
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

    async def run(self, caller: Caller, command: p.Command) -> str | None:
        handler = self.table.get(command.name)
        if handler is None:
            self.chat.count_rejected("unknown_command")
            caller.deliver(
                p.error(f"unknown command /{p.sanitize(command.name)[:32]}; type /help for the list")
            )
            return None
        try:
            return await handler(caller, command.arg)
        except RedisError as exc:
            caller.log.warning("command.failed", command=command.name, error=str(exc))
            caller.deliver(p.unavailable(str(exc)))
            return None

    async def help(self, caller: Caller, arg: str) -> str | None:
        for line in p.HELP_LINES:
            caller.deliver(p.info(line))
        return None

    async def who(self, caller: Caller, arg: str) -> str | None:
        if arg:
            room = p.normalize_room(arg)
            problem = p.validate_room(room)
            if problem:
                caller.deliver(p.error(f"invalid room: {problem}"))
                return None
            nicks = await self.chat.room_members(room)
            where = f" in {room}"
        else:
            nicks = await self.chat.online()
            where = " online"
        shown = ", ".join(nicks[:WHO_LIMIT])
        more = f" and {len(nicks) - WHO_LIMIT} more" if len(nicks) > WHO_LIMIT else ""
        caller.deliver(p.info(f"{len(nicks)}{where}: {shown}{more}"))
        return None

    async def join(self, caller: Caller, arg: str) -> str | None:
        if not arg:
            caller.deliver(p.error("usage: /join #room"))
            return None
        room = p.normalize_room(arg)
        problem = p.validate_room(room)
        if problem:
            caller.deliver(p.error(f"invalid room: {problem}"))
            return None
        if room in caller.rooms:
            caller.entered(room)  # already a member: it becomes the current room
            caller.deliver(p.info(f"now talking in {room}"))
            return None
        if len(caller.rooms) >= MAX_ROOMS_PER_CLIENT:
            caller.deliver(p.error(f"you are in {MAX_ROOMS_PER_CLIENT} rooms already; /part one first"))
            return None
        await self.chat.join_room(caller, room, kind="enter")
        caller.deliver(p.info(f"now talking in {room}"))
        return None

    async def part(self, caller: Caller, arg: str) -> str | None:
        if not caller.rooms:
            caller.deliver(p.error("you are in no room"))
            return None
        room = p.normalize_room(arg) if arg else caller.rooms[-1]
        if room not in caller.rooms:
            caller.deliver(p.error(f"you are not in {room}"))
            return None
        await self.chat.part_room(caller, room)
        if caller.rooms:
            caller.deliver(p.info(f"left {room}; now talking in {caller.rooms[-1]}"))
        else:
            caller.deliver(p.info(f"left {room}; you are in no room now, /join one to chat"))
        return None

    async def rooms(self, caller: Caller, arg: str) -> str | None:
        rooms = await self.chat.room_counts()
        listing = ", ".join(f"{name} ({count})" for name, count in sorted(rooms.items()))
        caller.deliver(p.info(f"{len(rooms)} rooms: {listing}" if rooms else "0 rooms"))
        return None

    async def msg(self, caller: Caller, arg: str) -> str | None:
        target, _, text = arg.partition(" ")
        text = text.strip()
        if not target or not text:
            caller.deliver(p.error("usage: /msg NICK TEXT"))
            return None
        assert caller.nick is not None
        if not caller.spend():
            return None
        try:
            display = await self.chat.send_private(caller.nick, target, text)
        except LookupError as exc:
            caller.deliver(p.error(f'"{exc.args[0]}" is unreachable right now; your message was not sent'))
            return None
        if display is None:
            shown = p.sanitize(target)[:40]
            caller.deliver(p.error(f'no such nickname "{shown}"; /who lists who is online'))
            return None
        caller.deliver(p.private_line(display, caller.nick, text))
        return None

    async def nick(self, caller: Caller, arg: str) -> str | None:
        new = arg.strip()
        problem = p.validate_nick(new)
        if problem:
            caller.deliver(p.error(f"invalid nickname: {problem}"))
            return None
        if new == caller.nick:
            return None
        outcome = await self.chat.rename(caller, new)
        if outcome == "taken":
            caller.deliver(p.error(f'nickname "{new}" is taken, choose another'))
        elif outcome == "lost":
            caller.deliver(p.error(
                "your nickname is being re-registered after a Redis fault; try again shortly"
            ))
        else:
            caller.deliver(p.info(f"you are now {new}"))
        return None

    async def me(self, caller: Caller, arg: str) -> str | None:
        if not arg:
            caller.deliver(p.error("usage: /me ACTION"))
            return None
        if not caller.rooms:
            caller.deliver(p.NO_ROOM)
            return None
        if not caller.spend():
            return None
        await caller.say("act", arg)
        return None

    async def quit(self, caller: Caller, arg: str) -> str | None:
        caller.leave_text = arg[:200]
        return "quit"
