"""Real ``redis-server`` processes for tests, on free loopback ports."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import redis

from services.cluster.redis_server import find_redis_server, redis_server_command
from services.common.probes import free_port, redis_ping
from services.common.processes import Process, ProcessExited, wait_until

__all__ = ["RedisServer", "free_port", "redis_server_binary"]

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


def redis_server_binary() -> str:
    """The binary the local cluster would use; raises when there is none."""
    path = find_redis_server()
    if path is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    return path


class RedisServer:
    """One redis-server process.  ``restart()`` keeps the port and, by default,
    starts empty.

    Its log is ``redis.log`` in :attr:`dir`, removed on leaving the ``with`` block.

    With ``appendonly=True`` every write is in the append-only file, fsynced before
    Redis replies (``--appendfsync always``), in ``dir``, which a restart keeps: a
    SIGKILL then loses nothing that was acknowledged, and the restarted server
    comes back with the data.
    """

    def __init__(
        self,
        port: int | None = None,
        password: str | None = None,
        *,
        appendonly: bool = False,
        extra: Sequence[str] = (),
    ) -> None:
        self.port = port or free_port()
        self.extra = list(extra)  # more redis-server arguments (``--replicaof``...)
        # A port chosen here was free a moment ago; another process (or an outgoing
        # connection's local port) may take it before redis-server binds it.
        self._port_chosen = port is None
        self.password = password
        self.appendonly = appendonly
        self.dir = tempfile.mkdtemp(prefix="chat-redis-")
        self.process: Process | None = None

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        """The running redis-server (``pid``, ``send_signal`` to it alone), or ``None``."""
        return self.process.popen if self.process is not None else None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, db=db, password=self.password, socket_timeout=5
        )

    def start(self) -> None:
        """Start it and return once it answers; on a port this object chose, try
        another port when that one was taken meanwhile."""
        for _ in range(4 if self._port_chosen else 1):
            try:
                self._start_once()
                return
            except ProcessExited as exc:
                if not (self._port_chosen and "Address already in use" in str(exc)):
                    raise
                self.port = free_port()
        self._start_once()

    def _answering(self) -> bool:
        """This process (not another one that holds the port) answers on the port."""
        assert self.process is not None
        if not redis_ping(self.port, password=self.password):
            return False
        try:
            with self.client() as client:
                return int(client.info("server")["process_id"]) == self.process.pid
        except redis.RedisError:
            return False

    def _start_once(self) -> None:
        extra = ["--requirepass", self.password, "--masterauth", self.password] if self.password else []
        extra += self.extra
        if self.appendonly:  # later arguments win over the no-persistence defaults
            extra += ["--appendonly", "yes", "--appendfsync", "always"]
        command = redis_server_command(redis_server_binary(), self.port, workdir=self.dir, extra=extra)
        self.process = Process("redis", command, log_path=Path(self.dir) / "redis.log")
        wait_until(
            self._answering,
            START_TIMEOUT_S,
            f"redis-server on port {self.port} to answer PING",
            interval_s=0.02,
            process=self.process,
        )
        self._port_chosen = False  # a restart keeps this port

    def kill(self) -> None:
        """SIGKILL: the data is gone, unless ``appendonly`` (then what Redis
        acknowledged is on disk for the next start)."""
        if self.process is not None:
            self.process.kill()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(signal.SIGTERM, STOP_TIMEOUT_S)
            self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
