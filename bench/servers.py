"""Start and stop the servers under test: Redis plus our gateways, or ngircd.

Every process is a :class:`services.common.processes.Process` on a free
127.0.0.1 port: in its own session (so a terminal's Ctrl-C reaches only the
runner, which then stops it in order), with ``PR_SET_PDEATHSIG`` (so it dies if
the runner is killed outright), writing its output straight into a log file in
the run's directory (no pipe that a busy runner could let fill up).  A
:class:`Cluster` is a context manager: leaving it, normally or by an exception,
terminates every process it started (SIGTERM, then SIGKILL after a grace
period) and leaves none behind.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.procstat import total_cpu, total_rss, total_system
from services.cluster.redis_server import find_redis_server, redis_server_command
from services.common.probes import free_port, redis_ping
from services.common.processes import Process, ProcessExited, wait_until

REPO = Path(__file__).resolve().parent.parent
NGIRCD = "/usr/sbin/ngircd"
STOP_GRACE_S = 5.0


class ServerError(Exception):
    """A server did not start or stopped early; the message includes its log's tail."""


def check_alive(proc: Process) -> None:
    """Raise :class:`ServerError` if the process has exited."""
    if not proc.running():
        raise ServerError(f"{proc.name} exited with status {proc.returncode}:\n{proc.tail(20)}")


def _wait_until(check: Callable[[], bool], proc: Process, timeout_s: float, what: str) -> None:
    try:
        wait_until(check, timeout_s, what, process=proc)
    except ProcessExited as exc:
        raise ServerError(str(exc)) from None
    except TimeoutError:
        raise ServerError(f"{what} not ready after {timeout_s:.0f}s:\n{proc.tail(20)}") from None


def _probe(port: int, send: bytes, expect: bytes, timeout_s: float = 1.0) -> bool:
    """Connect, send ``send``, and read until ``expect`` appears; False on any failure."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
            if send:
                s.sendall(send)
            got = b""
            while expect not in got:
                chunk = s.recv(4096)
                if not chunk:
                    return False
                got += chunk
            return True
    except OSError:
        return False


@dataclass
class Cluster:
    """The servers of one run.  ``targets`` are the client-facing ``(host, port)`` pairs.

    ``roles`` maps a role (``gateway``, ``redis``, ``ngircd``) to its processes, for
    CPU and memory accounting.  ``settings`` records how the servers were configured.
    """

    system: str
    workdir: Path
    targets: list[tuple[str, int]] = field(default_factory=list)
    roles: dict[str, list[Process]] = field(default_factory=dict)
    settings: dict[str, object] = field(default_factory=dict)
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def _spawn(
        self,
        role: str,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Process:
        proc = Process(
            name,
            argv,
            env=env,
            cwd=cwd or self.workdir,
            log_path=self.workdir / f"{name}.log",
            parent_death_signal=signal.SIGTERM,
        )
        self.roles.setdefault(role, []).append(proc)
        self._stack.callback(proc.stop, signal.SIGTERM, STOP_GRACE_S)
        return proc

    def pids(self, role: str) -> list[int]:
        return [m.pid for m in self.roles.get(role, [])]

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far, per role."""
        return {role: total_cpu(self.pids(role)) for role in self.roles}

    def system_cpu(self) -> dict[str, float]:
        """Kernel-mode CPU seconds used so far, per role."""
        return {role: total_system(self.pids(role)) for role in self.roles}

    def rss(self) -> dict[str, int]:
        """Resident bytes now, per role."""
        return {role: total_rss(self.pids(role)) for role in self.roles}

    def check_alive(self) -> None:
        for procs in self.roles.values():
            for proc in procs:
                check_alive(proc)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_ours(
    workdir: Path,
    gateways: int,
    clients_per_gateway: int,
    flood_burst: int,
    flood_rate: float,
    extra_env: dict[str, str] | None = None,
) -> Cluster:
    """Redis (no persistence) plus ``gateways`` gateway processes, each accepting chat clients.

    Flood control is set to ``flood_burst`` / ``flood_rate`` (lifted for the
    scenario by the caller); ``CHAT_MAX_CLIENTS`` leaves room for every client.
    """
    cluster = Cluster("ours", workdir)
    try:
        rport = free_port()
        redis_bin = find_redis_server() or "redis-server"
        command = redis_server_command(redis_bin, rport, loglevel="warning", extra=["--maxclients", "10000"])
        redis = cluster._spawn("redis", "redis", command)
        _wait_until(lambda: redis_ping(rport), redis, 10, "redis-server")
        max_clients = clients_per_gateway + 100
        env_common = {
            "CHAT_REDIS_URL": f"redis://127.0.0.1:{rport}/0",
            "CHAT_LOG_LEVEL": "warning",
            "CHAT_MAX_CLIENTS": str(max_clients),
            "CHAT_FLOOD_BURST": str(flood_burst),
            "CHAT_FLOOD_RATE": f"{flood_rate:g}",
            "CHAT_DRAIN_TIMEOUT_S": "2",
            # Every load-generator connection comes from 127.0.0.1.
            "CHAT_MAX_CONNECTIONS_PER_IP": str(max_clients * gateways),
            "CHAT_CONNECT_RATE_PER_IP": "100000",
            "CHAT_CONNECT_BURST_PER_IP": "100000",
        }
        if extra_env:
            env_common.update(extra_env)
        cluster.settings = {
            "redis": f"redis-server on 127.0.0.1:{rport} (--save '' --appendonly no)",
            "gateway_env": dict(env_common),
        }
        pending: list[tuple[Process, int]] = []
        for g in range(gateways):
            port = free_port()
            env = dict(os.environ)
            env.update(env_common)
            env["CHAT_LISTEN"] = f"127.0.0.1:{port}"
            env["CHAT_GATEWAY_ID"] = f"bench{g}"
            m = cluster._spawn(
                "gateway", f"gateway{g}", [sys.executable, "-m", "services.gateway"], env, REPO
            )
            pending.append((m, port))
            cluster.targets.append(("127.0.0.1", port))
        for m, port in pending:
            _wait_until(lambda port=port: _probe(port, b"", b"?? "), m, 30, m.name)  # type: ignore[misc]
        return cluster
    except BaseException:
        cluster.close()
        raise


def _ngircd_conf(port: int) -> str:
    return f"""\
[Global]
\tName = bench.irc
\tInfo = bench
\tAdminInfo1 = bench
\tAdminInfo2 = bench
\tAdminEMail = bench@bench.irc
\tListen = 127.0.0.1
\tPorts = {port}
\tMotdPhrase = "bench"
[Limits]
\tMaxConnections = 0
\tMaxConnectionsIP = 0
\tMaxJoins = 0
\tMaxNickLength = 16
\tMaxPenaltyTime = 0
\tPingTimeout = 600
\tPongTimeout = 600
[Options]
\tDNS = no
\tIdent = no
\tPAM = no
\tIncludeDir = {tempfile.gettempdir()}/bench-ngircd-no-includes
"""


def start_ngircd(workdir: Path) -> Cluster:
    """ngircd in the foreground (``-n``) with a generated config and lifted limits.

    ``MaxPenaltyTime = 0`` turns ngircd's flood penalties off (its command and
    byte throttles only ever add penalty time), connection and join limits are
    off, and PING timeouts are longer than any run.  ngircd drops root for
    "nobody", which clears ``PR_SET_PDEATHSIG``; ``IdleTimeout = 60`` makes it exit
    by itself a minute after its last client left, should the runner be killed.
    """
    if not Path(NGIRCD).exists():
        raise ServerError(f"{NGIRCD} not found (apt-get install ngircd)")
    cluster = Cluster("ngircd", workdir)
    try:
        port = free_port()
        conf = workdir / "ngircd.conf"
        conf.write_text(_ngircd_conf(port))
        conf.chmod(0o644)
        workdir.chmod(0o755)  # ngircd drops to "nobody" after reading it
        m = cluster._spawn("ngircd", "ngircd", [NGIRCD, "-n", "-f", str(conf)])
        _wait_until(
            lambda: _probe(port, b"NICK probe\r\nUSER probe 0 * :probe\r\n", b" 001 "),
            m,
            10,
            "ngircd",
        )
        cluster.targets.append(("127.0.0.1", port))
        cluster.settings = {
            "ngircd": f"{NGIRCD} -n -f ngircd.conf on 127.0.0.1:{port}",
            "config": _ngircd_conf(port),
        }
        return cluster
    except BaseException:
        cluster.close()
        raise


def flood_limits(per_sender_rate: float) -> tuple[int, float]:
    """Gateway flood-control settings lifted well above what one bench sender sends."""
    rate = max(5.0, math.ceil(per_sender_rate * 4) + 5)
    return max(10, int(rate)), rate
