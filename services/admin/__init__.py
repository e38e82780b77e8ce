"""``chat-admin`` (``python -m services.admin``): look at and steer a running cluster.

It talks only to Redis, with the key schema of :mod:`services.common.keys`, so it
works from anywhere that reaches Redis, whatever number of gateways run:

``who``
    every online nickname and the gateway that owns it (``{p}nicks``).
``gateways``
    every gateway in the registry (``{p}gateways``): lease alive or not, heartbeat
    age, connected clients, nicknames owned, listen address, pid, uptime.
``kick NICK [REASON]``
    asks the owning gateway (``PUBLISH {p}node:{id}``) to disconnect NICK; the user
    sees ``!! disconnected: kicked by an operator: REASON``.
``announce TEXT``
    ``PUBLISH {p}all``; every client on every gateway sees ``== announcement: TEXT``.

Tables for people, ``--json`` for scripts.  Synchronous (redis-py): an operator
tool runs one command and exits.

Exit status: 0 on success; 1 when the target does not exist (``no such nick``),
no gateway received a command, or Redis cannot be reached; 2 for bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TextIO

import redis

from services.common.config import RedisURL, parse_prefix, parse_redis_url
from services.common.keys import DEFAULT_PREFIX, Keys, incarnation_name, parse_owner_record
from services.gateway.protocol import fold_nick

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_KICK_REASON = "no reason given"
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
    incarnation: str  # one process under that name (see services.common.bus)
    alive: bool
    lease_ttl_s: float | None
    heartbeat_age_s: float | None
    clients: int | None
    nicks: int
    listen: str | None
    pid: int | None
    uptime_s: float | None


def connect(url: RedisURL, timeout_s: float) -> redis.Redis:
    return redis.Redis(
        host=url.host,
        port=url.port,
        db=url.db,
        username=url.username,
        password=url.password,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        decode_responses=True,
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
    message = {"t": "kick", "nick": display or nick, "reason": reason}
    receivers = int(client.publish(keys.node_channel(gateway), json.dumps(message)))
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
    message = {"t": "announce", "text": text}
    receivers = int(client.publish(keys.all_channel, json.dumps(message)))
    if receivers == 0:
        raise AdminError("no gateway is listening; nobody received the announcement")
    return {"text": text, "gateways": receivers}


# -- output ---------------------------------------------------------------------------------


def table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    lines = [
        "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    ]
    return "\n".join(lines)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


def render_who(online: Sequence[OnlineNick]) -> str:
    if not online:
        return "nobody is online"
    rows = [(o.nick, o.gateway + ("" if o.gateway_alive else "  (lease expired)")) for o in online]
    count = len({o.gateway for o in online})
    return f"{table(rows, ('NICK', 'GATEWAY'))}\n{len(online)} online on {count} gateway(s)"


def render_gateways(states: Sequence[GatewayState]) -> str:
    if not states:
        return "no gateway has registered"
    rows = [
        (
            s.gateway,
            "alive" if s.alive else "dead",
            f"{_age(s.heartbeat_age_s)} ago" if s.heartbeat_age_s is not None else "-",
            _dash(s.clients),
            str(s.nicks),
            _dash(s.listen),
            _dash(s.pid),
            _age(s.uptime_s),
        )
        for s in states
    ]
    headers = ("GATEWAY", "STATE", "HEARTBEAT", "CLIENTS", "NICKS", "LISTEN", "PID", "UPTIME")
    alive = sum(s.alive for s in states)
    clients = sum(s.clients or 0 for s in states if s.alive)
    return f"{table(rows, headers)}\n{alive} alive, {len(states) - alive} dead; {clients} client(s)"


# -- command line ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    parser = argparse.ArgumentParser(
        prog="chat-admin",
        description="Inspect and steer a running chat cluster through its Redis.",
        parents=[common],
    )
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        help=f"the cluster's Redis [env CHAT_REDIS_URL, default {DEFAULT_REDIS_URL}]",
    )
    parser.add_argument(
        "--key-prefix",
        metavar="PREFIX",
        help=f"prefix of every key [env CHAT_KEY_PREFIX, default {DEFAULT_PREFIX}]",
    )
    parser.add_argument("--timeout-s", type=float, default=5.0, metavar="SECONDS", help="Redis deadline")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("who", parents=[common], help="every online nickname and its gateway")
    sub.add_parser("gateways", parents=[common], help="gateways, heartbeats, client counts")
    kick_p = sub.add_parser("kick", parents=[common], help="disconnect a user, with a reason")
    kick_p.add_argument("nick")
    kick_p.add_argument("reason", nargs="*", help=f"shown to the user (default: {DEFAULT_KICK_REASON})")
    announce_p = sub.add_parser("announce", parents=[common], help="a line to every client")
    announce_p.add_argument("text", nargs="+")
    return parser


def run(args: argparse.Namespace, out: TextIO, environ: Mapping[str, str]) -> int:
    """Carry out one command; raises :class:`AdminError`."""
    raw_url = args.redis_url or environ.get("CHAT_REDIS_URL") or DEFAULT_REDIS_URL
    raw_prefix = (
        args.key_prefix if args.key_prefix is not None else environ.get("CHAT_KEY_PREFIX", DEFAULT_PREFIX)
    )
    try:
        url = parse_redis_url(raw_url)
        prefix = parse_prefix(raw_prefix)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    keys = Keys(prefix)
    as_json = getattr(args, "json", False)
    client = connect(url, args.timeout_s)
    try:
        result: Any
        if args.command == "who":
            online = who(client, keys)
            result = {"online": [asdict(o) for o in online], "count": len(online)}
            text = render_who(online)
        elif args.command == "gateways":
            states = gateways(client, keys)
            result = {"gateways": [asdict(s) for s in states]}
            text = render_gateways(states)
        elif args.command == "kick":
            result = kick(client, keys, args.nick, " ".join(args.reason) or DEFAULT_KICK_REASON)
            text = f"kicked {result['nick']} from {result['gateway']}: {result['reason']}"
        else:
            result = announce(client, keys, " ".join(args.text))
            text = f"announced to {result['gateways']} gateway(s): {result['text']}"
    except redis.RedisError as exc:
        raise AdminError(f"cannot talk to Redis at {url}: {exc}") from None
    finally:
        client.close()
    out.write((json.dumps(result) if as_json else text) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args, sys.stdout, os.environ)
    except UsageError as exc:
        print(f"chat-admin: error: {exc}", file=sys.stderr)
        return 2
    except AdminError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"error": str(exc)}))
        print(f"chat-admin: {exc}", file=sys.stderr)
        return 1
