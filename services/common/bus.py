"""The chat bus: presence, rooms and publications in Redis.

Every multi-key change is one Lua script, so it is atomic across the cluster:
claiming a nickname, renaming, publishing with a per-room sequence number and
history, and releasing a dead gateway's users (exactly once, whoever runs it).

Room publications travel as ``b"<epoch> <seq> <room> <json>"``.  The epoch changes
when Redis loses its data (a restart), so sequence numbers restart from 1 under a
new epoch instead of looking like duplicates.  The JSON envelope is
``{"k": kind, "n": nick, "x": text, "g": origin gateway, "t": unix time,
"i": publication id}`` (the id, unique per gateway process, lets a sender find out
whether a line whose reply it never got was published: :meth:`Bus.resolve`)
(``k`` is ``msg``, ``act``, ``join``, ``leave``, ``enter``, ``part`` or
``nick``; for ``nick`` the new nickname is in ``x``).  The room is the channel's.  Node and broadcast
channels carry plain JSON objects with a ``t`` field (see
:mod:`services.common.keys`).
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import json
import time
from dataclasses import dataclass
from typing import Any

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


# An empty room's sequence counter and history are kept this long, then expire,
# so rooms used once do not stay in Redis forever.  Joining removes the expiry.
ROOM_RETENTION_S = 7 * 24 * 3600

_ROOM_EMPTY_LUA = f"""
local function room_emptied(prefix, room)
  redis.call('SREM', prefix .. 'rooms', room)
  redis.call('EXPIRE', prefix .. 'room:' .. room .. ':seq', {ROOM_RETENTION_S})
  redis.call('EXPIRE', prefix .. 'room:' .. room .. ':history', {ROOM_RETENTION_S})
  redis.call('EXPIRE', prefix .. 'room:' .. room .. ':log', {ROOM_RETENTION_S})
end
"""


def _envelope_lua() -> str:
    # Shared Lua helpers: publish one envelope in a room with seq and history; mark
    # a room empty.
    return _ROOM_EMPTY_LUA + """
local function epoch(prefix)
  local e = redis.call('GET', prefix .. 'epoch')
  if not e then
    local t = redis.call('TIME')
    e = t[1] .. string.format('%06d', tonumber(t[2]))
    redis.call('SET', prefix .. 'epoch', e)
  end
  return e
end
local function publish_room(prefix, room, body, keep, chat)
  local seq = redis.call('INCR', prefix .. 'room:' .. room .. ':seq')
  local payload = epoch(prefix) .. ' ' .. seq .. ' ' .. room .. ' ' .. body
  if keep > 0 then
    local log = prefix .. 'room:' .. room .. ':log'
    redis.call('RPUSH', log, payload)
    redis.call('LTRIM', log, -keep, -1)
  end
  if chat then
    local hist = prefix .. 'room:' .. room .. ':history'
    redis.call('RPUSH', hist, payload)
    redis.call('LTRIM', hist, -""" + str(HISTORY_KEEP) + """, -1)
  end
  redis.call('PUBLISH', prefix .. 'room:' .. room, payload)
  return seq
end
"""


# KEYS: none (all derived from the prefix, so scripts stay cluster-agnostic within
# one Redis).  ARGV[1] is always the key prefix.
# ARGV: prefix, room, envelope, keep, deadline (unix ms; 0 = none), chat (1/0).  A publish
# that reaches Redis after its deadline (the caller already told the client it
# was not sent) is dropped and returns 0, so a timeout never turns into a late send.
PUBLISH_LUA = _envelope_lua() + """
local deadline = tonumber(ARGV[5])
if deadline > 0 then
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > deadline then return 0 end
end
return publish_room(ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[6] == '1')
"""

# ARGV: prefix, folded nick, owner record, gateway id.
# Returns 2 when newly claimed, 1 when already ours, 0 when someone else has it.
CLAIM_LUA = """
local nicks = ARGV[1] .. 'nicks'
if redis.call('HSETNX', nicks, ARGV[2], ARGV[3]) == 1 then
  redis.call('SADD', ARGV[1] .. 'gw:' .. ARGV[4] .. ':nicks', ARGV[2])
  return 2
end
if redis.call('HGET', nicks, ARGV[2]) == ARGV[3] then
  redis.call('SADD', ARGV[1] .. 'gw:' .. ARGV[4] .. ':nicks', ARGV[2])
  return 1
end
return 0
"""

# Release a nickname, leave its rooms and announce the leave in each, atomically.
# ARGV: prefix, folded nick, owner record, gateway id, leave envelope, keep
RELEASE_LUA = _envelope_lua() + """
redis.call('SREM', ARGV[1] .. 'gw:' .. ARGV[4] .. ':nicks', ARGV[2])
if redis.call('HGET', ARGV[1] .. 'nicks', ARGV[2]) == ARGV[3] then
  redis.call('HDEL', ARGV[1] .. 'nicks', ARGV[2])
  local rooms_key = ARGV[1] .. 'nick:' .. ARGV[2] .. ':rooms'
  for _, room in ipairs(redis.call('SMEMBERS', rooms_key)) do
    local members = ARGV[1] .. 'room:' .. room .. ':members'
    redis.call('HDEL', members, ARGV[2])
    publish_room(ARGV[1], room, ARGV[5], tonumber(ARGV[6]))
    -- after the publish, so the expiry covers keys the publish may have created
    if redis.call('HLEN', members) == 0 then room_emptied(ARGV[1], room) end
  end
  redis.call('DEL', rooms_key)
  return 1
end
return 0
"""

# ARGV: prefix, old folded, old record, new folded, new record, gateway id
RENAME_LUA = """
local nicks = ARGV[1] .. 'nicks'
if redis.call('HGET', nicks, ARGV[2]) ~= ARGV[3] then return -1 end
if ARGV[2] ~= ARGV[4] then
  if redis.call('HSETNX', nicks, ARGV[4], ARGV[5]) == 0 then return 0 end
  redis.call('HDEL', nicks, ARGV[2])
  local gwn = ARGV[1] .. 'gw:' .. ARGV[6] .. ':nicks'
  redis.call('SREM', gwn, ARGV[2])
  redis.call('SADD', gwn, ARGV[4])
  local old_rooms = ARGV[1] .. 'nick:' .. ARGV[2] .. ':rooms'
  local new_rooms = ARGV[1] .. 'nick:' .. ARGV[4] .. ':rooms'
  local display = string.sub(ARGV[5], string.len(ARGV[6]) + 2)
  for _, room in ipairs(redis.call('SMEMBERS', old_rooms)) do
    local members = ARGV[1] .. 'room:' .. room .. ':members'
    redis.call('HDEL', members, ARGV[2])
    redis.call('HSET', members, ARGV[4], display)
    redis.call('SADD', new_rooms, room)
  end
  redis.call('DEL', old_rooms)
else
  redis.call('HSET', nicks, ARGV[4], ARGV[5])
  local display = string.sub(ARGV[5], string.len(ARGV[6]) + 2)
  for _, room in ipairs(redis.call('SMEMBERS', ARGV[1] .. 'nick:' .. ARGV[4] .. ':rooms')) do
    redis.call('HSET', ARGV[1] .. 'room:' .. room .. ':members', ARGV[4], display)
  end
end
return 1
"""

# ARGV: prefix, room, folded nick, display nick
JOIN_ROOM_LUA = """
redis.call('PERSIST', ARGV[1] .. 'room:' .. ARGV[2] .. ':seq')
redis.call('PERSIST', ARGV[1] .. 'room:' .. ARGV[2] .. ':history')
redis.call('PERSIST', ARGV[1] .. 'room:' .. ARGV[2] .. ':log')
redis.call('HSET', ARGV[1] .. 'room:' .. ARGV[2] .. ':members', ARGV[3], ARGV[4])
redis.call('SADD', ARGV[1] .. 'rooms', ARGV[2])
redis.call('SADD', ARGV[1] .. 'nick:' .. ARGV[3] .. ':rooms', ARGV[2])
return 1
"""

# ARGV: prefix, room, folded nick
LEAVE_ROOM_LUA = _ROOM_EMPTY_LUA + """
local members = ARGV[1] .. 'room:' .. ARGV[2] .. ':members'
local removed = redis.call('HDEL', members, ARGV[3])
if redis.call('HLEN', members) == 0 then room_emptied(ARGV[1], ARGV[2]) end
redis.call('SREM', ARGV[1] .. 'nick:' .. ARGV[3] .. ':rooms', ARGV[2])
return removed
"""

# Release every user of a gateway whose lease expired, and announce their leaves.
# ARGV: prefix, dead gateway id, keep, now, force (1: the lease is ignored, for a
# predecessor known dead by other means).  Returns the released display nicks.
# Exactly once: only the caller whose ZREM removed the gateway does the work, and
# the whole script is atomic.
REAP_LUA = _envelope_lua() + """
local p, gw, keep = ARGV[1], ARGV[2], tonumber(ARGV[3])
if ARGV[5] ~= '1' and redis.call('EXISTS', p .. 'gw:' .. gw .. ':alive') == 1 then return {} end
if redis.call('ZREM', p .. 'gateways', gw) == 0 then return {} end
local released = {}
local gwn = p .. 'gw:' .. gw .. ':nicks'
local prefix_len = string.len(gw) + 1
for _, folded in ipairs(redis.call('SMEMBERS', gwn)) do
  local record = redis.call('HGET', p .. 'nicks', folded)
  if record and string.sub(record, 1, prefix_len) == gw .. ' ' then
    local display = string.sub(record, prefix_len + 1)
    redis.call('HDEL', p .. 'nicks', folded)
    local rooms_key = p .. 'nick:' .. folded .. ':rooms'
    for _, room in ipairs(redis.call('SMEMBERS', rooms_key)) do
      local members = p .. 'room:' .. room .. ':members'
      redis.call('HDEL', members, folded)
      local body = cjson.encode({k = 'leave', n = display, x = 'gateway lost', g = gw,
                                 t = tonumber(ARGV[4])})
      publish_room(p, room, body, keep)
      if redis.call('HLEN', members) == 0 then room_emptied(p, room) end
    end
    redis.call('DEL', rooms_key)
    table.insert(released, display)
  end
end
redis.call('DEL', gwn, p .. 'gw:' .. gw .. ':info', p .. 'gw:' .. gw .. ':alive')
return released
"""


# Whether the publication with id ARGV[3] from gateway ARGV[6] is in room ARGV[2]'s
# log (ids are unique per gateway process, so both must match).
# ARGV: prefix, room, id, deadline (unix ms), submitted (unix s, float), gateway.
# Returns -1 while Redis's clock has not passed the deadline (the command may
# still run: ask again later), the publication's sequence number when it is in
# the log, 0 when it is not and can no longer be, and -2 when the log no longer
# reaches back to when it was submitted (unknown).
RESOLVE_LUA = """
local t = redis.call('TIME')
if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) <= tonumber(ARGV[4]) then
  return -1
end
local entries = redis.call('LRANGE', ARGV[1] .. 'room:' .. ARGV[2] .. ':log', 0, -1)
local needle = '"i":"' .. ARGV[3] .. '"'
local origin = '"g":"' .. ARGV[6] .. '"'
for i = #entries, 1, -1 do
  local entry = entries[i]
  if string.find(entry, needle, 1, true) and string.find(entry, origin, 1, true) then
    local seq = string.match(entry, '^%S+ (%d+) ')
    return tonumber(seq)
  end
end
if #entries >= """ + str(REPLAY_WINDOW) + """ then
  local ok, first = pcall(cjson.decode, string.match(entries[1], '^%S+ %d+ %S+ (.*)$'))
  if not ok or type(first) ~= 'table' or tonumber(first.t or 0) > tonumber(ARGV[5]) then
    return -2
  end
end
return 0
"""


class Script:
    """A Lua script run with EVALSHA, loaded on demand (after a Redis restart too)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, redis: RedisClient, *args: Arg) -> Any:
        try:
            return await redis.execute("EVALSHA", self.sha, 0, *args)
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            return await redis.execute("EVAL", self.source, 0, *args)


@dataclass(frozen=True, slots=True)
class Publication:
    """A decoded room publication."""

    epoch: str
    seq: int
    room: str
    kind: str
    nick: str
    text: str
    gateway: str
    time: float
    id: str = ""


CHAT_KINDS = frozenset({"msg", "act"})


def encode_body(kind: str, nick: str, text: str, gateway: str, pub_id: str = "") -> str:
    body: dict[str, Any] = {"k": kind, "n": nick, "x": text, "g": gateway, "t": round(time.time(), 6)}
    if pub_id:
        body["i"] = pub_id
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


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


class Resolution(enum.Enum):
    """What :meth:`Bus.resolve` found out about an uncertain publication."""

    PENDING = "pending"  # Redis's clock has not passed the deadline: ask again later
    PUBLISHED = "published"
    NOT_PUBLISHED = "not published"
    UNKNOWN = "unknown"  # the room's log no longer reaches back that far


def decode_publication(payload: bytes) -> Publication:
    """Parse ``b"<epoch> <seq> <room> <json>"``; raises ``ValueError``, ``KeyError``
    or ``TypeError`` when malformed."""
    epoch, seq_raw, room, body = payload.split(b" ", 3)
    data = json.loads(body)
    return Publication(
        epoch=epoch.decode(),
        seq=int(seq_raw),
        room=room.decode(),
        kind=str(data["k"]),
        nick=str(data["n"]),
        text=str(data.get("x", "")),
        gateway=str(data.get("g", "")),
        time=float(data.get("t", 0.0)),
        id=str(data.get("i", "")),
    )


class Bus:
    """Presence and publication operations for one gateway.

    Raises what :class:`RedisClient` raises (:class:`RedisError` subclasses).
    """

    _publish = Script(PUBLISH_LUA)
    _claim = Script(CLAIM_LUA)
    _release = Script(RELEASE_LUA)
    _rename = Script(RENAME_LUA)
    _join = Script(JOIN_ROOM_LUA)
    _leave = Script(LEAVE_ROOM_LUA)
    _reap = Script(REAP_LUA)
    _resolve = Script(RESOLVE_LUA)

    def __init__(self, redis: RedisClient, keys: Keys, gateway_id: str) -> None:
        self.redis = redis
        self.keys = keys
        self.gateway_id = gateway_id
        self.clock_offset_s = 0.0  # Redis's clock minus ours (see sync_clock)
        self._pub_ids = itertools.count(1)

    async def sync_clock(self) -> float:
        """Measure Redis's clock against ours, so deadlines checked inside Redis
        hold even when the two hosts' clocks differ."""
        before = time.time()
        seconds, micros = await self.redis.execute("TIME")
        after = time.time()
        self.clock_offset_s = int(seconds) + int(micros) / 1e6 - (before + after) / 2
        return self.clock_offset_s

    # -- nicknames ----------------------------------------------------------------
    async def claim_nick(self, folded: str, nick: str) -> int:
        """Claim ``nick`` for this gateway: 2 newly claimed, 1 already ours, 0 when
        someone else holds it."""
        record = owner_record(self.gateway_id, nick)
        return int(
            await self._claim(self.redis, self.keys.prefix, folded, record, self.gateway_id)
        )

    async def release_nick(self, folded: str, nick: str, reason: str = "") -> bool:
        """Release ``nick`` if this gateway still owns it: leave its rooms and
        announce the leave in each, in one atomic step.  ``False`` when it was not
        (or no longer) this gateway's."""
        record = owner_record(self.gateway_id, nick)
        body = encode_body("leave", nick, reason, self.gateway_id)
        return bool(
            await self._release(
                self.redis, self.keys.prefix, folded, record, self.gateway_id, body,
                REPLAY_WINDOW,
            )
        )

    async def owned_nicks(self) -> set[str]:
        """Folded nicknames Redis records under this gateway."""
        members = await self.redis.execute("SMEMBERS", self.keys.gateway_nicks(self.gateway_id))
        return {m.decode() for m in members}

    async def rename_nick(self, old_folded: str, old: str, new_folded: str, new: str) -> int:
        """1 renamed, 0 new nickname taken, -1 this gateway no longer owns the old one."""
        return int(
            await self._rename(
                self.redis,
                self.keys.prefix,
                old_folded,
                owner_record(self.gateway_id, old),
                new_folded,
                owner_record(self.gateway_id, new),
                self.gateway_id,
            )
        )

    async def nick_owner(self, folded: str) -> tuple[str, str] | None:
        """``(gateway_id, display nick)`` of an online nickname, or ``None``."""
        record = await self.redis.execute("HGET", self.keys.nicks, folded)
        if record is None:
            return None
        return parse_owner_record(record.decode())

    async def online(self) -> list[str]:
        """Every online display nickname, sorted case-insensitively."""
        records = await self.redis.execute("HVALS", self.keys.nicks)
        return sorted((parse_owner_record(r.decode())[1] for r in records), key=str.lower)

    # -- rooms ----------------------------------------------------------------------
    async def join_room(self, room: str, folded: str, nick: str) -> None:
        await self._join(self.redis, self.keys.prefix, room, folded, nick)

    async def leave_room(self, room: str, folded: str) -> None:
        await self._leave(self.redis, self.keys.prefix, room, folded)

    async def publish(self, room: str, kind: str, nick: str, text: str = "") -> int:
        """Publish in ``room``; returns the publication's sequence number.

        Raises :class:`PublishUncertain` when the command was written but no answer
        came (it may have run: :meth:`resolve` tells), and another
        :class:`RedisError` when it certainly did not run (not connected, an error
        reply, or it reached Redis after its deadline and was dropped).
        """
        pub_id = str(next(self._pub_ids))
        body = encode_body(kind, nick, text, self.gateway_id, pub_id)
        # The deadline is on Redis's clock: our clock plus the offset measured at connect.
        submitted = time.time() + self.clock_offset_s
        deadline_ms = int((submitted + self.redis.timeout_s) * 1000)
        try:
            seq = int(
                await self._publish(
                    self.redis, self.keys.prefix, room, body, REPLAY_WINDOW, deadline_ms,
                    1 if kind in CHAT_KINDS else 0,
                )
            )
        except CommandNotSent:
            raise
        except RedisUnavailable as exc:
            raise PublishUncertain(str(exc), room, pub_id, deadline_ms, submitted) from None
        if seq == 0:
            raise RedisUnavailable("publication reached Redis after its deadline; dropped")
        return seq

    async def resolve(self, uncertain: PublishUncertain) -> tuple[Resolution, int]:
        """Whether an uncertain publication was published, and its sequence number
        when it was.  Exact once Redis's clock has passed the publication's deadline
        (after which the publish script refuses it).  Raises :class:`RedisError`."""
        reply = int(
            await self._resolve(
                self.redis, self.keys.prefix, uncertain.room, uncertain.pub_id,
                uncertain.deadline_ms, uncertain.submitted, self.gateway_id,
            )
        )
        if reply > 0:
            return Resolution.PUBLISHED, reply
        return {-1: Resolution.PENDING, 0: Resolution.NOT_PUBLISHED}.get(
            reply, Resolution.UNKNOWN
        ), 0

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

    async def room_position(self, rooms: list[str]) -> tuple[str | None, list[int]]:
        """The current epoch (``None`` before the first publication) and each room's
        last sequence number (0 when it has none), in one round trip."""
        commands: list[tuple[Arg, ...]] = [("GET", self.keys.epoch)]
        commands += [("GET", self.keys.room_seq(r)) for r in rooms]
        replies = await self.redis.pipeline(commands)
        _raise_first_error(replies)
        epoch = replies[0].decode() if replies[0] is not None else None
        return epoch, [int(r) if r is not None else 0 for r in replies[1:]]

    async def rooms(self) -> dict[str, int]:
        """Every room with members anywhere, with its member count."""
        names = [r.decode() for r in await self.redis.execute("SMEMBERS", self.keys.rooms)]
        if not names:
            return {}
        counts = await self.redis.pipeline([("HLEN", self.keys.room_members(n)) for n in names])
        return {n: int(c) for n, c in zip(names, counts, strict=True) if int(c) > 0}

    async def room_members(self, room: str) -> list[str]:
        values = await self.redis.execute("HVALS", self.keys.room_members(room))
        return sorted((v.decode() for v in values), key=str.lower)

    # -- node and broadcast channels ----------------------------------------------
    async def send_to_node(self, gateway_id: str, message: dict[str, Any]) -> int:
        """Publish a JSON command to one gateway; returns how many subscribers got it."""
        data = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
        return int(await self.redis.execute("PUBLISH", self.keys.node_channel(gateway_id), data))

    # -- gateway lease --------------------------------------------------------------
    async def heartbeat(self, ttl_s: float, info: dict[str, str | int]) -> bool:
        """Renew this gateway's lease.  ``False`` when the lease had lapsed (or Redis
        lost it): other gateways may have released our users meanwhile.
        Raises :class:`RedisError`, error replies included."""
        now = time.time()
        commands: list[tuple[Arg, ...]] = [
            ("SET", self.keys.gateway_alive(self.gateway_id), "1", "PX", int(ttl_s * 1000), "GET"),
            ("ZADD", self.keys.gateways, now, self.gateway_id),
        ]
        if info:
            flat: list[Arg] = []
            for k, v in info.items():
                flat += [k, v]
            commands.append(("HSET", self.keys.gateway_info(self.gateway_id), *flat))
        replies = await self.redis.pipeline(commands)
        _raise_first_error(replies)
        return replies[0] is not None

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
        released = await self._reap(
            self.redis, self.keys.prefix, dead_gateway, REPLAY_WINDOW, time.time(),
            1 if force else 0,
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


def _raise_first_error(replies: list[Any]) -> None:
    for reply in replies:
        if isinstance(reply, RedisReplyError):
            raise reply
