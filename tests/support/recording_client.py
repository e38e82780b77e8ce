"""A lean chat client for load tests: a reader task of its own records every line.

:class:`~tests.support.chat_client.ChatClient` reads only while a test waits on
it.  A test with dozens of clients that all send and receive at once needs each
one read continuously (a client that is not read would eventually be
disconnected as a slow consumer), and its lines looked at as they arrive rather
than rescanned: :meth:`RecordingClient.record` appends each line and hands it to
an optional callback.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import trio

RECEIVE_BYTES = 65536


class RecordingClient:
    """One TCP connection to a gateway.  Run :meth:`record` in a nursery, then
    :meth:`join`; close it with :meth:`aclose` (also when the test fails)."""

    def __init__(
        self, stream: trio.SocketStream, on_line: Callable[[str], None] | None = None
    ) -> None:
        self.stream = stream
        self.on_line = on_line
        self.lines: list[str] = []
        self.nick: str | None = None
        self.eof = False  # the server closed the connection (or it broke)
        self.last_line_at = trio.current_time()
        self._buffer = b""

    @classmethod
    async def connect(
        cls, port: int, on_line: Callable[[str], None] | None = None, host: str = "127.0.0.1"
    ) -> RecordingClient:
        return cls(await trio.open_tcp_stream(host, port), on_line)

    async def record(self) -> None:
        """Read until the server closes the connection (or until cancelled)."""
        try:
            while data := await self.stream.receive_some(RECEIVE_BYTES):
                *complete, self._buffer = (self._buffer + data).split(b"\n")
                for raw in complete:
                    line = raw.rstrip(b"\r").decode("utf-8", errors="replace")
                    self.lines.append(line)
                    if self.on_line is not None:
                        self.on_line(line)
                if complete:
                    self.last_line_at = trio.current_time()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        self.eof = True

    async def send(self, line: str) -> None:
        await self.stream.send_all(line.encode() + b"\n")

    async def join(self, nick: str, timeout: float = 15.0) -> None:
        """Choose ``nick``; returns once the welcome and the client's own join line
        arrived (it is then a member of the default room on every gateway's view)."""
        welcome = re.compile(rf"^== welcome, {re.escape(nick)}!")
        joined = re.compile(rf"^#\S+ -- {re.escape(nick)} joined the chat!$")
        await self.send(nick)
        checked = 0
        got_welcome = got_join = False
        with trio.fail_after(timeout):
            while not (got_welcome and got_join):
                if self.eof:
                    raise EOFError(f"{nick}: connection closed while joining: {self.lines[-5:]}")
                for line in self.lines[checked:]:
                    got_welcome = got_welcome or bool(welcome.search(line))
                    got_join = got_join or bool(joined.search(line))
                checked = len(self.lines)
                await trio.sleep(0.01)
        self.nick = nick

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)
