"""A line-oriented test client over a real TCP connection (trio)."""

from __future__ import annotations

import os
import re
import ssl

import trio

DEFAULT_TIMEOUT_S = 10.0


class ChatClient:
    """Reads server lines into ``lines``; ``expect`` waits for a matching one."""

    # Every client a test made, so a fixture can close the ones it forgot.
    open_clients: list[ChatClient] = []

    def __init__(self, stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]) -> None:
        ChatClient.open_clients.append(self)
        self.stream = stream
        self.lines: list[str] = []
        self._buffer = b""
        self._cursor = 0
        self.closed = False
        self.nick: str | None = None

    @classmethod
    async def connect(
        cls, port: int, host: str = "127.0.0.1", *, source: str | None = None
    ) -> ChatClient:
        """Connect to ``host:port``; ``source`` binds the client's own address first
        (on Linux any 127.x.y.z is a distinct loopback source address)."""
        return cls(await trio.open_tcp_stream(host, port, local_address=source))

    @classmethod
    async def connect_tls(
        cls, port: int, context: ssl.SSLContext, host: str = "127.0.0.1",
        server_hostname: str = "localhost", *, source: str | None = None,
    ) -> ChatClient:
        """Connect over TLS (the handshake done), verifying the server with ``context``."""
        raw = await trio.open_tcp_stream(host, port, local_address=source)
        stream = trio.SSLStream(raw, context, server_hostname=server_hostname)
        try:
            await stream.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(raw)
            raise
        return cls(stream)

    @classmethod
    async def join(
        cls, port: int, nick: str, host: str = "127.0.0.1", *,
        tls: ssl.SSLContext | None = None, source: str | None = None,
    ) -> ChatClient:
        """Connect (over TLS with ``tls``) and choose ``nick``; returns once the
        welcome and own join arrived."""
        client = await (cls.connect(port, host, source=source) if tls is None
                        else cls.connect_tls(port, tls, host, source=source))
        await client.send(nick)
        await client.expect(rf"^== welcome, {re.escape(nick)}!")
        await client.expect(rf"^#\S+ -- {re.escape(nick)} joined the chat!$")
        client.nick = nick
        return client

    async def send(self, line: str | bytes) -> None:
        data = line if isinstance(line, bytes) else line.encode() + b"\n"
        await self.stream.send_all(data)

    async def _read_more(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            self.closed = True
            raise EOFError("server closed the connection")
        self._buffer += data
        *complete, self._buffer = self._buffer.split(b"\n")
        for raw in complete:
            self.lines.append(raw.rstrip(b"\r").decode("utf-8", errors="replace"))

    async def expect(self, pattern: str, timeout: float = DEFAULT_TIMEOUT_S) -> str:
        """The next unread line matching ``pattern`` (regex search); lines skipped on
        the way stay in ``lines``.  Fails after ``timeout`` seconds."""
        regex = re.compile(pattern)
        with trio.fail_after(timeout):
            while True:
                while self._cursor < len(self.lines):
                    line = self.lines[self._cursor]
                    self._cursor += 1
                    if regex.search(line):
                        return line
                await self._read_more()

    async def seen(self, pattern: str, timeout: float = DEFAULT_TIMEOUT_S) -> str:
        """A line matching ``pattern`` anywhere in what was received so far or
        arrives within ``timeout``; does not move the ``expect`` cursor."""
        regex = re.compile(pattern)
        checked = 0
        with trio.fail_after(timeout):
            while True:
                for line in self.lines[checked:]:
                    if regex.search(line):
                        return line
                checked = len(self.lines)
                await self._read_more()

    async def read_until_closed(self, timeout: float = DEFAULT_TIMEOUT_S) -> list[str]:
        """Every line until the server closes the connection."""
        with trio.fail_after(timeout):
            while not self.closed:
                try:
                    await self._read_more()
                except (EOFError, trio.BrokenResourceError):
                    self.closed = True
        return self.lines

    async def drain(self, quiet_s: float = 0.0) -> None:
        """Read whatever is already there, without waiting for more than ``quiet_s``."""
        while True:
            with trio.move_on_after(quiet_s):
                await self._read_more()
                continue
            return

    def unread(self) -> list[str]:
        return self.lines[self._cursor :]

    async def aclose(self) -> None:
        await self.stream.aclose()

    @classmethod
    def close_all(cls) -> None:
        """Close every client socket; runs after the test's Trio loop has ended."""
        while cls.open_clients:
            stream = cls.open_clients.pop().stream
            if isinstance(stream, trio.SSLStream):
                stream = stream.transport_stream
            sock = stream.socket
            if sock.fileno() >= 0:
                os.close(sock.detach())
