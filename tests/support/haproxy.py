"""HAProxy as deployed (deploy/haproxy/haproxy.cfg), pointed at gateways on this machine."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from services.common.probes import haproxy_stat
from tests.support.processes import REPO

HAPROXY_CFG = REPO / "deploy" / "haproxy" / "haproxy.cfg"


def haproxy_binary() -> str | None:
    return shutil.which("haproxy")


def haproxy_env(lb_port: int, gateways: Sequence[tuple[int, int]], stats_socket: Path) -> dict[str, str]:
    """``LB_*`` variables for deploy/haproxy/haproxy.cfg: gateways as (chat port, HTTP port)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LB_")}
    env["LB_BIND"] = f"127.0.0.1:{lb_port}"
    env["LB_STATS_SOCKET"] = str(stats_socket)
    for i, (port, http_port) in enumerate(gateways, start=1):
        env[f"LB_GW{i}_ADDR"] = f"127.0.0.1:{port}"
        env[f"LB_GW{i}_CHECK_PORT"] = str(http_port)
    return env


def haproxy_server_states(socket_path: Path, backend: str = "gateways") -> dict[str, str]:
    """``{"gw1": "UP", "gw2": "DOWN", ...}`` from ``show stat``."""
    return {
        row["svname"]: row.get("status", "")
        for row in haproxy_stat(socket_path)
        if row.get("pxname") == backend and row.get("svname") not in ("BACKEND", "FRONTEND")
    }
