"""A blocking raw TCP chat client for synchronous tests: lines in, lines out, every
read with a deadline.  Trio tests use :class:`tests.support.chat_client.ChatClient`."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable


class LineClient:
    """A raw TCP chat client: lines in, lines out, every read with a deadline."""

    def __init__(
        self, port: int, host: str = "127.0.0.1", timeout_s: float = 5.0, source: str | None = None
    ) -> None:
        # ``source``: the client's own address (any 127.x.y.z is distinct on Linux).
        self.sock = socket.create_connection(
            (host, port), timeout=timeout_s, source_address=(source, 0) if source else None
        )
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


def connect_client(port: int, timeout_s: float = 15.0, source: str | None = None) -> LineClient:
    """Connect and wait for the nickname prompt, retrying while the proxy has no server yet."""
    deadline = time.monotonic() + timeout_s
    while True:
        client = None
        try:
            client = LineClient(port, source=source)
            client.read_until(lambda line: line.startswith("?? "), 5.0, "the nickname prompt")
            return client
        except (AssertionError, OSError):
            if client is not None:
                client.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
