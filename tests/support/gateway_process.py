"""Gateways as real processes: ``python -m services.gateway`` with CHAT_* settings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.redis_server import free_port

REPO = Path(__file__).resolve().parents[2]


class GatewayProcess:
    """One gateway process.  Its stdout (JSON log lines) goes to ``log_path``."""

    def __init__(self, redis_url: str, gateway_id: str, **settings: Any) -> None:
        self.gateway_id = gateway_id
        self.port = int(settings.pop("port", 0)) or free_port()
        self.env = dict(os.environ)
        self.env.update(
            {
                "CHAT_LISTEN": f"127.0.0.1:{self.port}",
                "CHAT_REDIS_URL": redis_url,
                "CHAT_GATEWAY_ID": gateway_id,
                "CHAT_LOG_FORMAT": "json",
                "CHAT_LOG_LEVEL": "info",
            }
        )
        for name, value in settings.items():
            self.env["CHAT_" + name.upper()] = str(value)
        fd, path = tempfile.mkstemp(prefix=f"chat-{gateway_id}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(path)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0, *, wait_ready: bool = True) -> GatewayProcess:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.gateway"],
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.wait_for_event("gateway.started", timeout)
        if wait_ready:
            # Listening is not enough: a client arriving before the first Redis
            # connection would (correctly) be told chat is unavailable.
            self.wait_for_event("redis.reasserted", timeout)
        return self

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def events(self) -> list[dict[str, Any]]:
        """Every log line parsed as JSON (raises if one is not JSON)."""
        return [json.loads(line) for line in self.log_lines() if line.strip()]

    def wait_for_event(self, event: str, timeout: float = 15.0, **fields: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_lines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("event") == event and all(record.get(k) == v for k, v in fields.items()):
                    return record
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"gateway {self.gateway_id} exited ({self.proc.returncode}) before {event}:\n"
                    + "\n".join(self.log_lines()[-20:])
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {event} {fields} from {self.gateway_id}")
            time.sleep(0.02)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def wait(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def cleanup(self) -> None:
        self.kill()
        if not os.environ.get("KEEP_GATEWAY_LOGS"):
            self.log_path.unlink(missing_ok=True)
