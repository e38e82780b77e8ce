"""Blocking checks of servers on this machine, for supervisors, the benchmark and tests.

Each answers one question within a deadline and never raises for a server that is
down, slow or speaking something else: it answers "no" (``False``, ``None``, an
empty list) instead, so a caller can poll it until the answer changes.

- :func:`free_port` / :func:`free_ports` / :func:`port_is_free`: loopback ports;
- :func:`redis_ping`: does a Redis server answer ``PING``;
- :func:`http_get`: status and body of one ``GET`` (``/readyz``, ``/metrics``);
- :func:`haproxy_stat`: HAProxy's ``show stat`` rows from its runtime API socket.

Trio code calls them with :func:`trio.to_thread.run_sync`.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports that were free a moment ago (held open together while chosen)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(n):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a listener could bind ``host:port`` now (``SO_REUSEADDR``, as servers set it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _resp(*parts: str) -> bytes:
    out = [f"*{len(parts)}\r\n".encode()]
    for part in parts:
        data = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def redis_ping(
    port: int, host: str = "127.0.0.1", *, password: str | None = None, timeout_s: float = 1.0
) -> bool:
    """Whether the Redis server at ``host:port`` answers ``PING`` with ``PONG``
    (after ``AUTH password`` when one is given).  ``False`` while it is loading."""
    commands = [_resp("PING")] if password is None else [_resp("AUTH", password), _resp("PING")]
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(b"".join(commands))
            data = b""
            while data.count(b"\r\n") < len(commands):
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                data += chunk
    except OSError:
        return False
    return data.split(b"\r\n")[len(commands) - 1] == b"+PONG"


def http_get(
    port: int, path: str, host: str = "127.0.0.1", *, timeout_s: float = 2.0
) -> tuple[int | None, str]:
    """``(status, body)`` of ``GET path``; ``(None, "")`` when nothing sensible answered."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return None, ""
    finally:
        conn.close()


def haproxy_stat(socket_path: Path, *, timeout_s: float = 2.0) -> list[dict[str, str]]:
    """HAProxy's ``show stat`` as one dict per row (``pxname``, ``svname``, ``status``...),
    from its runtime API socket; ``[]`` when the socket does not answer."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(str(socket_path))
            sock.sendall(b"show stat\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except OSError:
        return []
    lines = b"".join(chunks).decode("utf-8", "replace").strip().splitlines()
    if not lines or not lines[0].startswith("# "):
        return []
    header = lines[0][2:].split(",")
    return [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]
