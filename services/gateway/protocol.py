"""The line protocol, without I/O: framing, validation, parsing, formatting.

Nothing here touches a socket, so all of it is unit-tested with plain bytes.
``docs/PROTOCOL.md`` is the user-facing description of the same rules.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Name rules live in services.common (configuration and the admin tool use them
# too); re-exported here for the gateway's modules.
from services.common.names import NICK_MAX as NICK_MAX
from services.common.names import ROOM_MAX as ROOM_MAX
from services.common.names import fold_nick as fold_nick
from services.common.names import normalize_room as normalize_room
from services.common.names import validate_nick as validate_nick
from services.common.names import validate_room as validate_room

# -- framing ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Line:
    """A complete, valid line of text (ending removed, trimmed, tabs as spaces)."""

    text: str


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line that must not be used; ``reason`` is one of the ``REJECT_*`` constants."""

    reason: str


REJECT_TOO_LONG = "too_long"
REJECT_BAD_UTF8 = "bad_utf8"
REJECT_CONTROL = "control_chars"

# C0 controls except TAB, DEL, and C1 controls.  ESC (\x1b) is in C0 and the
# 8-bit CSI (\x9b) is in C1, so no terminal escape sequence gets through.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")

# Control (Cc), format (Cf: bidirectional overrides and isolates, zero-width
# characters, U+FEFF, the soft hyphen), line and paragraph separators (Zl, Zp)
# and lone surrogates (Cs, which JSON can carry but UTF-8 cannot).
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
# Every code point of those categories lies in these ranges (Unicode 14 and 15;
# a test checks them against the running Python's unicodedata), so the table
# that maps each to its marker is built at import from a few thousand lookups.
_INVISIBLE_RANGES = (
    (0x0000, 0x001F), (0x007F, 0x009F), (0x00AD, 0x00AD), (0x0600, 0x0605), (0x061C, 0x061C),
    (0x06DD, 0x06DD), (0x070F, 0x070F), (0x0890, 0x0891), (0x08E2, 0x08E2), (0x180E, 0x180E),
    (0x200B, 0x200F), (0x2028, 0x202E), (0x2060, 0x206F), (0xD800, 0xDFFF), (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB), (0x110BD, 0x110BD), (0x110CD, 0x110CD), (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0000, 0xE007F),
)
_MARKERS = {
    chr(cp): f"<U+{cp:04X}>"
    for first, last in _INVISIBLE_RANGES
    for cp in range(first, last + 1)
    if unicodedata.category(chr(cp)) in _INVISIBLE_CATEGORIES
}
# The ranges as one regex class (a superset of the markers' keys), captured so
# that split() returns them between the text around them.
_CANDIDATES = re.compile(
    "(["
    + "".join(
        re.escape(chr(first)) + ("-" + re.escape(chr(last)) if last > first else "")
        for first, last in _INVISIBLE_RANGES
    )
    + "])"
)


def sanitize(text: str) -> str:
    """``text`` with every invisible or bidirectional control character made
    visible as ``<U+XXXX>`` (docs/PROTOCOL.md, "What you see").

    Every line to a client goes through it (the formatting functions here call
    it), whatever the text's origin: a client, another gateway, an operator or a
    malformed bus message.  The result always encodes as UTF-8 and never holds a
    line break, a terminal escape or a direction change.
    """
    if text.isprintable():  # the common case: nothing to do (a space is printable)
        return text
    parts = _CANDIDATES.split(text)
    if len(parts) == 1:  # not printable for another reason (a non-ASCII space)
        return text
    parts[1::2] = [_MARKERS.get(ch, ch) for ch in parts[1::2]]
    return "".join(parts)


class LineFramer:
    """Splits a byte stream into lines of at most ``max_line_bytes``.

    Bounds memory: it never buffers more than ``max_line_bytes`` plus one read.
    A line over the limit yields one ``BadLine(REJECT_TOO_LONG)`` and everything
    up to its newline is discarded, so no part of it is ever used.
    """

    __slots__ = ("_buffer", "_discarding", "max_line_bytes")

    def __init__(self, max_line_bytes: int = 4096) -> None:
        self.max_line_bytes = max_line_bytes
        self._buffer = bytearray()
        self._discarding = False

    def feed(self, data: bytes | bytearray) -> list[Line | BadLine]:
        out: list[Line | BadLine] = []
        buf = self._buffer
        buf += data
        start = 0
        limit = self.max_line_bytes
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            if self._discarding:
                self._discarding = False
            else:
                stop = end - 1 if end > start and buf[end - 1] == 0x0D else end
                if stop - start > limit:
                    out.append(BadLine(REJECT_TOO_LONG))
                else:
                    event = decode_line(bytes(buf[start:stop]))
                    if event is not None:
                        out.append(event)
            start = end + 1
        del buf[:start]
        if not self._discarding and len(buf) > limit + 1:
            # limit + 1 leaves room for a "\r" that may precede the coming "\n".
            out.append(BadLine(REJECT_TOO_LONG))
            self._discarding = True
        if self._discarding:
            buf.clear()
        return out

    @property
    def pending_bytes(self) -> int:
        """Bytes of an unfinished line (0 while discarding an overlong one)."""
        return len(self._buffer)


def decode_line(raw: bytes) -> Line | BadLine | None:
    """Validate one line's bytes (no ending).  ``None`` for a blank line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return BadLine(REJECT_BAD_UTF8)
    if _CONTROL.search(text):
        return BadLine(REJECT_CONTROL)
    text = text.replace("\t", " ").strip(" ")
    if not text:
        return None
    return Line(text)


# -- commands -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    arg: str


def parse_command(text: str) -> Command | None:
    """``/name rest`` to ``Command("name", "rest")``; ``None`` for a chat line.

    A line starting with ``//`` is chat that starts with ``/`` (the first ``/``
    is removed by :func:`chat_text`).
    """
    if not text.startswith("/") or text.startswith("//"):
        return None
    name, _, arg = text[1:].partition(" ")
    return Command(name.lower(), arg.strip())


def chat_text(text: str) -> str:
    return text[1:] if text.startswith("//") else text


# -- server lines ---------------------------------------------------------------

CRLF = "\r\n"


def info(text: str) -> bytes:
    return f"== {sanitize(text)}{CRLF}".encode()


def prompt(text: str) -> bytes:
    return f"?? {sanitize(text)}{CRLF}".encode()


def error(text: str) -> bytes:
    return f"!! {sanitize(text)}{CRLF}".encode()


def chat_line(room: str, nick: str, text: str) -> bytes:
    return f"{room} <{sanitize(nick)}> {sanitize(text)}{CRLF}".encode()


def action_line(room: str, nick: str, text: str) -> bytes:
    return f"{room} * {sanitize(nick)} {sanitize(text)}{CRLF}".encode()


def event_line(room: str, text: str) -> bytes:
    return f"{room} -- {sanitize(text)}{CRLF}".encode()


def private_line(recipient: str, sender: str, text: str) -> bytes:
    return f"@{sanitize(recipient)} <{sanitize(sender)}> {sanitize(text)}{CRLF}".encode()


def publication_line(room: str, kind: str, nick: str, text: str, *, history: bool = False) -> bytes:
    """The line every local member of ``room`` gets for one publication (formatted
    once per publication, the same bytes for all), or its history replay."""
    if kind == "msg":
        if history:
            return f"{room} (history) <{sanitize(nick)}> {sanitize(text)}{CRLF}".encode()
        return chat_line(room, nick, text)
    if kind == "act":
        if history:
            return f"{room} (history) * {sanitize(nick)} {sanitize(text)}{CRLF}".encode()
        return action_line(room, nick, text)
    if kind == "join":
        return event_line(room, f"{nick} joined the chat!")
    if kind == "leave":
        suffix = f" ({text})" if text else ""
        return event_line(room, f"{nick} left the chat!{suffix}")
    if kind == "enter":
        return event_line(room, f"{nick} joined {room}")
    if kind == "part":
        return event_line(room, f"{nick} left {room}")
    if kind == "nick":
        return event_line(room, f"{nick} is now known as {text}")
    return event_line(room, f"{nick}: {text}")


def missed_line(room: str, count: int) -> bytes:
    """Told once per gap that a Redis fault made unrecoverable (never silently)."""
    return error(f"{count} lines in {room} may have been missed: they were lost in a Redis fault")


UNAVAILABLE = error("chat is unavailable right now (cannot reach Redis); try again shortly")
NO_ROOM = error("you are in no room; /join #room to chat")
NOT_DELIVERED = error("not delivered: chat is unavailable right now; your line was not sent")
REDIS_FULL = error("chat is unavailable right now (Redis is out of memory); try again shortly")
NOT_DELIVERED_FULL = error("not delivered: Redis is out of memory; your line was not sent")


def unavailable(redis_error: str) -> bytes:
    """The line telling a client that what it asked needs Redis, which refused or
    could not be reached (``redis_error``: the error's text)."""
    return REDIS_FULL if redis_error.startswith("OOM") else UNAVAILABLE


def not_delivered(redis_error: str) -> bytes:
    """The line telling a client its line was not sent, for that Redis error."""
    return NOT_DELIVERED_FULL if redis_error.startswith("OOM") else NOT_DELIVERED
NOT_CONFIRMED = error(
    "not confirmed: Redis did not say whether your line was sent; it may not have been delivered"
)

NICK_PROMPT = prompt("Choose a nickname:")


def password_prompt(nick: str) -> bytes:
    """Asked after a registered nickname was chosen alone at the nickname prompt."""
    return prompt(f"{nick} is registered; enter its password (or /back to choose another nickname):")

REJECT_MESSAGES = {
    REJECT_TOO_LONG: "line too long (max {max} bytes); it was not sent",
    REJECT_BAD_UTF8: "line is not valid UTF-8; it was not sent",
    REJECT_CONTROL: "line contains control characters; it was not sent",
}


def reject_line(reason: str, max_line_bytes: int) -> bytes:
    return error(REJECT_MESSAGES[reason].format(max=max_line_bytes))


HELP_LINES = (
    "commands:",
    "  /help               this list",
    "  /who [#room]        who is online (or in a room)           e.g. /who #dev",
    "  /join #room         join (or create) a room and talk there e.g. /join #dev",
    "  /part [#room]       leave a room (default: the current one) e.g. /part #dev",
    "  /rooms              the largest rooms, and how many        e.g. /rooms",
    "  /msg NICK TEXT      a private message                      e.g. /msg bob hi",
    "  /me ACTION          an action in the current room          e.g. /me waves",
    "  /nick NEW           change your nickname                   e.g. /nick alice2",
    "  /register PASSWORD  make your nickname yours (an account)  e.g. /register s3cret-pw",
    "  /identify [NICK] PASSWORD",
    "                      log in to a registered nickname        e.g. /identify alice s3cret-pw",
    "  /password OLD NEW   change your account's password         e.g. /password s3cret-pw n3w-pw",
    "  /quit [reason]      leave the chat                         e.g. /quit bye all",
    "plain lines go to your current room (the one you joined last);",
    "start a line with // to send one that begins with /;",
    "a registered nickname logs in at the nickname prompt with: NICK PASSWORD",
)
