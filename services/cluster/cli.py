"""``python -m services.cluster`` / ``chat-cluster`` / ``scripts/run``: the command line.

Exit status: 0 after a requested stop, 1 when start-up failed or Redis or HAProxy
died, 2 for bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from services.cluster.logs import Output
from services.cluster.plan import DEFAULT_HAPROXY_CONFIG, ClusterError, make_plan
from services.cluster.run import run_cluster


def _port_list(raw: str) -> list[int]:
    try:
        ports = [int(p) for p in raw.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ports, got {raw!r}") from None
    if not ports or any(not 0 < p < 65536 for p in ports):
        raise argparse.ArgumentTypeError(f"ports must be 1-65535, got {raw!r}")
    return ports


def _port(raw: str) -> int:
    return _port_list(raw)[0]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m services.cluster",
        description="Run Redis, N chat gateways and HAProxy on this machine; Ctrl-C stops "
        "them all. Other CHAT_* environment variables are passed on to the gateways.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--gateways", type=int, default=3, metavar="N", help="number of gateways")
    parser.add_argument(
        "--base-port",
        type=_port,
        default=7000,
        metavar="PORT",
        help="HAProxy listens on PORT, gateway i on PORT+i, its HTTP endpoint on PORT+1000+i",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address every listener binds")
    parser.add_argument("--no-haproxy", action="store_true", help="connect to gateways directly")
    parser.add_argument("--lb-port", type=_port, help="HAProxy port (overrides --base-port)")
    parser.add_argument("--gateway-ports", type=_port_list, metavar="P1,P2,..", help="gateway chat ports")
    parser.add_argument("--http-ports", type=_port_list, metavar="P1,P2,..", help="gateway HTTP ports")
    parser.add_argument(
        "--redis-port", type=_port, help="port of the owned redis-server (default: a free one)"
    )
    parser.add_argument(
        "--redis",
        choices=("standalone", "sentinel"),
        default="standalone",
        help="the Redis the cluster starts: one redis-server, or a Sentinel-managed primary "
        "(1 primary, 1 replica, 3 sentinels; failure detected within 1 s) with the gateways "
        "in CHAT_REDIS_MODE=sentinel",
    )
    parser.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help="keep the owned redis-server's data (AOF) in DIR, so accounts and rooms survive "
        "a restart of the cluster (default: nothing is kept)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="gateways also serve TLS (on PORT+100+i), with a self-signed certificate made "
        "for this run unless --tls-cert and --tls-key are given",
    )
    parser.add_argument("--tls-cert", metavar="PATH", help="PEM certificate chain for --tls")
    parser.add_argument("--tls-key", metavar="PATH", help="PEM private key for --tls")
    parser.add_argument("--tls-ports", type=_port_list, metavar="P1,P2,..", help="gateway TLS ports")
    parser.add_argument("--haproxy-config", type=Path, default=DEFAULT_HAPROXY_CONFIG, metavar="PATH")
    parser.add_argument(
        "--gateway-command",
        type=shlex.split,
        default=[sys.executable, "-m", "services.gateway"],
        metavar="CMD",
        help="how to start one gateway (e.g. chat-gateway)",
    )
    parser.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        default=None,
        help="auto: console on a terminal, JSON lines otherwise [env CHAT_LOG_FORMAT]",
    )
    parser.add_argument(
        "--ready-timeout-s",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long each process may take to become ready",
    )
    parser.add_argument(
        "--stop-timeout-s",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long gateways may drain before SIGKILL (default: CHAT_DRAIN_TIMEOUT_S + 5)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    environ = dict(os.environ)
    try:
        plan = make_plan(args, environ)
    except ClusterError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    out = Output(plan.log_format, sys.stdout, color=plan.color)
    return trio.run(run_cluster, plan, out, environ)
