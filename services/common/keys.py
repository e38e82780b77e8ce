"""The Redis key and channel schema, in one place.

Every key the service touches is built here, so an operator (or ``chat-admin``)
can find what lives in Redis without reading the gateway.  All names start with
a configurable prefix (``chat:`` by default) so several deployments can share
one Redis database.

Keys
----
``{p}nicks``                   HASH  folded nick -> owner record (see :func:`owner_record`)
``{p}gateways``                ZSET  gateway id -> unix time of its last heartbeat
``{p}gw:{id}:alive``           STRING with a TTL: the gateway's lease; gone = gateway dead
``{p}gw:{id}:nicks``           SET   folded nicks owned by that gateway
``{p}gw:{id}:info``            HASH  started_at, clients, listen, pid (for operators)
``{p}room:{room}:members``     HASH  folded nick -> display nick, every member anywhere
``{p}room:{room}:seq``         STRING per-room publication sequence (INCR)
``{p}room:{room}:history``     LIST  the room's last chat lines and actions (replayed on join)
``{p}room:{room}:log``         LIST  every recent publication of the room (for gap filling)
``{p}room:{room}:bytes``       HASH  ``log``, ``history``: the bytes each of those lists holds;
                                     ``numbering``: the epoch the room's seq counts in
``{p}epoch``                   STRING changes when Redis lost its data or may have gone back
                                     in time (restart, promotion); part of every publication
``{p}epoch:source``            STRING replication id of the primary the epoch began on
``{p}rooms-by-size``           ZSET  rooms that currently have members, scored by minus
                                     their member count (largest first in ZRANGE)
``{p}nick:{folded}:rooms``     SET   rooms a nickname is in
``{p}account:{folded}``        HASH  a registered nickname: nick (display form at
                               registration), hash (argon2id, never the password),
                               created (unix time); no TTL
``{p}accounts``                SET   every registered folded nickname (for listing)
``{p}auth:fail:nick:{folded}`` STRING failed password attempts on an account, with
                               the window's TTL
``{p}auth:fail:ip:{address}``  STRING failed password attempts from a client address,
                               with the window's TTL
``{p}auth:reg:ip:{address}``   STRING accounts registered from a client address, with
                               the window's TTL
``{p}addr:{address}:conns``    HASH  gateway id -> connections it holds from that client address
``{p}addr:{address}:rate``     HASH  that address's connect-rate bucket (``tokens``, ``at`` ms)
``{p}gw:{id}:addrs``           SET   client addresses with connections on that gateway
``{p}bans``                    HASH  banned network (CIDR) -> ``{"reason", "until", "at"}`` JSON

Channels
--------
``{p}room:{room}``             every publication in a room, ``"<epoch> <seq> <room> <json>"``
                               (see :mod:`services.common.bus.codec`)
``{p}node:{id}``               commands addressed to one gateway (private messages,
                               kicks, canaries), plain JSON
``{p}all``                     announcements to every gateway, plain JSON
                               (node and broadcast messages: the same codec)

Patterns
--------
A few scripts must find keys they cannot be told in advance: releasing or
renaming a nickname walks its rooms, and a reap walks a dead gateway's nicknames.
They get *patterns* built here (the key name with ``*`` where the room or the
nickname goes, e.g. ``chat:room:*:members``) and put the name in place of the
``*`` inside Lua.  That is the one exception to "every key in ``KEYS[]``" (see
``services/common/bus/lua/_rooms.lua``).  The prefix never contains ``*``.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "chat:"
# Where the room or the nickname goes in a key pattern (a prefix never contains it).
WILDCARD = "*"


@dataclass(frozen=True, slots=True)
class Keys:
    """Builds key and channel names under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if WILDCARD in self.prefix:
            raise ValueError(f"a key prefix cannot contain {WILDCARD!r}: {self.prefix!r}")

    # -- presence -----------------------------------------------------------
    @property
    def nicks(self) -> str:
        return f"{self.prefix}nicks"

    @property
    def gateways(self) -> str:
        return f"{self.prefix}gateways"

    def gateway_alive(self, gateway_id: str) -> str:
        return f"{self.prefix}gw:{gateway_id}:alive"

    def gateway_nicks(self, gateway_id: str) -> str:
        return f"{self.prefix}gw:{gateway_id}:nicks"

    def gateway_info(self, gateway_id: str) -> str:
        return f"{self.prefix}gw:{gateway_id}:info"

    @property
    def epoch(self) -> str:
        return f"{self.prefix}epoch"

    @property
    def epoch_source(self) -> str:
        return f"{self.prefix}epoch:source"

    def gateway_addrs(self, gateway_id: str) -> str:
        return f"{self.prefix}gw:{gateway_id}:addrs"

    # -- per-address admission and bans ---------------------------------------
    def addr_conns(self, address: str) -> str:
        return f"{self.prefix}addr:{address}:conns"

    def addr_rate(self, address: str) -> str:
        return f"{self.prefix}addr:{address}:rate"

    @property
    def bans(self) -> str:
        return f"{self.prefix}bans"

    # -- rooms --------------------------------------------------------------
    @property
    def rooms(self) -> str:
        # Once a SET named "rooms"; the new name keeps an old SET from making the
        # scripts fail with WRONGTYPE after an upgrade.
        return f"{self.prefix}rooms-by-size"

    def room_members(self, room: str) -> str:
        return f"{self.prefix}room:{room}:members"

    def room_seq(self, room: str) -> str:
        return f"{self.prefix}room:{room}:seq"

    def room_history(self, room: str) -> str:
        return f"{self.prefix}room:{room}:history"

    def room_log(self, room: str) -> str:
        return f"{self.prefix}room:{room}:log"

    def room_bytes(self, room: str) -> str:
        return f"{self.prefix}room:{room}:bytes"

    def nick_rooms(self, folded_nick: str) -> str:
        return f"{self.prefix}nick:{folded_nick}:rooms"

    # -- accounts -----------------------------------------------------------
    def account(self, folded_nick: str) -> str:
        return f"{self.prefix}account:{folded_nick}"

    @property
    def accounts(self) -> str:
        return f"{self.prefix}accounts"

    def auth_failures_nick(self, folded_nick: str) -> str:
        return f"{self.prefix}auth:fail:nick:{folded_nick}"

    def auth_failures_address(self, address: str) -> str:
        return f"{self.prefix}auth:fail:ip:{address}"

    def registrations_address(self, address: str) -> str:
        return f"{self.prefix}auth:reg:ip:{address}"

    # -- channels -----------------------------------------------------------
    def room_channel(self, room: str) -> str:
        return f"{self.prefix}room:{room}"

    def node_channel(self, gateway_id: str) -> str:
        return f"{self.prefix}node:{gateway_id}"

    @property
    def all_channel(self) -> str:
        return f"{self.prefix}all"

    # -- patterns: a key name with WILDCARD for the room or the nickname ------------
    @property
    def room_members_pattern(self) -> str:
        return self.room_members(WILDCARD)

    @property
    def room_seq_pattern(self) -> str:
        return self.room_seq(WILDCARD)

    @property
    def room_history_pattern(self) -> str:
        return self.room_history(WILDCARD)

    @property
    def room_log_pattern(self) -> str:
        return self.room_log(WILDCARD)

    @property
    def room_bytes_pattern(self) -> str:
        return self.room_bytes(WILDCARD)

    @property
    def room_channel_pattern(self) -> str:
        return self.room_channel(WILDCARD)

    @property
    def nick_rooms_pattern(self) -> str:
        return self.nick_rooms(WILDCARD)

    def room_patterns(self) -> tuple[str, str, str, str, str, str]:
        """A room's members, seq, history and log keys, its channel and its bytes
        key, as patterns, in the order the scripts' ``room_keys`` helper reads them."""
        return (
            self.room_members_pattern,
            self.room_seq_pattern,
            self.room_history_pattern,
            self.room_log_pattern,
            self.room_channel_pattern,
            self.room_bytes_pattern,
        )


def owner_record(gateway_id: str, nick: str) -> str:
    """The value stored under a folded nick in ``{p}nicks``: ``"<gateway> <display nick>"``.

    Gateway ids never contain spaces (configuration rejects them), so the first
    space splits the record unambiguously.
    """
    return f"{gateway_id} {nick}"


def parse_owner_record(record: str) -> tuple[str, str]:
    """Split an owner record into ``(gateway_id, display_nick)``."""
    gateway_id, _, nick = record.partition(" ")
    return gateway_id, nick


INCARNATION_SEPARATOR = "~"


def incarnation_id(name: str, token: str) -> str:
    """The identity one gateway process uses in Redis: its configured name plus a
    token of its own, so a process restarted under the same name never mistakes
    its dead predecessor's sessions for its own."""
    return f"{name}{INCARNATION_SEPARATOR}{token}"


def incarnation_name(gateway: str) -> str:
    """The configured gateway name of an incarnation id (itself for a bare name)."""
    return gateway.split(INCARNATION_SEPARATOR, 1)[0]
