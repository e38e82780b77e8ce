"""Configuration: command-line flags with ``CHAT_*`` environment defaults.

Every setting has a flag (``--redis-url``) and an environment variable
(``CHAT_REDIS_URL``); the flag wins.  Durations end in ``_s`` and accept ``inf``
(or ``off``) to switch a timeout off.  Invalid configuration raises
:class:`ConfigError` with one human-readable line; the entry point prints it and
exits with status 2.  So does a ``CHAT_*`` variable that no setting knows (a typo
such as ``CHAT_REDIS_ULR`` would otherwise be ignored in silence).

The gateway reads every setting (:func:`load_settings`); the admin tool and the
local cluster read the few they use with :func:`given_settings`.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import re
import secrets
import socket
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import unquote, urlsplit

from services.common.names import validate_room


class ConfigError(Exception):
    """Configuration that cannot be used; the message is one line for the operator."""


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class RedisURL:
    """A parsed ``redis://[user:password@]host:port/db`` URL (``rediss://``: over TLS)."""

    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    # Kept out of repr() too: a Settings or RedisURL in a log line or a
    # traceback must not show it.
    password: str | None = field(default=None, repr=False)
    tls: bool = False  # rediss://: TLS with the CHAT_REDIS_TLS_* files
    # Every host of a comma-separated list (``redis://h1:p1,h2:p2/0``: the
    # sentinels in sentinel mode); empty for a single host.
    hosts: tuple[HostPort, ...] = ()

    def __str__(self) -> str:
        auth = ""
        if self.password is not None:
            auth = f"{self.username or ''}:***@"
        scheme = "rediss" if self.tls else "redis"
        where = ",".join(str(h) for h in self.hosts) or f"{self.host}:{self.port}"
        return f"{scheme}://{auth}{where}/{self.db}"


def _default_gateway_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:40] or "gw"
    return f"{host}-{os.getpid()}-{secrets.token_hex(2)}"


# -- parsers: each takes the raw string and returns the value or raises ValueError --


def parse_host_port(raw: str) -> HostPort:
    raw = raw.strip()
    m = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\s]*):(\d+)", raw)
    if not m:
        raise ValueError(f"expected HOST:PORT, got {raw!r}")
    host = m.group(1) or m.group(3) or "0.0.0.0"
    port = int(m.group(2) or m.group(4))
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {raw!r}")
    return HostPort(host, port)


def parse_optional_host_port(raw: str) -> HostPort | None:
    if raw.strip().lower() in ("", "off", "none"):
        return None
    return parse_host_port(raw)


_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s]*)@")


def redact_url(raw: str) -> str:
    """``raw`` with any password in it replaced by ``***`` (for error messages).

    Everything before the last ``@`` of the authority is credentials; only a user
    name before a ``:`` is kept.  A string that does not parse as a URL but has an
    ``@`` loses everything before it: a password typed without the scheme must not
    be echoed either.
    """
    match = _URL_USERINFO.match(raw.strip())
    if match is None:
        return "***@" + raw.rsplit("@", 1)[1] if "@" in raw else raw
    userinfo = match["userinfo"]
    rest = raw.strip()[match.end() :]
    if "@" in rest:  # an unescaped "@" in the password: the last one ends it
        more, rest = rest.rsplit("@", 1)
        userinfo = f"{userinfo}@{more}"
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:***" if colon else "***"
    return f"{match['scheme']}{shown}@{rest}"


def redact_secrets(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***``."""
    return re.sub(r"[A-Za-z][A-Za-z0-9+.-]*://\S*@\S*", lambda m: redact_url(m.group(0)), text)


def _split_host_list(raw: str) -> tuple[str, tuple[HostPort, ...]]:
    """``raw`` with a comma-separated host list (``redis://a:1,b:2/0``) cut down
    to its first host, and every host of the list (empty without a comma)."""
    match = re.match(r"(?P<head>[^/]*//(?:[^@/]*@)?)(?P<hosts>[^/?#]*)(?P<tail>.*)", raw.strip())
    if match is None or "," not in match["hosts"]:
        return raw, ()
    hosts = []
    for item in match["hosts"].split(","):
        item = item.strip()
        hosts.append(parse_host_port(item if re.search(r":\d+$", item) else f"{item}:26379"))
    return match["head"] + match["hosts"].split(",")[0].strip() + match["tail"], tuple(hosts)


def parse_redis_url(raw: str) -> RedisURL:
    """Parse a Redis URL.  The ``ValueError`` never carries the password.  A
    comma-separated host list (the sentinels, in sentinel mode) is kept in
    ``hosts``; ``host`` and ``port`` are then its first entry."""
    shown = redact_url(raw)
    raw, hosts = _split_host_list(raw)
    try:
        parts = urlsplit(raw.strip())
    except ValueError:
        raise ValueError(f"not a URL: {shown!r}") from None
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"expected redis://host:port/db or rediss:// (TLS), got {shown!r}")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"bad port in {shown!r}") from None
    path = parts.path.lstrip("/")
    if path and not path.isdigit():
        raise ValueError(f"database must be a number in {shown!r}")
    return RedisURL(
        host=parts.hostname or "127.0.0.1",
        port=port,
        db=int(path or 0),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=parts.scheme == "rediss",
        hosts=hosts,
    )


def parse_path(raw: str) -> str:
    """A file path (checked when used: the gateway reads it at start)."""
    return raw.strip()


def parse_duration(raw: str) -> float:
    text = raw.strip().lower()
    if text in ("inf", "off", "none", "0"):
        return math.inf if text != "0" else 0.0
    value = float(text)
    if value < 0 or math.isnan(value):
        raise ValueError(f"expected a non-negative number of seconds, got {raw!r}")
    return value


def parse_positive_int(raw: str) -> int:
    value = int(raw.strip())
    if value <= 0:
        raise ValueError(f"expected a positive integer, got {raw!r}")
    return value


def parse_non_negative_int(raw: str) -> int:
    value = int(raw.strip())
    if value < 0:
        raise ValueError(f"expected zero or a positive integer, got {raw!r}")
    return value


def parse_gateway_id(raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", raw):
        raise ValueError(f"gateway id must be 1-64 of A-Z a-z 0-9 _ . -, got {raw!r}")
    return raw


def parse_log_format(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("json", "console", "auto"):
        raise ValueError(f"expected json, console or auto, got {raw!r}")
    return value


def parse_log_level(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("debug", "info", "warning", "error"):
        raise ValueError(f"expected debug, info, warning or error, got {raw!r}")
    return value


def parse_room(raw: str) -> str:
    problem = validate_room(raw)
    if problem:
        raise ValueError(problem)
    return raw


def parse_prefix(raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{0,32}", raw):
        raise ValueError(f"key prefix must be up to 32 of A-Z a-z 0-9 _ . : -, got {raw!r}")
    return raw


REDIS_MODES = ("standalone", "sentinel")


def parse_redis_mode(raw: str) -> str:
    value = raw.strip().lower()
    if value == "cluster":
        raise ValueError("cluster mode is not supported yet (issue 11); use standalone or sentinel")
    if value not in REDIS_MODES:
        raise ValueError(f"expected standalone or sentinel, got {raw!r}")
    return value


def parse_sentinel_master(raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", raw.strip()):
        raise ValueError(f"expected a master name (1-64 of A-Z a-z 0-9 _ . : -), got {raw!r}")
    return raw.strip()


def parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def parse_networks(raw: str) -> tuple[str, ...]:
    import ipaddress

    nets = tuple(n.strip() for n in raw.split(",") if n.strip())
    for net in nets:
        ipaddress.ip_network(net, strict=False)
    return nets


def _setting(
    default: str,
    parse: Callable[[str], Any],
    help: str,
    *,
    metavar: str = "VALUE",
    secret: bool = False,
) -> Any:
    return field(
        default=parse(default) if default != "<generated>" else None,
        repr=not secret,
        metadata={"raw_default": default, "parse": parse, "help": help, "metavar": metavar},
    )


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a gateway can be told.  Build with :func:`load_settings`."""

    listen: HostPort = _setting(
        "127.0.0.1:7000", parse_host_port, "TCP address for chat clients", metavar="HOST:PORT"
    )
    redis_url: RedisURL = _setting(
        "redis://127.0.0.1:6379/0",
        parse_redis_url,
        "Redis to share with the other gateways (user and password in the URL; rediss:// for"
        " TLS; database 0 only: CHAT_KEY_PREFIX separates deployments)",
        metavar="URL",
    )
    gateway_id: str = _setting(
        "<generated>",
        parse_gateway_id,
        "name of this gateway in logs, metrics and chat-admin; a restart may reuse it"
        " (default: host-pid-random)",
        metavar="ID",
    )
    log_format: str = _setting(
        "auto", parse_log_format, "json, console, or auto (json unless stdout is a terminal)"
    )
    log_level: str = _setting("info", parse_log_level, "debug, info, warning or error")
    key_prefix: str = _setting(
        "chat:", parse_prefix, "prefix of every Redis key and channel", metavar="PREFIX"
    )
    max_line_bytes: int = _setting(
        "4096", parse_positive_int, "longest accepted client line, in bytes", metavar="N"
    )
    outbox_bytes: int = _setting(
        "262144",
        parse_positive_int,
        "per-client output buffer; a client exceeding it is disconnected",
        metavar="N",
    )
    max_clients: int = _setting(
        "10000", parse_positive_int, "connections this gateway accepts at once", metavar="N"
    )
    default_room: str = _setting("#lobby", parse_room, "room every client starts in", metavar="ROOM")
    history_size: int = _setting(
        "50",
        parse_non_negative_int,
        "messages replayed when joining a room (0 turns history off, at most 500)",
        metavar="N",
    )
    redis_timeout_s: float = _setting(
        "2.0", parse_duration, "deadline for every Redis command and connect", metavar="SECONDS"
    )
    heartbeat_interval_s: float = _setting(
        "2.0", parse_duration, "how often the gateway renews its lease", metavar="SECONDS"
    )
    heartbeat_ttl_s: float = _setting(
        "10.0",
        parse_duration,
        "lease lifetime; a gateway silent this long is declared dead",
        metavar="SECONDS",
    )
    canary_interval_s: float = _setting(
        "2.0",
        parse_duration,
        "how often the subscriber loop proves it is alive",
        metavar="SECONDS",
    )
    canary_timeout_s: float = _setting(
        "5.0",
        parse_duration,
        "a canary not back within this time marks the subscriber dead",
        metavar="SECONDS",
    )
    drain_timeout_s: float = _setting(
        "10.0", parse_duration, "graceful shutdown deadline", metavar="SECONDS"
    )
    idle_timeout_s: float = _setting(
        "inf",
        parse_duration,
        "disconnect clients silent this long (inf = off)",
        metavar="SECONDS",
    )
    nick_timeout_s: float = _setting(
        "30",
        parse_duration,
        "disconnect clients that have not chosen a nickname this long (inf = off)",
        metavar="SECONDS",
    )
    flood_burst: int = _setting(
        "10", parse_positive_int,
        "flood budget: tokens a client may spend at once (a chat line costs 1, commands more)",
        metavar="N",
    )
    flood_rate: float = _setting(
        "5", parse_duration, "flood budget: tokens per second a client regains",
        metavar="PER_SECOND",
    )
    http_listen: HostPort | None = _setting(
        "off",
        parse_optional_host_port,
        "HTTP address for /healthz, /readyz, /metrics (off = none)",
        metavar="HOST:PORT",
    )
    proxy_protocol: bool = _setting(
        "false", parse_bool, "expect a PROXY protocol v1/v2 header on every connection"
    )
    trusted_proxies: tuple[str, ...] = _setting(
        "127.0.0.1/32,::1/128",
        parse_networks,
        "comma-separated networks allowed to send PROXY headers",
        metavar="CIDRS",
    )
    # -- TLS for clients (issue 10) ---------------------------------------------------
    tls_listen: HostPort | None = _setting(
        "off",
        parse_optional_host_port,
        "TCP address for chat clients over TLS, the same protocol as --listen (off = none;"
        " needs --tls-cert and --tls-key)",
        metavar="HOST:PORT",
    )
    tls_cert: str = _setting(
        "", parse_path, "PEM file with the TLS certificate chain, leaf first", metavar="PATH"
    )
    tls_key: str = _setting(
        "", parse_path, "PEM file with the TLS certificate's private key (unencrypted)",
        metavar="PATH",
    )
    tls_handshake_timeout_s: float = _setting(
        "10",
        parse_duration,
        "a TLS client that has not finished its handshake in this time is closed",
        metavar="SECONDS",
    )

    # -- abuse resistance: timeouts, flood control, bounded replies (issue 10) -----
    keepalive_idle_s: float = _setting(
        "60",
        parse_duration,
        "TCP keepalive: a client's socket silent this long is probed by the kernel"
        " (inf = no keepalive)",
        metavar="SECONDS",
    )
    keepalive_interval_s: float = _setting(
        "10", parse_duration, "TCP keepalive: seconds between unanswered probes",
        metavar="SECONDS",
    )
    keepalive_count: int = _setting(
        "6", parse_positive_int,
        "TCP keepalive: unanswered probes after which the client is disconnected", metavar="N",
    )
    max_lines_before_nick: int = _setting(
        "10", parse_positive_int,
        "lines a client may send before it holds a nickname; then it is disconnected",
        metavar="N",
    )
    rooms_per_minute: int = _setting(
        "5", parse_positive_int,
        "new rooms (joins of a room with no members) one connection may create per minute",
        metavar="N",
    )
    # -- accounts (registered nicknames) --------------------------------------------
    password_min_length: int = _setting(
        "8", parse_positive_int, "shortest password /register and /password accept, in characters",
        metavar="N",
    )
    password_max_length: int = _setting(
        "128", parse_positive_int, "longest password accepted, in characters (at most 1024)",
        metavar="N",
    )
    password_hash_threads: int = _setting(
        "2",
        parse_positive_int,
        "password hashes (argon2id, ~19 MiB each) computed at once; more wait their turn",
        metavar="N",
    )
    registrations_per_ip: int = _setting(
        "5",
        parse_positive_int,
        "accounts one client address may register per hour, cluster-wide",
        metavar="N",
    )
    auth_failures_per_account: int = _setting(
        "5",
        parse_positive_int,
        "wrong passwords for one nickname, cluster-wide, before it is locked for the window",
        metavar="N",
    )
    auth_failures_per_ip: int = _setting(
        "20",
        parse_positive_int,
        "wrong passwords from one client address, cluster-wide, before it is locked for the window",
        metavar="N",
    )
    auth_failure_window_s: float = _setting(
        "300",
        parse_duration,
        "how long failed password attempts are counted (from the first one)",
        metavar="SECONDS",
    )
    # -- memory bounds: Redis per room, gateway output buffers in total (issue 10) --
    room_ttl_s: float = _setting(
        "10800",
        parse_duration,
        "an empty room's sequence counter, log and history expire this long after its"
        " last member left (a join keeps them)",
        metavar="SECONDS",
    )
    room_log_bytes: int = _setting(
        "1048576",
        parse_positive_int,
        "most bytes a room's log (its last 2000 publications, for gap filling) keeps in"
        " Redis; the oldest entries go first",
        metavar="N",
    )
    room_history_bytes: int = _setting(
        "262144",
        parse_positive_int,
        "most bytes a room's history (its last 500 chat lines, replayed on join) keeps"
        " in Redis; the oldest entries go first",
        metavar="N",
    )
    outbox_total_bytes: int = _setting(
        "268435456",
        parse_positive_int,
        "output bytes waiting for all clients of this gateway together; past it the"
        " clients furthest behind are disconnected",
        metavar="N",
    )

    # -- per-address admission (issue 10: one address cannot take the service down) --
    max_connections_per_ip: int = _setting(
        "10",
        parse_non_negative_int,
        "connections one client address may hold across the whole cluster"
        " (loopback included; 0 = no limit)",
        metavar="N",
    )
    connect_rate_per_ip: float = _setting(
        "2",
        parse_duration,
        "new connections per second one client address may sustain, cluster-wide"
        " (inf = no limit)",
        metavar="PER_SECOND",
    )
    connect_burst_per_ip: int = _setting(
        "10",
        parse_positive_int,
        "new connections one client address may open at once before the rate applies",
        metavar="N",
    )

    # -- secure Redis link: TLS to Redis, isolation (issue 12) -------------------------
    redis_tls_ca: str = _setting(
        "",
        parse_path,
        "PEM CA bundle that signs Redis's certificate, for rediss:// URLs (empty: the"
        " system's CAs); the host name (or IP, which needs an IP SAN) is verified",
        metavar="PATH",
    )
    redis_tls_cert: str = _setting(
        "", parse_path, "PEM client certificate for Redis (mutual TLS; needs"
        " CHAT_REDIS_TLS_KEY)", metavar="PATH",
    )
    redis_tls_key: str = _setting(
        "", parse_path, "PEM private key (unencrypted) of CHAT_REDIS_TLS_CERT", metavar="PATH",
    )
    # -- Redis topology (issue 12): standalone or Sentinel-managed primary --
    redis_mode: str = _setting(
        "standalone",
        parse_redis_mode,
        "standalone (CHAT_REDIS_URL is the Redis) or sentinel (CHAT_REDIS_URL lists the"
        " sentinels, comma-separated; the primary is discovered)",
        metavar="MODE",
    )
    redis_sentinel_master: str = _setting(
        "mymaster",
        parse_sentinel_master,
        "in sentinel mode: the name the sentinels monitor the primary under",
        metavar="NAME",
    )
    redis_sentinel_password: str = _setting(
        "",
        str,
        "in sentinel mode: the password of the sentinels themselves (empty: none);"
        " the data nodes' password stays in CHAT_REDIS_URL",
        metavar="PASSWORD",
        secret=True,
    )

    def __post_init__(self) -> None:
        if self.redis_mode == "standalone" and self.redis_url.hosts:
            raise ConfigError(
                "CHAT_REDIS_URL lists several hosts; that is only for"
                " CHAT_REDIS_MODE=sentinel (the sentinels)"
            )
        if self.gateway_id is None:
            object.__setattr__(self, "gateway_id", _default_gateway_id())
        if self.heartbeat_ttl_s <= self.heartbeat_interval_s:
            raise ConfigError(
                "heartbeat_ttl_s must be longer than heartbeat_interval_s "
                f"({self.heartbeat_ttl_s} <= {self.heartbeat_interval_s})"
            )
        for name in ("redis_timeout_s", "heartbeat_interval_s", "heartbeat_ttl_s", "drain_timeout_s",
                     "room_ttl_s"):
            value = getattr(self, name)
            if not 0 < value < math.inf:
                raise ConfigError(
                    f"{env_name(name)} must be a positive, finite number of seconds, got {value}"
                )
        if self.history_size > 500:  # bus.HISTORY_KEEP: what Redis keeps per room
            raise ConfigError(f"CHAT_HISTORY_SIZE must be at most 500, got {self.history_size}")
        if self.flood_rate <= 0:
            raise ConfigError("flood_rate must be positive")
        if self.keepalive_idle_s < 1 or not 1 <= self.keepalive_interval_s < math.inf:
            raise ConfigError(
                "CHAT_KEEPALIVE_IDLE_S and CHAT_KEEPALIVE_INTERVAL_S must be at least 1 second"
                " (and the interval finite)"
            )
        if not self.password_min_length <= self.password_max_length <= 1024:
            raise ConfigError(
                "CHAT_PASSWORD_MIN_LENGTH <= CHAT_PASSWORD_MAX_LENGTH <= 1024 must hold, got "
                f"{self.password_min_length} and {self.password_max_length}"
            )
        if not 0 < self.auth_failure_window_s < math.inf:
            raise ConfigError(
                "CHAT_AUTH_FAILURE_WINDOW_S must be a positive, finite number of seconds, "
                f"got {self.auth_failure_window_s}"
            )
        if self.tls_listen is not None and not (self.tls_cert and self.tls_key):
            raise ConfigError("CHAT_TLS_LISTEN needs both CHAT_TLS_CERT and CHAT_TLS_KEY")
        if not 0 < self.tls_handshake_timeout_s < math.inf:
            raise ConfigError(
                "CHAT_TLS_HANDSHAKE_TIMEOUT_S must be a positive, finite number of seconds, "
                f"got {self.tls_handshake_timeout_s}"
            )
        if self.outbox_total_bytes < self.outbox_bytes:
            raise ConfigError(
                f"CHAT_OUTBOX_TOTAL_BYTES ({self.outbox_total_bytes}) must be at least"
                f" CHAT_OUTBOX_BYTES ({self.outbox_bytes})"
            )
        if self.connect_rate_per_ip <= 0:
            raise ConfigError("CHAT_CONNECT_RATE_PER_IP must be positive (inf = no limit)")
        self._check_redis_link()

    def _check_redis_link(self) -> None:
        # Pub/sub ignores SELECT: two deployments on two databases with one prefix
        # would hear each other's rooms.  The prefix separates deployments.
        if self.redis_url.db != 0:
            raise ConfigError(
                f"CHAT_REDIS_URL selects database {self.redis_url.db}: pub/sub ignores the"
                " database number, so use database 0 and CHAT_KEY_PREFIX to separate deployments"
            )
        if bool(self.redis_tls_cert) != bool(self.redis_tls_key):
            raise ConfigError("CHAT_REDIS_TLS_CERT and CHAT_REDIS_TLS_KEY go together")
        if not self.redis_url.tls and (self.redis_tls_ca or self.redis_tls_cert):
            raise ConfigError(
                "CHAT_REDIS_TLS_CA/CERT/KEY are set but CHAT_REDIS_URL is not rediss://"
            )


ENV_PREFIX = "CHAT_"


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        # argparse quotes the offending arguments, which may be a Redis URL.
        raise ConfigError(redact_secrets(message))


def build_parser(prog: str = "chat-gateway") -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog=prog,
        description="Trio TCP chat gateway. Every flag can also be set with the "
        "CHAT_* environment variable shown; the flag wins.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for f in fields(Settings):
        meta = f.metadata
        parser.add_argument(
            flag_name(f.name),
            dest=f.name,
            metavar=meta["metavar"],
            default=None,
            help=f"{meta['help']} [env {env_name(f.name)}, default {meta['raw_default']}]",
        )
    return parser


def load_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build :class:`Settings` from flags, then ``CHAT_*`` variables, then defaults.

    Raises :class:`ConfigError` with a one-line message naming the bad setting.
    """
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    return Settings(**given_settings(environ, vars(args)))


def given_settings(
    environ: Mapping[str, str],
    flags: Mapping[str, str | None] | None = None,
    *,
    only: Collection[str] | None = None,
) -> dict[str, Any]:
    """The settings given as flags or ``CHAT_*`` variables, parsed, by setting name.

    ``flags`` maps setting names to raw flag values (``None``: not given); a flag
    wins over its variable.  With ``only``, the other settings are neither read
    nor checked: they are left to the program that uses them.  Pass the result
    to :class:`Settings` for the defaults of the rest.

    Raises :class:`ConfigError` naming a ``CHAT_*`` variable that no setting
    knows (with the closest known name when there is one), or the flag or
    variable whose value is invalid.
    """
    check_variable_names(environ)
    flags = flags or {}
    values: dict[str, Any] = {}
    for f in fields(Settings):
        if only is not None and f.name not in only:
            continue
        raw = flags.get(f.name)
        source = flag_name(f.name)
        if raw is None and env_name(f.name) in environ:
            raw = environ[env_name(f.name)]
            source = env_name(f.name)
        if raw is None:
            continue
        try:
            values[f.name] = f.metadata["parse"](raw)
        except ValueError as exc:
            # Parsers never put a password in their message; redacting again
            # covers a parser that quotes its input and a URL in another setting.
            raise ConfigError(f"invalid {source}: {redact_secrets(str(exc))}") from None
    return values


def check_variable_names(environ: Mapping[str, str]) -> None:
    """Raise :class:`ConfigError` naming every ``CHAT_*`` variable no setting knows."""
    known = {env_name(f.name) for f in fields(Settings)}
    unknown = sorted(name for name in environ if name.startswith(ENV_PREFIX) and name not in known)
    if not unknown:
        return
    described = []
    for name in unknown:
        guess = _closest(name, known)
        described.append(f"{name} (did you mean {guess}?)" if guess else name)
    what = "variable" if len(unknown) == 1 else "variables"
    raise ConfigError(f"unknown {what} {', '.join(described)}")


def _closest(name: str, known: Collection[str]) -> str | None:
    # Compared without the shared prefix, which would make every name look alike.
    suffixes = {k[len(ENV_PREFIX) :]: k for k in known}
    matches = difflib.get_close_matches(name[len(ENV_PREFIX) :], list(suffixes), n=1, cutoff=0.7)
    return suffixes[matches[0]] if matches else None
