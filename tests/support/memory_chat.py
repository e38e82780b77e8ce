"""A small in-memory :class:`~services.gateway.interfaces.Chat` for unit tests of
sessions and commands, where no Redis behaviour is under test.

Rooms and nicknames live in dicts; a publication is echoed synchronously to every
member of its room, formatted as the gateway would.  ``fail_next`` makes the next
publish raise a chosen error (to drive the error paths).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from services.common.bus import ClaimResult, PublishUncertain, Resolution, RoomLimitReached
from services.common.config import HostPort, Settings
from services.gateway import protocol as p
from services.gateway.interfaces import Member
from services.gateway.writer import OutboxBudget


@dataclass
class MemoryChat:
    nursery: trio.Nursery
    settings: Settings = field(
        default_factory=lambda: Settings(listen=HostPort("127.0.0.1", 0), flood_burst=100,
                                         flood_rate=0.001, nick_timeout_s=math.inf)
    )
    gateway_id: str = "mem"
    available: bool = True
    nicks: dict[str, Member] = field(default_factory=dict)
    reserved: set[str] = field(default_factory=set)  # taken by someone on another gateway
    members: dict[str, set[Member]] = field(default_factory=dict)
    published: list[tuple[str, str, str, str]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    fail_next: Exception | None = None
    resolution: Resolution = Resolution.NOT_PUBLISHED
    rename_outcome: str | None = None  # force "taken" or "lost"
    unreachable: set[str] = field(default_factory=set)
    outbox_budget: OutboxBudget = field(default_factory=lambda: OutboxBudget(1 << 30))

    def spawn(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        self.nursery.start_soon(fn, *args)

    def count_rejected(self, reason: str) -> None:
        self.rejected.append(reason)

    def count_slow_consumer(self) -> None:
        self.rejected.append("slow_consumer")

    def count_outbox_budget_cut(self) -> None:
        self.rejected.append("outbox_budget")

    def count_message_in(self) -> None:
        pass

    async def claim_nick(
        self, member: Member, folded: str, nick: str, proven_hash: str = ""
    ) -> ClaimResult:
        if folded in self.nicks or folded in self.reserved:
            return ClaimResult.TAKEN
        self.nicks[folded] = member
        member.nick, member.folded = nick, folded
        return ClaimResult.CLAIMED

    async def rename(self, member: Member, new: str, proven_hash: str = "") -> str:
        if self.rename_outcome is not None:
            return self.rename_outcome
        folded = p.fold_nick(new)
        if folded != member.folded and (folded in self.nicks or folded in self.reserved):
            return "taken"
        assert member.folded is not None and member.nick is not None
        old = member.nick
        del self.nicks[member.folded]
        member.nick, member.folded = new, folded
        self.nicks[folded] = member
        for room in member.rooms:
            self._echo(room, "nick", old, new)
        return "renamed"

    async def forget(self, member: Member, reason: str = "") -> None:
        for room in list(member.rooms):
            self.members.get(room, set()).discard(member)
            self._echo(room, "leave", member.nick or "", reason)
        if member.folded is not None:
            self.nicks.pop(member.folded, None)

    async def join_room(self, member: Member, name: str, *, kind: str = "join",
                        greeting: bytes = b"", may_create: bool = True) -> bool:
        created = not self.members.get(name)
        if created and not may_create:
            raise RoomLimitReached(name)
        self.members.setdefault(name, set()).add(member)
        if greeting:
            member.deliver(greeting)
        member.entered(name)
        self._echo(name, kind, member.nick or "", "")
        return created

    async def part_room(self, member: Member, name: str) -> None:
        self._echo(name, "part", member.nick or "", "")
        self.members.get(name, set()).discard(member)
        member.left(name)

    async def publish(self, room: str, kind: str, nick: str, text: str = "",
                      *, on_lost: Callable[[], None] | None = None) -> int:
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        self.published.append((room, kind, nick, text))
        self._echo(room, kind, nick, text)
        return len(self.published)

    def _echo(self, room: str, kind: str, nick: str, text: str) -> None:
        line = p.publication_line(room, kind, nick, text)
        for member in self.members.get(room, set()):
            member.deliver(line)

    def resolve_later(self, uncertain: PublishUncertain,
                      report: Callable[[Resolution], None]) -> None:
        report(self.resolution)

    async def wait_delivered(self, room: str, seq: int, timeout_s: float) -> None:
        pass

    async def online(self, limit: int) -> tuple[int, list[str]]:
        nicks = sorted((m.nick or "" for m in self.nicks.values()), key=str.lower)
        return len(nicks), nicks[:limit]

    async def room_members(self, room: str, limit: int) -> tuple[int, list[str]]:
        nicks = sorted((m.nick or "" for m in self.members.get(room, set())), key=str.lower)
        return len(nicks), nicks[:limit]

    async def room_counts(self, limit: int) -> tuple[int, list[tuple[str, int]]]:
        counts = sorted(((room, len(ms)) for room, ms in self.members.items() if ms),
                        key=lambda item: (-item[1], item[0]))
        return len(counts), counts[:limit]

    async def send_private(self, sender: str, target: str, text: str) -> str | None:
        member = self.nicks.get(p.fold_nick(target))
        if member is None:
            return None
        if p.fold_nick(target) in self.unreachable:
            raise LookupError(member.nick)
        member.deliver(p.private_line(member.nick or "", sender, text))
        return member.nick
