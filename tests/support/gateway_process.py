"""Gateways as real processes: ``python -m services.gateway`` with CHAT_* settings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from services.common.probes import http_get
from services.common.processes import Process, wait_until
from tests.support.processes import REPO

KEEP_LOGS_VARIABLE = "KEEP_GATEWAY_LOGS"


class GatewayProcess:
    """One gateway process.  Its stdout (JSON log lines) goes to ``log_path``.

    ``settings`` become ``CHAT_*`` variables (``drain_timeout_s=3`` is
    ``CHAT_DRAIN_TIMEOUT_S=3``), except ``port`` (the chat port; by default the
    gateway binds port 0 and :meth:`start` reads the port it got from its
    ``gateway.started`` event, so no other process can take a port chosen in
    advance) and ``http_port`` (serve /healthz, /readyz and /metrics there; 0
    for any free one, read from ``http.started``; then :meth:`start` also waits
    for /readyz to answer 200).

    As a context manager, leaving the block stops it (SIGTERM, or SIGKILL when
    the block raised) and removes its log (see :meth:`cleanup`).
    """

    def __init__(self, redis_url: str, gateway_id: str, **settings: Any) -> None:
        self.gateway_id = gateway_id
        self.port = int(settings.pop("port", 0))
        http_port = settings.pop("http_port", None)
        self.http_port: int | None = None if http_port is None else int(http_port)
        self.env = dict(os.environ)
        self.env.update(
            {
                "CHAT_LISTEN": f"127.0.0.1:{self.port}",
                "CHAT_REDIS_URL": redis_url,
                "CHAT_GATEWAY_ID": gateway_id,
                "CHAT_LOG_FORMAT": "json",
                "CHAT_LOG_LEVEL": "info",
                "PYTHONUNBUFFERED": "1",  # a traceback reaches the log before the exit
                # Tests connect many clients from 127.0.0.1; the per-address tests
                # pass the limits they test.
                "CHAT_MAX_CONNECTIONS_PER_IP": "100000",
                "CHAT_CONNECT_RATE_PER_IP": "100000",
                "CHAT_CONNECT_BURST_PER_IP": "100000",
            }
        )
        if self.http_port is not None:
            self.env["CHAT_HTTP_LISTEN"] = f"127.0.0.1:{self.http_port}"
        for name, value in settings.items():
            self.env["CHAT_" + name.upper()] = str(value)
        fd, path = tempfile.mkstemp(prefix=f"chat-{gateway_id}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(path)
        self.process: Process | None = None

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        """The running gateway (``pid``, ``poll``, ``send_signal``), or ``None`` before start."""
        return self.process.popen if self.process is not None else None

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def start(self, timeout: float = 15.0, *, wait_ready: bool = True) -> GatewayProcess:
        self.process = Process(
            self.gateway_id,
            [sys.executable, "-m", "services.gateway"],
            env=self.env,
            cwd=REPO,
            log_path=self.log_path,
        )
        started = self.wait_for_event("gateway.started", timeout)
        self.port = int(started["ports"][0])
        if self.http_port is not None:
            listen = str(self.wait_for_event("http.started", timeout)["listen"])
            self.http_port = int(listen.rsplit(":", 1)[1])
        if wait_ready:
            # Listening is not enough: a client arriving before the first Redis
            # connection would (correctly) be told chat is unavailable.
            self.wait_for_event("redis.reasserted", timeout)
            if self.http_port is not None:
                port = self.http_port
                wait_until(
                    lambda: http_get(port, "/readyz")[0] == 200,
                    timeout,
                    f"{self.gateway_id} /readyz 200",
                    process=self.process,
                )
        return self

    @property
    def incarnation(self) -> str:
        """This process's identity in Redis (its id plus a per-process token), as
        it logged at start."""
        return str(self.wait_for_event("gateway.started")["incarnation"])

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def events(self) -> list[dict[str, Any]]:
        """Every log line parsed as JSON (raises if one is not JSON)."""
        return [json.loads(line) for line in self.log_lines() if line.strip()]

    def records(self) -> list[dict[str, Any]]:
        """Every log line that is a JSON object (others, such as a traceback, skipped)."""
        return self.process.records() if self.process is not None else []

    def tail(self, n: int = 60) -> str:
        """The last ``n`` log lines, for a failure message."""
        return self.process.tail(n) if self.process is not None else f"  {self.gateway_id}: not started"

    def wait_for_event(self, event: str, timeout: float = 15.0, **fields: Any) -> dict[str, Any]:
        """The first log event ``event`` with these ``fields`` (from the start of the log).

        Raises :class:`TimeoutError`, or :class:`RuntimeError` when the gateway exits first.
        """
        assert self.process is not None, "not started"
        return self.process.wait_for_event(event, timeout, **fields)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()

    def wait(self, timeout: float = 20.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (a graceful drain), SIGKILL after ``timeout``; the exit status."""
        if self.process is None:
            return None
        return self.process.stop(signal.SIGTERM, timeout)

    def cleanup(self) -> None:
        """Kill it if it still runs; remove its log unless KEEP_GATEWAY_LOGS is set."""
        self.kill()
        if not os.environ.get(KEEP_LOGS_VARIABLE):
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.stop()
        self.cleanup()
