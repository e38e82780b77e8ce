"""What a bench client says and expects, per server kind, without any I/O.

Two dialects are benchmarked with the same workload:

* ``chat``: this project's line protocol (``docs/PROTOCOL.md``): read the
  greeting and the ``?? `` prompt, send the nickname, wait for ``== welcome``
  and then for the client's own ``#lobby -- NICK joined the chat!``.  The
  gateway sends the welcome once the client has joined the room in Redis, then
  the room's history, then publishes the join; the own join line coming back
  through Redis marks the point from which every message is owed to the client
  live.  When the join fails (``!! chat is unavailable ...``, before any
  welcome) the gateway asks for the nickname again; such a retry is counted.
  Chat lines arrive as ``#lobby <nick> TEXT``.  A sender sees its own line (the
  server echoes through Redis), so each message is owed to all N clients.
* ``irc``: RFC 2812 as spoken by ngircd: ``NICK``/``USER``, wait for ``001``,
  ``JOIN`` one channel, wait for the end of ``NAMES`` (``366``); messages are
  ``PRIVMSG #channel :TEXT``.  IRC does not echo a message to its sender, so each
  message is owed to N - 1 clients.  The server's ``PING`` must be answered.

The handshake is driven line by line (:meth:`Dialect.handshake_line`); once a
client is ready, the load generator only scans bulk reads for the few
``control_markers`` that need attention (errors, ``PING``).
"""

from __future__ import annotations

from dataclasses import dataclass


class HandshakeError(Exception):
    """The server refused the client during the handshake; the message is its line."""


@dataclass(frozen=True, slots=True)
class Step:
    """The outcome of one handshake line: bytes to send, and whether the client is ready."""

    send: bytes = b""
    ready: bool = False
    retry: bool = False  # the server asked again after a transient failure


class Dialect:
    """One server protocol as the load generator speaks it.

    ``echo`` says whether a sender receives its own messages.  ``control_markers``
    are byte strings that, found at the start of a line after the handshake,
    make the load generator look at that line (:meth:`control_line`).
    """

    name = "abstract"
    echo = True
    control_markers: tuple[bytes, ...] = ()

    def on_connect(self, nick: str) -> bytes:
        """Bytes to send as soon as the TCP connection is up."""
        return b""

    def handshake_line(self, nick: str, state: int, line: bytes) -> tuple[int, Step]:
        """Advance the handshake by one received line (ending removed).

        ``state`` starts at 0; returns the new state and what to do.  Raises
        :class:`HandshakeError` when the server refuses the client.
        """
        raise NotImplementedError

    def frame(self, text: bytes) -> bytes:
        """The bytes that send ``text`` as one chat message."""
        raise NotImplementedError

    def control_line(self, line: bytes) -> tuple[bytes, str | None]:
        """React to a line that starts with a control marker.

        Returns bytes to send back (e.g. ``PONG``) and an error description to
        record (or ``None``).
        """
        return b"", None


class ChatDialect(Dialect):
    """This project's protocol: nickname prompt, then plain lines into ``#lobby``."""

    name = "chat"
    echo = True
    control_markers = (b"!! ",)

    _AWAIT_PROMPT = 0
    _AWAIT_WELCOME = 1
    _AWAIT_OWN_JOIN = 2

    def __init__(self, room: str = "#lobby") -> None:
        self.room = room.encode("ascii")

    def handshake_line(self, nick: str, state: int, line: bytes) -> tuple[int, Step]:
        if line.startswith(b"!! "):
            if b"unavailable" in line and state != self._AWAIT_PROMPT:
                return self._AWAIT_PROMPT, Step(retry=True)  # a new prompt follows
            raise HandshakeError(line.decode("utf-8", "replace"))
        if state == self._AWAIT_PROMPT and line.startswith(b"?? "):
            return self._AWAIT_WELCOME, Step(send=nick.encode("ascii") + b"\n")
        if state == self._AWAIT_WELCOME and line.startswith(b"== welcome"):
            return self._AWAIT_OWN_JOIN, Step()
        if (
            state == self._AWAIT_OWN_JOIN
            and line == self.room + b" -- " + nick.encode("ascii") + b" joined the chat!"
        ):
            return state, Step(ready=True)
        return state, Step()

    def frame(self, text: bytes) -> bytes:
        return text + b"\n"

    def control_line(self, line: bytes) -> tuple[bytes, str | None]:
        return b"", line.decode("utf-8", "replace")


# Numerics that end an IRC registration or JOIN attempt.
_IRC_FATAL = frozenset(
    [b"431", b"432", b"433", b"436", b"437", b"403", b"405", b"471", b"473", b"474", b"475"]
)


class IrcDialect(Dialect):
    """RFC 2812 client: register, join one channel, ``PRIVMSG`` it, answer ``PING``."""

    name = "irc"
    echo = False
    control_markers = (b"PING ", b"ERROR ")

    _AWAIT_WELCOME = 0
    _AWAIT_NAMES = 1

    def __init__(self, channel: str = "#bench") -> None:
        self.channel = channel.encode("ascii")

    def on_connect(self, nick: str) -> bytes:
        n = nick.encode("ascii")
        return b"NICK " + n + b"\r\nUSER " + n + b" 0 * :bench\r\n"

    def handshake_line(self, nick: str, state: int, line: bytes) -> tuple[int, Step]:
        if line.startswith(b"PING "):
            return state, Step(send=b"PONG " + line[5:] + b"\r\n")
        if line.startswith(b"ERROR "):
            raise HandshakeError(line.decode("utf-8", "replace"))
        parts = line.split(b" ", 2)
        code = parts[1] if len(parts) > 1 else b""
        if code in _IRC_FATAL:
            raise HandshakeError(line.decode("utf-8", "replace"))
        if state == self._AWAIT_WELCOME and code == b"001":
            return self._AWAIT_NAMES, Step(send=b"JOIN " + self.channel + b"\r\n")
        if state == self._AWAIT_NAMES and code == b"366":
            return state, Step(ready=True)
        return state, Step()

    def frame(self, text: bytes) -> bytes:
        return b"PRIVMSG " + self.channel + b" :" + text + b"\r\n"

    def control_line(self, line: bytes) -> tuple[bytes, str | None]:
        if line.startswith(b"PING "):
            return b"PONG " + line[5:] + b"\r\n", None
        return b"", line.decode("utf-8", "replace")


def dialect_for(name: str) -> Dialect:
    """The dialect called ``name`` (``chat`` or ``irc``); raises ``ValueError`` otherwise."""
    if name == "chat":
        return ChatDialect()
    if name == "irc":
        return IrcDialect()
    raise ValueError(f"unknown dialect {name!r}")
