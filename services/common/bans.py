"""Operator bans and client addresses, shared by the gateway and ``chat-admin``.

A ban covers one network (an address is a /32 or /128 network) and lives in
Redis in ``{p}bans`` (:attr:`services.common.keys.Keys.bans`): field the
network in canonical form (``203.0.113.0/24``, ``2001:db8::/64``), value the
JSON record ``{"reason": str, "until": unix seconds or null, "at": unix
seconds}``.  A ban whose ``until`` has passed no longer applies, wherever it is
read; ``chat-admin`` deletes such records when it next writes.

Client addresses are compared in one canonical form (:func:`client_address`):
an IPv4-mapped IPv6 address is its IPv4 address, IPv6 is compressed.  Limits
count per single address (IPv6 included: not per /64).
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_REASON_BYTES = 200

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def client_address(host: str) -> str:
    """The canonical form of a client's IP address (as counted and matched);
    a host that is not an IP address is returned unchanged."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


def parse_network(raw: str) -> Network:
    """An address or CIDR (host bits are cleared: ``10.1.2.3/8`` is ``10.0.0.0/8``).
    Raises ``ValueError`` with a one-line message."""
    try:
        network = ipaddress.ip_network(raw.strip(), strict=False)
    except ValueError:
        raise ValueError(f"not an IP address or CIDR: {raw!r}") from None
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped:
        mapped = network.network_address.ipv4_mapped
        network = ipaddress.ip_network(f"{mapped}/{max(0, network.prefixlen - 96)}")
    return network


def parse_ban_duration(raw: str) -> float:
    """``90``, ``90s``, ``10m``, ``2h``, ``7d``, ``1w`` (or combined: ``1h30m``) as
    seconds.  Raises ``ValueError``."""
    text = raw.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)([smhdw])", text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"expected a duration like 90s, 10m, 2h or 7d, got {raw!r}")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"a ban must last longer than 0 seconds, got {raw!r}")
    return seconds


@dataclass(frozen=True, slots=True)
class Ban:
    network: Network
    reason: str
    until: float | None  # unix seconds; None: until lifted
    at: float

    def active(self, now: float | None = None) -> bool:
        return self.until is None or self.until > (time.time() if now is None else now)

    def record(self) -> str:
        return json.dumps({"reason": self.reason, "until": self.until, "at": self.at},
                          separators=(",", ":"))


def decode_ban(network: str, record: str) -> Ban:
    """A ban from its Redis field and value.  Raises ``ValueError`` for a record
    that is not the documented form."""
    try:
        obj = json.loads(record)
    except ValueError:
        raise ValueError(f"ban record for {network} is not JSON") from None
    if not isinstance(obj, dict):
        raise ValueError(f"ban record for {network} is not an object")
    reason, until, at = obj.get("reason", ""), obj.get("until"), obj.get("at", 0)
    if not isinstance(reason, str) or not isinstance(at, int | float):
        raise ValueError(f"ban record for {network} has a bad field")
    if until is not None and not isinstance(until, int | float):
        raise ValueError(f"ban record for {network} has a bad expiry")
    return Ban(parse_network(network), reason, None if until is None else float(until), float(at))


def decode_bans(records: Mapping[str, str]) -> tuple[list[Ban], list[str]]:
    """The bans that decode, and one problem line per record that does not."""
    bans, problems = [], []
    for network, record in records.items():
        try:
            bans.append(decode_ban(network, record))
        except ValueError as exc:
            problems.append(str(exc))
    return bans, problems


def matching_ban(address: str, bans: Iterable[Ban], now: float | None = None) -> Ban | None:
    """The first active ban covering ``address`` (canonical, see
    :func:`client_address`), or ``None``; a non-IP address matches nothing."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    now = time.time() if now is None else now
    for ban in bans:
        if ban.network.version == ip.version and ip in ban.network and ban.active(now):
            return ban
    return None
