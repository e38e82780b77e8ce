"""The bus: typed operations on presence, rooms and publications in Redis.

Every multi-key change is one Lua script (``lua/*.lua``, see
:mod:`~services.common.bus.scripts`), so it is atomic across the cluster:
claiming a nickname, renaming, publishing with a per-room sequence number and
history, and releasing a dead gateway's users (exactly once, whoever runs it).
Key names come from :class:`~services.common.keys.Keys`; what travels on the
channels is encoded by :mod:`~services.common.bus.codec`.
"""

from __future__ import annotations

import enum
import itertools
import math
import time
from dataclasses import dataclass
from typing import Any

from services.common.bus.codec import (
    CHAT_KINDS,
    NodeMessage,
    encode_body,
    encode_message,
)
from services.common.bus.scripts import Script
from services.common.keys import Keys, incarnation_name, owner_record, parse_owner_record
from services.common.redis import (
    Arg,
    CommandNotSent,
    RedisClient,
    RedisReplyError,
    RedisUnavailable,
)

# Every publication of a room is kept in its log, enough to fill a subscriber gap
# after a reconnect.  Chat lines and actions are also kept in a short history list,
# replayed on join, so joining reads a few entries, not the whole log.
REPLAY_WINDOW = 2000
HISTORY_KEEP = 500  # the largest CHAT_HISTORY_SIZE

# An empty room's sequence counter, history, log and sizes are kept this long
# (CHAT_ROOM_TTL_S), then expire, so rooms used once do not stay in Redis.  Joining
# removes the expiry: a room with members never expires.
ROOM_RETENTION_S = 3 * 3600
# The most bytes a room's log and history hold (CHAT_ROOM_LOG_BYTES,
# CHAT_ROOM_HISTORY_BYTES), whatever their entry counts: the oldest entries go first.
LOG_BYTES = 1024 * 1024
HISTORY_BYTES = 256 * 1024

# The most HSCAN calls one bounded listing (/who) makes.
SCAN_ROUNDS = 4


class ClaimResult(enum.IntEnum):
    """What :meth:`Bus.claim_nick` did: true when the gateway holds the nickname
    now, false when it is taken or registered to someone who did not prove it."""

    REGISTERED = -1  # an account, and the claimant did not prove its password
    TAKEN = 0  # someone else holds it
    ALREADY_OURS = 1  # this gateway already held it under the same display nick
    CLAIMED = 2  # newly claimed

    def __bool__(self) -> bool:
        return self > 0


class RenameResult(enum.IntEnum):
    """What :meth:`Bus.rename_nick` did."""

    REGISTERED = -2  # the new nickname is an account the caller did not identify for
    NOT_OURS = -1  # this gateway no longer holds the old nickname
    TAKEN = 0  # the new nickname is someone else's
    RENAMED = 1


class RegisterResult(enum.IntEnum):
    """What :meth:`Bus.register` did."""

    ADDRESS_LIMITED = -2  # the caller's address registered its share for now
    NOT_OURS = -1  # the caller no longer holds the nickname
    ALREADY_REGISTERED = 0
    REGISTERED = 1


class AuthLock(enum.IntEnum):
    """Why :meth:`Bus.auth_attempt` refused an attempt (``NONE``: it may go on)."""

    NONE = 0
    ACCOUNT = 1  # too many failures on this account
    ADDRESS = 2  # too many failures from this address


class PublishUncertain(RedisUnavailable):
    """The publish command was written but no answer came (connection lost, or too
    slow): it may or may not have run.  :meth:`Bus.resolve` finds out."""

    def __init__(self, message: str, room: str, pub_id: str, deadline_ms: int,
                 submitted: float) -> None:
        super().__init__(message)
        self.room = room
        self.pub_id = pub_id
        self.deadline_ms = deadline_ms
        self.submitted = submitted


class RoomLimitReached(Exception):
    """A join refused: the room has no members, and the caller may not create one
    now (``CHAT_ROOMS_PER_MINUTE``).  Nothing changed in Redis."""


@dataclass(frozen=True, slots=True)
class Joined:
    """What :meth:`Bus.join_room` did."""

    seq: int  # the announcement's sequence number; 0 when none was published
    created: bool  # the room had no members before this join


class Resolution(enum.Enum):
    """What :meth:`Bus.resolve` found out about an uncertain publication."""

    PENDING = "pending"  # Redis's clock has not passed the deadline: ask again later
    PUBLISHED = "published"
    NOT_PUBLISHED = "not published"
    UNKNOWN = "unknown"  # the room's log no longer reaches back that far



class Bus:
    """Presence and publication operations for one gateway.

    Raises what :class:`RedisClient` raises (:class:`RedisError` subclasses).
    """

    _publish = Script("publish")
    _claim = Script("claim")
    _release = Script("release")
    _rename = Script("rename")
    _join = Script("join_room")
    _leave = Script("leave_room")
    _reap = Script("reap")
    _resolve = Script("resolve")
    _register = Script("register")
    _set_password = Script("set_password")
    _auth_attempt = Script("auth_attempt")
    _auth_undo = Script("auth_undo")
    _admit = Script("admit")
    _release_addr = Script("release_addr")
    _set_addr = Script("set_addr")
    _epoch_check = Script("epoch_check")  # run in each connection's set-up

    def __init__(
        self, redis: RedisClient, keys: Keys, gateway_id: str, *,
        room_ttl_s: float = ROOM_RETENTION_S, log_bytes: int = LOG_BYTES,
        history_bytes: int = HISTORY_BYTES,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.gateway_id = gateway_id
        # EXPIRE takes whole seconds; never 0, which would delete at once.
        self.room_ttl_s = max(1, math.ceil(room_ttl_s))
        self.log_bytes = log_bytes
        self.history_bytes = history_bytes
        self.clock_offset_s = 0.0  # Redis's clock minus ours (see sync_clock)
        self._pub_ids = itertools.count(1)

    def _next_id(self) -> str:
        """A publication id, unique within this gateway process."""
        return str(next(self._pub_ids))

    def _announcement(self, kind: str, nick: str) -> str:
        """The envelope a membership script publishes (``""``: it publishes none)."""
        return encode_body(kind, nick, "", self.gateway_id, self._next_id()) if kind else ""

    async def sync_clock(self) -> float:
        """Measure Redis's clock against ours, so deadlines checked inside Redis
        hold even when the two hosts' clocks differ."""
        before = time.time()
        seconds, micros = await self.redis.execute("TIME")
        after = time.time()
        self.clock_offset_s = int(seconds) + int(micros) / 1e6 - (before + after) / 2
        return self.clock_offset_s

    # -- nicknames ----------------------------------------------------------------
    async def claim_nick(self, folded: str, nick: str, proven_hash: str = "") -> ClaimResult:
        """Claim ``nick`` for this gateway (false when someone else holds it, or it
        is registered and ``proven_hash``, the account hash the claimant proved its
        password against, is not the account's)."""
        k = self.keys
        reply = await self._claim(
            self.redis,
            [k.nicks, k.gateway_nicks(self.gateway_id), k.account(folded)],
            [folded, owner_record(self.gateway_id, nick), proven_hash],
        )
        return ClaimResult(int(reply))

    async def release_nick(self, folded: str, nick: str, reason: str = "") -> bool:
        """Release ``nick`` if this gateway still owns it: leave its rooms and
        announce the leave in each, in one atomic step.  ``False`` when it was not
        (or no longer) this gateway's."""
        k = self.keys
        reply = await self._release(
            self.redis,
            [k.nicks, k.gateway_nicks(self.gateway_id), k.nick_rooms(folded), k.epoch, k.rooms],
            [
                folded, owner_record(self.gateway_id, nick),
                encode_body("leave", nick, reason, self.gateway_id),
                REPLAY_WINDOW, self.room_ttl_s, *k.room_patterns(), self.log_bytes,
            ],
        )
        return bool(reply)

    async def owned_nicks(self) -> set[str]:
        """Folded nicknames Redis records under this gateway."""
        members = await self.redis.execute("SMEMBERS", self.keys.gateway_nicks(self.gateway_id))
        return {m.decode() for m in members}

    async def rename_nick(
        self, old_folded: str, old: str, new_folded: str, new: str, proven_hash: str = ""
    ) -> RenameResult:
        """Rename this gateway's ``old`` to ``new`` (memberships follow) and announce
        it in each of its rooms, in one step; or say why not.  A registered ``new``
        needs ``proven_hash``: the account hash the caller proved its password
        against."""
        k = self.keys
        body = encode_body("nick", old, new, self.gateway_id, self._next_id())
        reply = await self._rename(
            self.redis,
            [k.nicks, k.gateway_nicks(self.gateway_id), k.nick_rooms(old_folded),
             k.nick_rooms(new_folded), k.epoch, k.account(new_folded)],
            [
                old_folded, owner_record(self.gateway_id, old),
                new_folded, owner_record(self.gateway_id, new),
                new, *k.room_patterns(), body, REPLAY_WINDOW, self.log_bytes, proven_hash,
            ],
        )
        return RenameResult(int(reply))

    # -- accounts -------------------------------------------------------------------
    async def account_hash(self, folded: str) -> str | None:
        """The password hash of the account ``folded``, or ``None`` when the nickname
        is not registered."""
        reply = await self.redis.execute("HGET", self.keys.account(folded), "hash")
        return None if reply is None else reply.decode()

    async def register(
        self, folded: str, nick: str, password_hash: str, *, address: str, per_address: int,
        window_s: float,
    ) -> tuple[RegisterResult, float]:
        """Register ``nick`` with ``password_hash``, only while this gateway holds it
        and ``address`` has registered fewer than ``per_address`` accounts in the
        window.  The result, and with ``ADDRESS_LIMITED`` the seconds to wait."""
        k = self.keys
        code, ms = await self._register(
            self.redis,
            [k.nicks, k.account(folded), k.accounts, k.registrations_address(address)],
            [folded, owner_record(self.gateway_id, nick), password_hash, nick, int(time.time()),
             per_address, max(1, int(window_s * 1000))],
        )
        return RegisterResult(int(code)), int(ms) / 1000

    async def set_password(self, folded: str, old_hash: str, new_hash: str) -> bool:
        """Replace the account's hash if it is still ``old_hash``."""
        reply = await self._set_password(
            self.redis, [self.keys.account(folded)], [old_hash, new_hash, int(time.time())]
        )
        return bool(reply)

    async def auth_attempt(
        self, folded: str, address: str, *, per_account: int, per_address: int, window_s: float
    ) -> tuple[AuthLock, float]:
        """Count a password attempt, or refuse it: ``(AuthLock.NONE, 0)`` when it may
        go on, else what is locked and for how many more seconds."""
        k = self.keys
        code, ms = await self._auth_attempt(
            self.redis,
            [k.auth_failures_nick(folded), k.auth_failures_address(address)],
            [per_account, per_address, max(1, int(window_s * 1000))],
        )
        return AuthLock(int(code)), int(ms) / 1000

    async def auth_undo(self, folded: str, address: str) -> None:
        """Take back an attempt whose password proved correct."""
        k = self.keys
        await self._auth_undo(
            self.redis, [k.auth_failures_nick(folded), k.auth_failures_address(address)]
        )

    async def nick_owner(self, folded: str) -> tuple[str, str] | None:
        """``(gateway_id, display nick)`` of an online nickname, or ``None``."""
        record = await self.redis.execute("HGET", self.keys.nicks, folded)
        if record is None:
            return None
        return parse_owner_record(record.decode())

    async def online(self, limit: int) -> tuple[int, list[str]]:
        """How many nicknames are online, and up to ``limit`` display nicknames
        (the first an HSCAN finds, not the first in order), sorted
        case-insensitively.  A few commands, whatever the number online."""
        total, records = await self._scan_hash(self.keys.nicks, limit)
        return total, sorted((parse_owner_record(r.decode())[1] for r in records), key=str.lower)

    async def _scan_hash(self, key: str, limit: int) -> tuple[int, list[bytes]]:
        """``HLEN`` of a hash and up to ``limit`` of its values, in at most
        ``SCAN_ROUNDS`` HSCAN calls (never HVALS: the hash may be huge)."""
        replies = await self.redis.pipeline([("HLEN", key), ("HSCAN", key, 0, "COUNT", limit)])
        _raise_first_error(replies)
        total = int(replies[0])
        cursor, flat = replies[1]
        found: dict[bytes, bytes] = dict(zip(flat[::2], flat[1::2], strict=True))
        rounds = 1
        while cursor != b"0" and len(found) < limit and rounds < SCAN_ROUNDS:
            cursor, flat = await self.redis.execute("HSCAN", key, cursor, "COUNT", limit)
            found.update(zip(flat[::2], flat[1::2], strict=True))
            rounds += 1
        return max(total, len(found)), list(found.values())[:limit]

    # -- rooms ----------------------------------------------------------------------
    async def join_room(
        self, room: str, folded: str, nick: str, announce: str = "", *, may_create: bool = True
    ) -> Joined:
        """Record ``nick`` as a member of ``room`` and, with ``announce`` (a kind:
        ``join`` or ``enter``), announce it in the same step.  Returns the
        announcement's sequence number (0 when nothing was announced: none asked
        for, or it was a member already) and whether the join created the room
        (it had no members).  Without ``may_create``, a room with no members is
        not joined: raises :class:`RoomLimitReached` and changes nothing."""
        k = self.keys
        body = self._announcement(announce, nick)
        reply = await self._join(
            self.redis,
            [k.room_seq(room), k.room_history(room), k.room_log(room), k.room_members(room),
             k.rooms, k.nick_rooms(folded), k.epoch, k.room_bytes(room)],
            [room, folded, nick, k.room_channel(room), body, REPLAY_WINDOW,
             1 if may_create else 0, self.log_bytes],
        )
        if not isinstance(reply, list):
            raise RoomLimitReached(room)
        return Joined(seq=int(reply[0]), created=bool(int(reply[1])))

    async def leave_room(self, room: str, folded: str, nick: str = "", announce: str = "") -> bool:
        """Remove ``folded`` from ``room`` and, with ``announce`` (a kind: ``part``),
        announce it in the same step, only if it was a member.  An emptied room's
        keys start to expire.  ``True`` when it was a member."""
        k = self.keys
        body = self._announcement(announce, nick)
        return bool(await self._leave(
            self.redis,
            [k.room_members(room), k.room_seq(room), k.room_history(room), k.room_log(room),
             k.rooms, k.nick_rooms(folded), k.epoch, k.room_bytes(room)],
            [room, folded, self.room_ttl_s, k.room_channel(room), body, REPLAY_WINDOW,
             self.log_bytes],
        ))

    async def publish(self, room: str, kind: str, nick: str, text: str = "") -> int:
        """Publish in ``room``; returns the publication's sequence number (see
        :meth:`publish_in_epoch`, which also returns the epoch)."""
        seq, _epoch = await self.publish_in_epoch(room, kind, nick, text)
        return seq

    async def publish_in_epoch(
        self, room: str, kind: str, nick: str, text: str = ""
    ) -> tuple[int, str]:
        """Publish in ``room``; returns the publication's sequence number and the
        epoch it counts in.

        Raises :class:`PublishUncertain` when the command was written but no answer
        came (it may have run: :meth:`resolve` tells), and another
        :class:`RedisError` when it certainly did not run (not connected, an error
        reply, or it reached Redis after its deadline and was dropped).
        """
        pub_id = self._next_id()
        body = encode_body(kind, nick, text, self.gateway_id, pub_id)
        # The deadline is on Redis's clock: our clock plus the offset measured at connect.
        submitted = time.time() + self.clock_offset_s
        deadline_ms = int((submitted + self.redis.timeout_s) * 1000)
        try:
            k = self.keys
            reply = await self._publish(
                self.redis,
                [k.epoch, k.room_seq(room), k.room_log(room), k.room_history(room),
                 k.room_members(room), k.room_bytes(room)],
                [k.room_channel(room), room, body, REPLAY_WINDOW, deadline_ms,
                 HISTORY_KEEP if kind in CHAT_KINDS else 0, self.log_bytes,
                 self.history_bytes, self.room_ttl_s],
            )
        except CommandNotSent:
            raise
        except RedisUnavailable as exc:
            raise PublishUncertain(str(exc), room, pub_id, deadline_ms, submitted) from None
        if not isinstance(reply, list):  # 0: it reached Redis after its deadline
            raise RedisUnavailable("publication reached Redis after its deadline; dropped")
        return int(reply[0]), reply[1].decode()

    async def resolve(self, uncertain: PublishUncertain) -> tuple[Resolution, int]:
        """Whether an uncertain publication was published, and its sequence number
        when it was.  Exact once Redis's clock has passed the publication's deadline
        (after which the publish script refuses it).  Raises :class:`RedisError`."""
        reply = int(
            await self._resolve(
                self.redis,
                [self.keys.room_log(uncertain.room)],
                [uncertain.pub_id, uncertain.deadline_ms, uncertain.submitted, REPLAY_WINDOW,
                 self.gateway_id],
            )
        )
        if reply > 0:
            return Resolution.PUBLISHED, reply
        return {-1: Resolution.PENDING, 0: Resolution.NOT_PUBLISHED}.get(
            reply, Resolution.UNKNOWN
        ), 0

    async def check_epoch(self) -> str:
        """Start a new epoch if the primary's replication id is not the one the
        current epoch began on; returns the epoch in force.  Gateways run the same
        script in each connection's set-up (:func:`epoch_check_command`)."""
        reply = await self._epoch_check(self.redis, [self.keys.epoch, self.keys.epoch_source])
        return str(reply.decode())

    async def history(self, room: str, count: int) -> list[bytes]:
        """The room's last ``count`` chat lines and actions, oldest first."""
        if count <= 0:
            return []
        return list(
            await self.redis.execute("LRANGE", self.keys.room_history(room), -count, -1)
        )

    async def log(self, room: str, count: int = REPLAY_WINDOW) -> list[bytes]:
        """The room's last ``count`` kept publications (for gap filling), oldest first."""
        count = max(1, min(count, REPLAY_WINDOW))
        return list(await self.redis.execute("LRANGE", self.keys.room_log(room), -count, -1))

    async def room_position(
        self, rooms: list[str]
    ) -> tuple[str | None, list[tuple[int, str | None]]]:
        """The current epoch (``None`` before the first publication) and, for each
        room, its last sequence number (0 when it has none) with the epoch that
        number counts in (``None`` when unrecorded): right after a new epoch began,
        a room's counter still holds the old epoch's last number until the room's
        next publication.  One round trip."""
        commands: list[tuple[Arg, ...]] = [("GET", self.keys.epoch)]
        for r in rooms:
            commands += [("GET", self.keys.room_seq(r)), ("HGET", self.keys.room_bytes(r), "numbering")]
        replies = await self.redis.pipeline(commands)
        _raise_first_error(replies)
        epoch = replies[0].decode() if replies[0] is not None else None
        positions = [(int(seq) if seq is not None else 0,
                      counted_in.decode() if counted_in is not None else epoch)
                     for seq, counted_in in zip(replies[1::2], replies[2::2], strict=True)]
        return epoch, positions

    async def rooms(self, limit: int) -> tuple[int, list[tuple[str, int]]]:
        """How many rooms have members anywhere, and the ``limit`` largest with
        their member counts, largest first (ties by name): two commands in one
        round trip, whatever the number of rooms.  The scripts keep ``Keys.rooms``
        scored by minus the member count, so ZRANGE's order is the one shown."""
        replies = await self.redis.pipeline([
            ("ZCARD", self.keys.rooms),
            ("ZRANGE", self.keys.rooms, 0, max(0, limit - 1), "WITHSCORES"),
        ])
        _raise_first_error(replies)
        flat = replies[1] if limit > 0 else []
        shown = [(n.decode(), -int(float(c))) for n, c in zip(flat[::2], flat[1::2], strict=True)]
        return int(replies[0]), shown

    async def room_members(self, room: str, limit: int) -> tuple[int, list[str]]:
        """How many members ``room`` has, and up to ``limit`` of their display
        nicknames, sorted case-insensitively (see :meth:`online`)."""
        total, values = await self._scan_hash(self.keys.room_members(room), limit)
        return total, sorted((v.decode() for v in values), key=str.lower)

    # -- node and broadcast channels ----------------------------------------------
    async def send_to_node(self, gateway_id: str, message: NodeMessage) -> int:
        """Publish a message to one gateway; returns how many subscribers got it."""
        data = encode_message(message)
        return int(await self.redis.execute("PUBLISH", self.keys.node_channel(gateway_id), data))

    # -- per-address admission -------------------------------------------------------
    async def admit_address(
        self, address: str, limit: int, rate: float, burst: int
    ) -> tuple[bool, str, int]:
        """Count a new connection from ``address`` if it is under its cluster-wide
        limits (``limit`` connections, 0 = none; ``rate`` per second with ``burst``,
        inf = none).  ``(True, "", held)`` when counted, ``(False, "rate" or
        "connections", held)`` when refused (nothing counted)."""
        k = self.keys
        reply = await self._admit(
            self.redis,
            [k.addr_conns(address), k.addr_rate(address), k.gateway_addrs(self.gateway_id)],
            [self.gateway_id, address, limit, "inf" if rate == float("inf") else repr(rate),
             burst],
        )
        if int(reply[0]) == 1:
            return True, "", int(reply[1])
        return False, reply[1].decode(), int(reply[2])

    async def release_address(self, address: str) -> int:
        """One of this gateway's connections from ``address`` ended; returns how many
        it still holds from there."""
        k = self.keys
        return int(await self._release_addr(
            self.redis, [k.addr_conns(address), k.gateway_addrs(self.gateway_id)],
            [self.gateway_id, address],
        ))

    async def set_address_count(
        self, address: str, count: int, *, gateway: str | None = None, only_if_dead: bool = False
    ) -> bool:
        """Set what ``gateway`` (default: this one) holds from ``address`` to
        ``count``; with ``only_if_dead``, only while its lease is gone.  ``True``
        when set."""
        gw = self.gateway_id if gateway is None else gateway
        k = self.keys
        return bool(await self._set_addr(
            self.redis, [k.addr_conns(address), k.gateway_addrs(gw), k.gateway_alive(gw)],
            [gw, address, count, 1 if only_if_dead else 0],
        ))

    async def counted_addresses(self, gateway: str | None = None) -> set[str]:
        """Client addresses Redis counts connections for on ``gateway`` (default: this one)."""
        gw = self.gateway_id if gateway is None else gateway
        return {a.decode() for a in await self.redis.execute("SMEMBERS", self.keys.gateway_addrs(gw))}

    async def release_addresses(self, gateway: str, *, force: bool = False) -> int:
        """Drop every per-address count of a dead ``gateway`` (unless its lease is
        alive and not ``force``); returns how many addresses were released.  Safe
        to run from several gateways at once, and again after a failure."""
        released = 0
        for address in await self.counted_addresses(gateway):
            if await self.set_address_count(address, 0, gateway=gateway, only_if_dead=not force):
                released += 1
        return released

    async def bans(self) -> dict[str, str]:
        """Every ban record: network -> JSON (see :mod:`services.common.bans`)."""
        raw = await self.redis.execute("HGETALL", self.keys.bans)
        return {raw[i].decode(): raw[i + 1].decode() for i in range(0, len(raw), 2)}

    # -- gateway lease --------------------------------------------------------------
    async def heartbeat(self, ttl_s: float, info: dict[str, str | int]) -> bool:
        """Renew this gateway's lease.  ``False`` when the lease had lapsed (or Redis
        lost it): other gateways may have released our users meanwhile.
        Raises :class:`RedisError`, error replies included.

        The lease is renewed with ``PEXPIRE``, which Redis allows at ``maxmemory``
        under ``noeviction`` (``SET`` is refused there), so a Redis out of memory
        does not make every gateway look dead; only a lapsed lease is set anew."""
        now = time.time()
        alive = self.keys.gateway_alive(self.gateway_id)
        ttl_ms = int(ttl_s * 1000)
        commands: list[tuple[Arg, ...]] = [
            ("PEXPIRE", alive, ttl_ms),
            ("ZADD", self.keys.gateways, now, self.gateway_id),
        ]
        if info:
            flat: list[Arg] = []
            for k, v in info.items():
                flat += [k, v]
            commands.append(("HSET", self.keys.gateway_info(self.gateway_id), *flat))
        replies = await self.redis.pipeline(commands)
        _raise_first_error(replies[:1])
        held = int(replies[0]) == 1
        if not held:
            await self.redis.execute("SET", alive, "1", "PX", ttl_ms)
        _raise_first_error(replies[1:])
        return held

    async def dead_gateways(self) -> list[str]:
        """Gateways listed in the registry whose lease key is gone."""
        ids = [g.decode() for g in await self.redis.execute("ZRANGE", self.keys.gateways, 0, -1)]
        others = [g for g in ids if g != self.gateway_id]
        if not others:
            return []
        alive = await self.redis.pipeline([("EXISTS", self.keys.gateway_alive(g)) for g in others])
        return [g for g, a in zip(others, alive, strict=True) if not a]

    async def reap(self, dead_gateway: str, *, force: bool = False) -> list[str]:
        """Release a dead gateway's users; the display nicks released (empty when
        another gateway did it first, or the gateway came back).  ``force`` ignores
        its lease: for a predecessor known to be dead (see :meth:`predecessors`)."""
        k = self.keys
        released = await self._reap(
            self.redis,
            [k.gateways, k.gateway_alive(dead_gateway), k.gateway_nicks(dead_gateway),
             k.gateway_info(dead_gateway), k.nicks, k.epoch, k.rooms],
            [dead_gateway, REPLAY_WINDOW, time.time(), 1 if force else 0, self.room_ttl_s,
             k.nick_rooms_pattern, *k.room_patterns(), self.log_bytes],
        )
        return [r.decode() for r in released]

    async def predecessors(self, name: str) -> list[str]:
        """Earlier processes registered under the configured gateway ``name`` (this
        one excluded) that nobody listens for any more: their node channel has no
        subscriber, so whatever they owned is orphaned, lease or not."""
        ids = [g.decode() for g in await self.redis.execute("ZRANGE", self.keys.gateways, 0, -1)]
        mine = [g for g in ids if g != self.gateway_id and incarnation_name(g) == name]
        if not mine:
            return []
        reply = await self.redis.execute(
            "PUBSUB", "NUMSUB", *(self.keys.node_channel(g) for g in mine)
        )
        counts = dict(zip(reply[::2], reply[1::2], strict=True))
        return [g for g in mine if int(counts.get(self.keys.node_channel(g).encode(), 0)) == 0]

    async def retire(self) -> None:
        """Remove this gateway from the registry (after its users were released)."""
        replies = await self.redis.pipeline(
            [
                ("ZREM", self.keys.gateways, self.gateway_id),
                ("DEL", self.keys.gateway_alive(self.gateway_id),
                 self.keys.gateway_info(self.gateway_id),
                 self.keys.gateway_nicks(self.gateway_id)),
            ]
        )
        _raise_first_error(replies)


def epoch_check_command(keys: Keys) -> tuple[Arg, ...]:
    """The command every gateway runs on each new command connection, before
    anything else uses it: a new epoch when the primary's replication id is not
    the one the epoch began on (see ``lua/epoch_check.lua``)."""
    return ("EVAL", Bus._epoch_check.source, 2, keys.epoch, keys.epoch_source)


def _raise_first_error(replies: list[Any]) -> None:
    for reply in replies:
        if isinstance(reply, RedisReplyError):
            raise reply
