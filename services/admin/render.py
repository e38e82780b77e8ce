"""``chat-admin``'s output for people: aligned tables and one summary line."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from services.admin.commands import Account, GatewayState, OnlineNick


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


def render_accounts(found: Sequence[Account], now: float | None = None) -> str:
    if not found:
        return "no nickname is registered"
    now = time.time() if now is None else now
    rows = [
        (a.nick, "online" if a.online else "-",
         f"{_age(max(0.0, now - a.created))} ago" if a.created is not None else "-")
        for a in found
    ]
    online = sum(a.online for a in found)
    return f"{table(rows, ('NICK', 'ONLINE', 'REGISTERED'))}\n{len(found)} account(s), {online} online"


def render_bans(bans: Sequence[dict[str, Any]]) -> str:
    if not bans:
        return "no bans"
    rows = [
        (
            b["network"],
            "never" if b["expires_in_s"] is None else f"in {_age(b['expires_in_s'])}",
            b["reason"] or "-",
        )
        for b in bans
    ]
    return f"{table(rows, ('NETWORK', 'EXPIRES', 'REASON'))}\n{len(bans)} ban(s)"
