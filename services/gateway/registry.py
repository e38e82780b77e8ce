"""This gateway's nicknames: claims, renames, releases, and re-assertion.

Redis holds the cluster-wide truth (one owner record per folded nickname, see
:mod:`services.common.keys`); :class:`Nicknames` keeps which local member holds
which nickname and which claims are in flight, so two local clients never race
each other through Redis.  After Redis lost its data, or this gateway's lease
lapsed, :meth:`Nicknames.reassert` claims every live nickname again; a name that
somebody else took meanwhile is resolved by the conflict rule (whoever holds it
in Redis keeps it; the local user is renamed and told).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import structlog
import trio

from services.common.bus import Bus, ClaimResult, RenameResult
from services.common.config import Settings
from services.common.metrics import Metrics
from services.common.redis import RedisError, RedisUnavailable
from services.gateway import protocol as p
from services.gateway.interfaces import Member

log = structlog.get_logger()

CONFLICT_ATTEMPTS = 20


class Nicknames:
    """Local holders of nicknames, kept in step with Redis."""

    def __init__(
        self, settings: Settings, bus: Bus, metrics: Metrics, *, spawn: Callable[..., None],
        incarnation: str,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.metrics = metrics
        self.spawn = spawn
        self.incarnation = incarnation
        self.by_nick: dict[str, Member] = {}
        self.claiming: set[str] = set()
        self.renaming: set[str] = set()  # folded nicks whose rename is in flight

    def get(self, folded: str) -> Member | None:
        return self.by_nick.get(folded)

    def __len__(self) -> int:
        return len(self.by_nick)

    async def claim(
        self, member: Member, folded: str, nick: str, proven_hash: str = ""
    ) -> ClaimResult:
        """Claim a nickname for ``member`` across the cluster: true when claimed;
        ``TAKEN``, or ``REGISTERED`` (an account whose hash is not ``proven_hash``;
        checked in the same atomic step as the claim).  Raises RedisError."""
        if folded in self.by_nick or folded in self.claiming:
            return ClaimResult.TAKEN
        self.claiming.add(folded)
        try:
            result = await self.bus.claim_nick(folded, nick, proven_hash)
            if not result:
                return result
        except RedisUnavailable:
            # The claim may still reach Redis after we gave up on it: release it
            # later unless this gateway meanwhile gave the name to someone.
            self.spawn(self._release_orphan, folded, nick)
            raise
        finally:
            self.claiming.discard(folded)
        member.nick, member.folded = nick, folded
        member.account_hash = proven_hash or None
        self.by_nick[folded] = member
        self.metrics.joins_total.inc()
        return result

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

    async def release(self, member: Member, reason: str = "") -> None:
        """Give up ``member``'s nickname: in Redis, the nickname, its memberships and
        the leave announcements in each room, in one atomic step.  Raises RedisError."""
        if member.folded is None or member.nick is None:
            return
        if self.by_nick.get(member.folded) is member:
            del self.by_nick[member.folded]
        await self.bus.release_nick(member.folded, member.nick, reason)

    async def rename(self, member: Member, new: str, proven_hash: str = "") -> str:
        """``"renamed"`` (announced in each of the member's rooms), ``"taken"``,
        ``"registered"`` (an account whose hash is not ``proven_hash``), or
        ``"lost"`` when Redis no longer records the old nickname as this gateway's
        (it is being re-asserted).  Raises RedisError."""
        assert member.nick is not None and member.folded is not None
        new_folded = p.fold_nick(new)
        if new_folded != member.folded and (
            new_folded in self.by_nick or new_folded in self.claiming
        ):
            return "taken"
        self.claiming.add(new_folded)
        self.renaming.add(member.folded)
        try:
            result = await self.bus.rename_nick(
                member.folded, member.nick, new_folded, new, proven_hash
            )
        finally:
            self.claiming.discard(new_folded)
            self.renaming.discard(member.folded)
        if result is RenameResult.NOT_OURS:
            return "lost"
        if result is RenameResult.REGISTERED:
            return "registered"
        if result is not RenameResult.RENAMED:
            return "taken"
        # Renamed and announced in each room by the same script.
        del self.by_nick[member.folded]
        if new_folded != member.folded:
            member.account_hash = proven_hash or None
        member.nick, member.folded = new, new_folded
        self.by_nick[new_folded] = member
        member.rebind()
        return "renamed"

    async def reassert(self, *, announce: bool) -> None:
        """Make Redis hold what this gateway serves: release nicknames it records
        for us that no local member holds, claim every live nickname again and
        re-add its memberships.  With ``announce``, a user whose nickname had been
        released (its rooms were told it left) is announced as joining again.
        Raises RedisError."""
        held = await self.bus.owned_nicks()
        for folded in held - set(self.by_nick) - self.claiming - self.renaming:
            owner = await self.bus.nick_owner(folded)
            if owner is None or owner[0] != self.incarnation:
                continue
            # Checked again right before the release is sent (no await between):
            # a client may have taken the name meanwhile.
            if folded in self.by_nick or folded in self.claiming or folded in self.renaming:
                continue
            await self.bus.release_nick(folded, owner[1], "connection lost")
        for folded, member in list(self.by_nick.items()):
            # Sessions change while we await: skip one that left, was renamed, or is
            # being renamed (checked right before each command is sent, so a
            # later release or rename by the session runs after it in Redis).
            if not self._holds(folded, member):
                continue
            assert member.nick is not None
            claimed = await self.bus.claim_nick(folded, member.nick, member.account_hash or "")
            if not claimed:
                if self._holds(folded, member):
                    await self._resolve_conflict(member)
                continue
            announce_as = "join" if announce and claimed == 2 else ""
            for name in list(member.rooms):
                if not self._holds(folded, member):
                    break
                await self.bus.join_room(name, folded, member.nick, announce=announce_as)

    def _holds(self, folded: str, member: Member) -> bool:
        return (
            self.by_nick.get(folded) is member
            and member.folded == folded
            and folded not in self.renaming
        )

    async def _resolve_conflict(self, member: Member) -> None:
        """Another gateway re-asserted this nickname first: that one keeps it (first
        come after a restart wins), this member is renamed."""
        assert member.nick is not None and member.folded is not None
        old = member.nick
        del self.by_nick[member.folded]
        for attempt in range(CONFLICT_ATTEMPTS):
            suffix = f"_{os.urandom(2).hex()}" if attempt else "_"
            new = (old[: p.NICK_MAX - len(suffix)] + suffix) if attempt else (old[:31] + "_")
            folded = p.fold_nick(new)
            if folded in self.by_nick:
                continue
            if await self.bus.claim_nick(folded, new):
                member.nick, member.folded = new, folded
                member.account_hash = None
                member.rebind()
                self.by_nick[folded] = member
                for name in member.rooms:
                    await self.bus.join_room(name, folded, new)
                    await self.bus.publish(name, "nick", old, new)
                member.log.warning("nick.conflict_renamed", old=old, new=new)
                member.deliver(
                    p.error(f'your nickname "{old}" was taken by another user while this '
                            f'gateway was out of touch with the cluster; you are now "{new}"')
                )
                return
        member.disconnect(f'nickname "{old}" lost while this gateway was out of touch')
