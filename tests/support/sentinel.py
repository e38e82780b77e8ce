"""A Sentinel-managed Redis for tests: one primary, replicas, sentinels, all real
processes on loopback, with short failure detection so failovers take seconds.

Use as a context manager; :attr:`SentinelTopology.url` is the ``CHAT_REDIS_URL``
of sentinel mode (every sentinel, comma-separated) and :attr:`master` the
``CHAT_REDIS_SENTINEL_MASTER``.  Waiting is done by asking the processes (the
sentinels' view of the primary, ``ROLE``), never by sleeping.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from pathlib import Path

import redis

from services.cluster.redis_server import sentinel_command
from services.common.probes import free_port
from services.common.processes import Process, wait_until
from tests.support.redis_server import RedisServer, redis_server_binary

DOWN_AFTER_MS = 500
FAILOVER_TIMEOUT_MS = 3000
START_TIMEOUT_S = 15.0


class SentinelTopology:
    """``replicas`` replicas of one primary, watched by ``sentinels`` sentinels."""

    def __init__(self, *, replicas: int = 1, sentinels: int = 3, master: str = "chatmaster",
                 down_after_ms: int = DOWN_AFTER_MS,
                 failover_timeout_ms: int = FAILOVER_TIMEOUT_MS) -> None:
        self.master = master
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.primary = RedisServer()
        self.replicas_wanted = replicas
        self.sentinels_wanted = sentinels
        self.replicas: list[RedisServer] = []
        self.sentinel_ports: list[int] = []
        self.sentinel_procs: list[Process] = []
        self.dir = tempfile.mkdtemp(prefix="chat-sentinel-")

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis://{hosts}/0"

    @property
    def servers(self) -> list[RedisServer]:
        return [self.primary, *self.replicas]

    def gateway_settings(self) -> dict[str, str]:
        """The settings (for ``GatewayProcess``) of sentinel mode on this topology."""
        return {"redis_mode": "sentinel", "redis_sentinel_master": self.master}

    # -- asking the processes ------------------------------------------------------
    def sentinel_client(self, i: int = 0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.sentinel_ports[i], socket_timeout=5)

    def primary_port_per_sentinel(self) -> list[int | None]:
        """The primary's port as each live sentinel sees it (``None``: no answer)."""
        ports: list[int | None] = []
        for i, proc in enumerate(self.sentinel_procs):
            if not proc.running():
                continue
            try:
                with self.sentinel_client(i) as client:
                    reply = client.execute_command("SENTINEL", "get-master-addr-by-name",
                                                   self.master)
                ports.append(int(reply[1]) if reply else None)
            except redis.RedisError:
                ports.append(None)
        return ports

    @staticmethod
    def role(server: RedisServer) -> str | None:
        try:
            with server.client() as client:
                return str(client.execute_command("ROLE")[0].decode())
        except (redis.RedisError, OSError):
            return None

    def server_on(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def wait_primary(self, port: int, timeout_s: float = 15.0) -> None:
        """Until every live sentinel names ``port`` and that server says ``master``."""
        wait_until(
            lambda: set(self.primary_port_per_sentinel()) == {port}
            and self.role(self.server_on(port)) == "master",
            timeout_s, f"sentinels to agree on the primary at port {port}", interval_s=0.05,
        )

    def wait_replicas_known(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until every sentinel knows every replica and every other sentinel (a
        failover needs both) and every replica is in sync."""

        def known() -> bool:
            for i in range(len(self.sentinel_ports)):
                with self.sentinel_client(i) as client:
                    replicas = client.execute_command("SENTINEL", "replicas", self.master)
                    others = client.execute_command("SENTINEL", "sentinels", self.master)
                if len(replicas) < len(self.replicas) or len(others) < len(self.sentinel_ports) - 1:
                    return False
            for replica in self.replicas:
                with replica.client() as client:
                    if client.info("replication").get("master_link_status") != "up":
                        return False
            return True

        wait_until(known, timeout_s, "sentinels to discover replicas and each other",
                   interval_s=0.05)

    # -- faults ---------------------------------------------------------------------
    def kill_primary(self) -> RedisServer:
        """SIGKILL the current primary; returns it (not restarted)."""
        old = self.current_primary()
        old.kill()
        return old

    def current_primary(self) -> RedisServer:
        ports = [p for p in self.primary_port_per_sentinel() if p is not None]
        assert ports, "no sentinel names a primary"
        return self.server_on(max(set(ports), key=ports.count))

    def failover(self) -> None:
        """``SENTINEL FAILOVER``: promote a replica now (no agreement needed)."""
        with self.sentinel_client(0) as client:
            client.execute_command("SENTINEL", "FAILOVER", self.master)

    def pause_replication(self, replica: RedisServer) -> None:
        """SIGSTOP ``replica``: it stops taking in the primary's writes."""
        assert replica.proc is not None
        replica.proc.send_signal(signal.SIGSTOP)

    def resume(self, server: RedisServer) -> None:
        assert server.proc is not None
        server.proc.send_signal(signal.SIGCONT)

    # -- life cycle -----------------------------------------------------------------
    def start(self) -> None:
        self.primary.start()
        for _ in range(self.replicas_wanted):
            replica = RedisServer(extra=["--replicaof", "127.0.0.1", str(self.primary.port)])
            replica.start()
            self.replicas.append(replica)
        binary = redis_server_binary()
        for i in range(self.sentinels_wanted):
            port = free_port()
            command = sentinel_command(
                binary, port, workdir=self.dir, master=self.master,
                primary_port=self.primary.port, down_after_ms=self.down_after_ms,
                failover_timeout_ms=self.failover_timeout_ms,
            )
            proc = Process(f"sentinel{i}", command, log_path=Path(self.dir) / f"sentinel{i}.log")
            self.sentinel_ports.append(port)
            self.sentinel_procs.append(proc)
        deadline = time.monotonic() + START_TIMEOUT_S
        for port, proc in zip(self.sentinel_ports, self.sentinel_procs, strict=True):
            wait_until(lambda port=port: self._sentinel_answers(port),  # type: ignore[misc]
                       max(0.1, deadline - time.monotonic()), f"sentinel on {port}",
                       interval_s=0.02, process=proc)
        self.wait_replicas_known()

    def _sentinel_answers(self, port: int) -> bool:
        try:
            with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        for proc in self.sentinel_procs:
            if proc.running():
                proc.kill()
        for server in self.servers:
            if server.proc is not None and server.proc.poll() is None:
                server.proc.send_signal(signal.SIGCONT)  # a stopped server cannot stop
            server.__exit__()

    def __enter__(self) -> SentinelTopology:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
