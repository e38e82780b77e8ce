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

UNAVAILABLE = p.error("chat is unavailable right now (cannot reach Redis); try again shortly")


class Commands:
    """The command table of one gateway."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.table: dict[str, Handler] = {
            "help": self.help,
            "who": self.who,
            "quit": self.quit,
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
        nicks = await self.gateway.bus.online()
        shown = ", ".join(nicks[:WHO_LIMIT])
        more = f" and {len(nicks) - WHO_LIMIT} more" if len(nicks) > WHO_LIMIT else ""
        session.deliver(p.info(f"{len(nicks)} online: {shown}{more}"))
        return None

    async def quit(self, session: Session, arg: str) -> str | None:
        session.leave_text = arg[:200]
        return "quit"
