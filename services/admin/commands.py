"""What each ``chat-admin`` command does, against the cluster's Redis.

Reading (``who``, ``gateways``) and steering (``kick``, ``announce``) use the key
schema of :mod:`services.common.keys` through a synchronous redis-py client.
Each function returns plain data; :mod:`services.admin.render` turns it into
text and :mod:`services.admin.cli` into exit statuses.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.sentinel import Sentinel

from services.common.bans import (
    MAX_REASON_BYTES,
    Ban,
    decode_bans,
    parse_ban_duration,
    parse_network,
)
from services.common.bus.codec import Announce, BansChanged, Kick, encode_message
from services.common.config import RedisURL, Settings
from services.common.keys import Keys, incarnation_name, parse_owner_record
from services.common.names import fold_nick

MAX_TEXT_BYTES = 1024


class AdminError(Exception):
    """The command cannot be carried out; the message is one line for the operator."""


class UsageError(AdminError):
    """Bad arguments (exit status 2)."""


# -- reading the cluster's state -------------------------------------------------------------


@dataclass(frozen=True)
class OnlineNick:
    nick: str
    gateway: str  # the configured name
    gateway_alive: bool
    incarnation: str  # the owning process's identity in Redis


@dataclass(frozen=True)
class GatewayState:
    gateway: str  # the configured name
    incarnation: str  # one process under that name (services.common.keys.incarnation_id)
    alive: bool
    lease_ttl_s: float | None
    heartbeat_age_s: float | None
    clients: int | None
    nicks: int
    listen: str | None
    pid: int | None
    uptime_s: float | None


# No CLIENT SETINFO on connect: the documented ACL does not grant it (and Redis
# before 7.2 has no such command).  redis-py 7+ spells it driver_info=None.
_NO_CLIENT_SETINFO: dict[str, Any] = (
    {"driver_info": None} if "driver_info" in inspect.signature(redis.Redis.__init__).parameters
    else {"lib_name": None, "lib_version": None}
)


def connect(url: RedisURL, timeout_s: float, settings: Settings | None = None) -> redis.Redis:
    """A redis-py client for ``url``; every command and connect has ``timeout_s``.
    A ``rediss://`` URL uses TLS with the ``CHAT_REDIS_TLS_*`` files of
    ``settings``, verifying the certificate and the host name as the gateway does.
    In sentinel mode (``settings.redis_mode``) ``url`` lists the sentinels and the
    client talks to the primary they name (looked up again on each new connection)."""
    tls: dict[str, Any] = {}
    if url.tls:
        tls = {
            "ssl": True,
            "ssl_cert_reqs": "required",
            "ssl_check_hostname": True,
            "ssl_ca_certs": (settings.redis_tls_ca or None) if settings else None,
            "ssl_certfile": (settings.redis_tls_cert or None) if settings else None,
            "ssl_keyfile": (settings.redis_tls_key or None) if settings else None,
        }
    if settings is not None and settings.redis_mode == "sentinel":
        hosts = [(h.host, h.port) for h in url.hosts] or [(url.host, url.port)]
        sentinels = Sentinel(  # type: ignore[no-untyped-call]
            hosts, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            sentinel_kwargs={"password": settings.redis_sentinel_password or None,
                             "socket_timeout": timeout_s, "socket_connect_timeout": timeout_s,
                             **tls},
        )
        client: redis.Redis = sentinels.master_for(  # type: ignore[no-untyped-call]
            settings.redis_sentinel_master, db=url.db, username=url.username,
            password=url.password, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            decode_responses=True, **_NO_CLIENT_SETINFO, **tls,
        )
        return client
    return redis.Redis(
        host=url.host,
        port=url.port,
        db=url.db,
        username=url.username,
        password=url.password,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        decode_responses=True,
        **_NO_CLIENT_SETINFO,
        **tls,
    )


def _alive(client: redis.Redis, keys: Keys, gateways: Sequence[str]) -> dict[str, bool]:
    pipe = client.pipeline(transaction=False)
    for gw in gateways:
        pipe.exists(keys.gateway_alive(gw))
    return {gw: bool(n) for gw, n in zip(gateways, pipe.execute(), strict=True)}


def who(client: redis.Redis, keys: Keys) -> list[OnlineNick]:
    """Every online nickname with its owner gateway, sorted case-insensitively."""
    records: dict[str, str] = client.hgetall(keys.nicks)  # type: ignore[assignment]
    owners = {folded: parse_owner_record(record) for folded, record in records.items()}
    alive = _alive(client, keys, sorted({gw for gw, _ in owners.values()}))
    return [
        OnlineNick(nick or folded, incarnation_name(gw), alive[gw], gw)
        for folded, (gw, nick) in sorted(owners.items())
    ]


@dataclass(frozen=True)
class Account:
    nick: str  # the display form it was registered with
    created: int | None  # unix time
    online: bool


def accounts(client: redis.Redis, keys: Keys) -> list[Account]:
    """Every registered nickname (never a password hash), sorted case-insensitively."""
    folded_names = sorted(str(f) for f in client.sscan_iter(keys.accounts, count=1000))
    pipe = client.pipeline(transaction=False)
    for folded in folded_names:
        pipe.hmget(keys.account(folded), "nick", "created")
        pipe.hexists(keys.nicks, folded)
    replies = pipe.execute()
    found = []
    for i, folded in enumerate(folded_names):
        (nick, created), online = replies[2 * i], replies[2 * i + 1]
        if nick is None and created is None:
            continue  # dropped between the two reads
        found.append(Account(nick or folded, _int(created), bool(online)))
    return found


def drop_account(client: redis.Redis, keys: Keys, nick: str) -> dict[str, Any]:
    """Free a registered nickname: its account and its failed-attempt count go, in
    one transaction.  A session holding it keeps it until it leaves (``kick`` ends
    that).  Raises :class:`AdminError` when it is not registered."""
    folded = fold_nick(nick)
    pipe = client.pipeline(transaction=True)
    pipe.hget(keys.account(folded), "nick")
    pipe.delete(keys.account(folded), keys.auth_failures_nick(folded))
    pipe.srem(keys.accounts, folded)
    display, _, _ = pipe.execute()
    if display is None:
        raise AdminError(f"no such account: {nick}")
    return {"nick": str(display), "online": bool(client.hexists(keys.nicks, folded))}


def _int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


def gateways(client: redis.Redis, keys: Keys, now: float | None = None) -> list[GatewayState]:
    """Every gateway in the registry, plus any with a lease but no registry entry."""
    now = time.time() if now is None else now
    registry: list[tuple[str, float]] = client.zrange(keys.gateways, 0, -1, withscores=True)  # type: ignore[assignment]
    heartbeats = dict(registry)
    ids = list(heartbeats)
    head, tail = keys.gateway_alive("\0").split("\0")
    for key in client.scan_iter(match=f"{_glob_escape(head)}*{_glob_escape(tail)}", count=500):
        gw = str(key)[len(head) : len(key) - len(tail)]
        if gw and gw not in heartbeats:
            ids.append(gw)
    pipe = client.pipeline(transaction=False)
    for gw in ids:
        pipe.pttl(keys.gateway_alive(gw))
        pipe.hgetall(keys.gateway_info(gw))
        pipe.scard(keys.gateway_nicks(gw))
    replies = pipe.execute()
    states = []
    for i, gw in enumerate(ids):
        pttl, info, nicks = replies[3 * i : 3 * i + 3]
        alive = pttl is not None and int(pttl) != -2
        started = _int(info.get("started_at"))
        beat = heartbeats.get(gw)
        states.append(
            GatewayState(
                gateway=incarnation_name(gw),
                incarnation=gw,
                alive=alive,
                lease_ttl_s=round(int(pttl) / 1000, 1) if alive and int(pttl) >= 0 else None,
                heartbeat_age_s=round(max(0.0, now - beat), 1) if beat is not None else None,
                clients=_int(info.get("clients")),
                nicks=int(nicks),
                listen=info.get("listen"),
                pid=_int(info.get("pid")),
                uptime_s=round(max(0.0, now - started), 0) if started is not None else None,
            )
        )
    states.sort(key=lambda s: (not s.alive, s.gateway, s.incarnation))
    return states


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


# -- steering -------------------------------------------------------------------------------


def _check_text(text: str, what: str) -> str:
    text = " ".join(text.split())
    if not text:
        raise UsageError(f"{what} is empty")
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text):
        raise UsageError(f"{what} contains control characters")
    if len(text.encode()) > MAX_TEXT_BYTES:
        raise UsageError(f"{what} is longer than {MAX_TEXT_BYTES} bytes")
    return text


def kick(client: redis.Redis, keys: Keys, nick: str, reason: str) -> dict[str, Any]:
    """Ask the gateway owning ``nick`` to disconnect it.  Raises :class:`AdminError`."""
    reason = _check_text(reason, "the reason")
    record = client.hget(keys.nicks, fold_nick(nick))
    if record is None:
        raise AdminError(f"no such nick: {nick}")
    gateway, display = parse_owner_record(str(record))
    message = encode_message(Kick(nick=display or nick, reason=reason))
    receivers = int(client.publish(keys.node_channel(gateway), message))
    result = {"nick": display or nick, "gateway": incarnation_name(gateway), "incarnation": gateway,
              "reason": reason, "receivers": receivers}
    if receivers == 0:
        raise AdminError(
            f"{display or nick} is recorded on gateway {gateway}, which is not listening "
            "(dead or restarting; its nicknames are released when its lease expires)"
        )
    return result


def announce(client: redis.Redis, keys: Keys, text: str) -> dict[str, Any]:
    """Send ``text`` to every client on every gateway.  Raises :class:`AdminError`."""
    text = _check_text(text, "the announcement")
    receivers = int(client.publish(keys.all_channel, encode_message(Announce(text=text))))
    if receivers == 0:
        raise AdminError("no gateway is listening; nobody received the announcement")
    return {"text": text, "gateways": receivers}


# -- bans -------------------------------------------------------------------------------------


def _ban_json(ban: Ban, now: float) -> dict[str, Any]:
    return {
        "network": str(ban.network),
        "reason": ban.reason,
        "since": ban.at,
        "until": ban.until,
        "expires_in_s": None if ban.until is None else round(max(0.0, ban.until - now), 1),
    }


def _tell_gateways(client: redis.Redis, keys: Keys) -> int:
    """Every gateway reloads the ban list at once (and on its next heartbeat anyway)."""
    return int(client.publish(keys.all_channel, encode_message(BansChanged())))


def _drop_expired(client: redis.Redis, keys: Keys, now: float) -> None:
    records: dict[str, str] = client.hgetall(keys.bans)  # type: ignore[assignment]
    bans, _problems = decode_bans(records)
    expired = [str(b.network) for b in bans if not b.active(now)]
    if expired:
        client.hdel(keys.bans, *expired)


def ban(
    client: redis.Redis, keys: Keys, target: str, reason: str, duration: str | None,
    now: float | None = None,
) -> dict[str, Any]:
    """Ban an address or network, for ``duration`` (``None``: until lifted).  Every
    gateway disconnects the clients it covers and refuses new ones.  Raises
    :class:`UsageError`."""
    now = time.time() if now is None else now
    try:
        network = parse_network(target)
        seconds = parse_ban_duration(duration) if duration is not None else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if reason:
        reason = _check_text(reason, "the reason")
        if len(reason.encode()) > MAX_REASON_BYTES:
            raise UsageError(f"the reason is longer than {MAX_REASON_BYTES} bytes")
    entry = Ban(network, reason, None if seconds is None else now + seconds, now)
    _drop_expired(client, keys, now)
    client.hset(keys.bans, str(network), entry.record())
    result = _ban_json(entry, now)
    result["gateways"] = _tell_gateways(client, keys)
    return result


def unban(client: redis.Redis, keys: Keys, target: str) -> dict[str, Any]:
    """Lift the ban on exactly this address or network.  Raises :class:`AdminError`."""
    try:
        network = str(parse_network(target))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not client.hdel(keys.bans, network):
        raise AdminError(f"no ban on {network}")
    return {"network": network, "gateways": _tell_gateways(client, keys)}


def bans(client: redis.Redis, keys: Keys, now: float | None = None) -> list[dict[str, Any]]:
    """Every ban in force, soonest expiry last (permanent ones first); expired
    records are deleted on the way."""
    now = time.time() if now is None else now
    _drop_expired(client, keys, now)
    records: dict[str, str] = client.hgetall(keys.bans)  # type: ignore[assignment]
    found, _problems = decode_bans(records)
    active = [b for b in found if b.active(now)]
    active.sort(key=lambda b: (b.until is not None, -(b.until or 0), str(b.network)))
    return [_ban_json(b, now) for b in active]
