"""Slash commands.  Each handler answers its caller with server lines.

Handlers return ``"quit"`` to end the session, otherwise ``None``.  Redis
failures become an error line for the caller; nothing here raises to the
session.  Commands see the gateway only through
:class:`~services.gateway.interfaces.Chat` and the caller through
:class:`~services.gateway.interfaces.Caller`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from services.common.bus import RoomLimitReached
from services.common.redis import RedisError
from services.gateway import protocol as p
from services.gateway.accounts import AUTH_COST, Check, Checked, locked_line_text, password_problem
from services.gateway.interfaces import Caller, Chat

Handler = Callable[[Caller, str], Awaitable[str | None]]

MAX_ROOMS_PER_CLIENT = 20

# Flood control: every line a client sends costs tokens from one budget per
# connection (CHAT_FLOOD_BURST tokens, CHAT_FLOOD_RATE more per second), weighted
# by what it costs Redis, the gateway and the other members.  docs/PROTOCOL.md
# lists the same table.
CHAT_COST = 1.0  # a chat line; /me and /msg cost the same
NICK_ATTEMPT_COST = 1.0  # a line offered as a nickname
BAD_LINE_COST = 1.0  # too long, invalid UTF-8, control characters
UNKNOWN_COMMAND_COST = 1.0
COMMAND_COSTS: dict[str, float] = {
    "quit": 0.0,
    "me": CHAT_COST,
    "msg": CHAT_COST,
    "part": 1.0,
    "help": 2.0,  # a dozen lines of output
    "nick": 3.0,  # a line to every member of every room the client is in
    "join": 3.0,  # a script, an announcement, and a history replay (CHAT_HISTORY_SIZE lines)
    "who": 3.0,  # reads up to LIST_LIMIT names
    "rooms": 3.0,
    # argon2 hashing (~60 ms of a worker thread) and a Redis script each
    "register": AUTH_COST,
    "identify": AUTH_COST,
    "password": AUTH_COST,
}

# /who and /rooms show at most this many names, and their one reply line stays
# under the asker's output buffer divided by LIST_BUFFER_FRACTION; the rest is
# counted ("and N more").
LIST_LIMIT = 100
LIST_BUFFER_FRACTION = 8


def command_cost(name: str) -> float:
    """What running ``/name`` takes from the flood budget."""
    return COMMAND_COSTS.get(name, UNKNOWN_COMMAND_COST)


def listing(head: str, total: int, items: list[str], max_bytes: int) -> bytes:
    """``== HEAD: a, b, c and N more`` as one line of at most about ``max_bytes``:
    items past the budget are counted in "and N more", never sent."""
    shown: list[str] = []
    size = len(head) + 32
    for item in items:
        size += len(item.encode()) + 2
        if size > max_bytes:
            break
        shown.append(item)
    more = max(total, len(items)) - len(shown)
    tail = f" and {more} more" if more > 0 else ""
    return p.info(f"{head}: {', '.join(shown)}{tail}")

LOST = p.error("your nickname is being re-registered after a Redis fault; try again shortly")



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
            "register": self.register,
            "identify": self.identify,
            "password": self.password,
        }

    def reply_budget(self) -> int:
        """The most bytes one /who or /rooms reply may take."""
        return max(256, self.chat.settings.outbox_bytes // LIST_BUFFER_FRACTION)

    async def run(self, caller: Caller, command: p.Command) -> str | None:
        if not caller.spend(command_cost(command.name)):
            return None
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
            total, nicks = await self.chat.room_members(room, LIST_LIMIT)
            where = f" in {room}"
        else:
            total, nicks = await self.chat.online(LIST_LIMIT)
            where = " online"
        caller.deliver(listing(f"{total}{where}", total, nicks, self.reply_budget()))
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
        may_create = caller.may_create_room()
        try:
            created = await self.chat.join_room(caller, room, kind="enter", may_create=may_create)
        except RoomLimitReached:
            self.chat.count_rejected("room_limit")
            per_minute = self.chat.settings.rooms_per_minute
            caller.deliver(p.error(
                f"{room} does not exist and you created {per_minute} rooms in the last minute;"
                " wait, or /join a room that has members"
            ))
            return None
        if created:
            caller.created_room()
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
        total, rooms = await self.chat.room_counts(LIST_LIMIT)
        if not rooms:
            caller.deliver(p.info("0 rooms"))
            return None
        items = [f"{name} ({count})" for name, count in rooms]
        caller.deliver(listing(f"{total} rooms", total, items, self.reply_budget()))
        return None

    async def msg(self, caller: Caller, arg: str) -> str | None:
        target, _, text = arg.partition(" ")
        text = text.strip()
        if not target or not text:
            caller.deliver(p.error("usage: /msg NICK TEXT"))
            return None
        assert caller.nick is not None
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
        elif outcome == "registered":
            caller.deliver(p.error(
                f'nickname "{new}" is registered; if it is yours: /identify {new} PASSWORD'
            ))
        elif outcome == "lost":
            caller.deliver(LOST)
        else:
            caller.deliver(p.info(f"you are now {new}"))
        return None

    # -- accounts: passwords are never logged, echoed, or kept past these calls -------
    async def register(self, caller: Caller, arg: str) -> str | None:
        password = arg.strip()
        if not password:
            caller.deliver(p.error("usage: /register PASSWORD"))
            return None
        problem = password_problem(password, self.chat.settings)
        if problem:
            caller.deliver(p.error(f"{problem}; your nickname was not registered"))
            return None
        assert caller.nick is not None
        if not self.chat.available:
            # An account lives only in Redis: nothing to keep it in meanwhile.
            caller.deliver(p.UNAVAILABLE)
            return None
        outcome, retry_s = await self.chat.register_account(caller, password, caller.address)
        if outcome == "limited":
            caller.deliver(p.error(
                f"too many nicknames registered from your address; try again in "
                f"{max(1, int(retry_s + 0.999))}s"
            ))
        elif outcome == "already":
            caller.deliver(p.error(f"{caller.nick} is registered already; /password OLD NEW changes "
                                   "its password"))
        elif outcome == "lost":
            caller.deliver(LOST)
        else:
            caller.log.info("account.registered")
            caller.deliver(p.info(
                f"{caller.nick} is registered to you; from now on log in with: {caller.nick} PASSWORD "
                f"at the nickname prompt, or /identify {caller.nick} PASSWORD"
            ))
        return None

    async def identify(self, caller: Caller, arg: str) -> str | None:
        words = arg.split()
        if len(words) not in (1, 2):
            caller.deliver(p.error("usage: /identify [NICK] PASSWORD"))
            return None
        assert caller.nick is not None and caller.folded is not None
        nick, password = (caller.nick, words[0]) if len(words) == 1 else (words[0], words[1])
        problem = p.validate_nick(nick)
        if problem:
            caller.deliver(p.error(f"invalid nickname: {problem}"))
            return None
        folded = p.fold_nick(nick)
        if folded == caller.folded and caller.account_hash is not None:
            caller.deliver(p.info(f"you are identified as {caller.nick} already"))
            return None
        checked = await self.chat.check_password(folded, caller.address, password)
        if not self._checked(caller, checked, nick):
            return None
        if folded == caller.folded:
            caller.account_hash = checked.password_hash
            caller.log.info("account.identified")
            caller.deliver(p.info(f"you are identified as {caller.nick}"))
            return None
        outcome = await self.chat.rename(caller, nick, checked.password_hash)
        if outcome == "renamed":
            caller.log.info("account.identified")
            caller.deliver(p.info(f"you are identified; you are now {nick}"))
        elif outcome == "taken":
            caller.deliver(p.error(f"{nick} is online in another session; /quit that one first"))
        elif outcome == "registered":  # its password changed while we checked
            caller.deliver(p.error(f"wrong password for {nick}"))
        else:
            caller.deliver(LOST)
        return None

    async def password(self, caller: Caller, arg: str) -> str | None:
        words = arg.split()
        if len(words) != 2:
            caller.deliver(p.error("usage: /password OLD NEW"))
            return None
        old, new = words
        assert caller.nick is not None and caller.folded is not None
        if caller.account_hash is None:
            caller.deliver(p.error(
                f"{caller.nick} is not registered to you; /register PASSWORD first"
            ))
            return None
        problem = password_problem(new, self.chat.settings)
        if problem:
            caller.deliver(p.error(f"{problem}; your password was not changed"))
            return None
        checked = await self.chat.check_password(caller.folded, caller.address, old)
        if not self._checked(caller, checked, caller.nick):
            return None
        if not await self.chat.change_password(caller, checked.password_hash, new):
            caller.deliver(p.error("your password was changed or your account dropped meanwhile; "
                                   "it was not changed"))
            return None
        caller.log.info("account.password_changed")
        caller.deliver(p.info("your password is changed"))
        return None

    @staticmethod
    def _checked(caller: Caller, checked: Checked, nick: str) -> bool:
        """Whether a password check passed; if not, the caller is told why."""
        if checked.outcome is Check.OK:
            return True
        caller.log.info("account.identify_failed", account=nick, reason=checked.outcome.value)
        if checked.outcome is Check.NOT_REGISTERED:
            caller.deliver(p.error(f"{nick} is not registered"))
        elif checked.outcome is Check.LOCKED:
            caller.deliver(p.error(locked_line_text(checked, nick)))
        else:
            caller.deliver(p.error(f"wrong password for {nick}"))
        return False

    async def me(self, caller: Caller, arg: str) -> str | None:
        if not arg:
            caller.deliver(p.error("usage: /me ACTION"))
            return None
        if not caller.rooms:
            caller.deliver(p.NO_ROOM)
            return None
        await caller.say("act", arg)
        return None

    async def quit(self, caller: Caller, arg: str) -> str | None:
        caller.leave_text = arg[:200]
        return "quit"
