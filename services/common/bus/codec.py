"""What travels on the bus's channels, encoded and decoded in one place.

Room publications travel as ``b"<epoch> <seq> <room> <json>"``, framed by the
scripts (``lua/_rooms.lua``, ``publish_room``).  The epoch changes when Redis
loses its data (a restart), so sequence numbers restart from 1 under a new
epoch instead of looking like duplicates.  The JSON envelope is
``{"k": kind, "n": nick, "x": text, "g": origin gateway, "t": unix time,
"i": publication id}``: ``k`` is ``msg``, ``act``, ``join``, ``leave``, ``enter``,
``part`` or ``nick`` (for ``nick`` the new nickname is in ``x``); the id, unique
per gateway process, lets a sender find out whether a line whose reply it never
got was published (``Bus.resolve``; the resolve script looks for the compact
``"i":"<id>"``).  The reap script builds its ``leave`` envelopes in Lua with
the same fields.

Node channels (one per gateway) carry :data:`NodeMessage` and the broadcast
channel carries :data:`BroadcastMessage`, each a JSON object whose ``t`` names
its type (see docs/OPERATIONS.md, section 3).

Every decoder raises :class:`MalformedMessage` (a ``ValueError``) for anything
it cannot take as the documented form, :class:`UnknownMessage` (a subclass) for
a well-formed message of a type this version does not know, and nothing else,
whatever the bytes (non-JSON, invalid UTF-8, nesting deep enough to exhaust the
parser, wrong types, missing fields, payloads over :data:`MAX_PAYLOAD_BYTES`,
strings over :data:`MAX_TEXT_CHARS` or names over :data:`MAX_NAME_CHARS`).  A
decoded string may still hold any character: formatting for a client makes it
safe (``protocol.sanitize``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar

CHAT_KINDS = frozenset({"msg", "act"})  # kept in a room's history, replayed on join

# Bounds on what a decoder accepts: far above anything a gateway publishes (a
# line is at most CHAT_MAX_LINE_BYTES, a nickname 32 characters), low enough
# that one forged message cannot fill every member's output buffer.
MAX_PAYLOAD_BYTES = 256 * 1024
MAX_TEXT_CHARS = 64 * 1024
MAX_NAME_CHARS = 256  # nicknames, gateway ids, publication ids, kinds, types
_NAME_FIELDS = frozenset({"k", "n", "g", "i", "t", "to", "from", "nick"})


class MalformedMessage(ValueError):
    """A payload that is not the documented form."""


class UnknownMessage(MalformedMessage):
    """A well-formed node or broadcast message of a type this version does not know
    (a newer gateway may send it): safe to ignore."""

    def __init__(self, message: str, type_name: str) -> None:
        super().__init__(message)
        self.type_name = type_name


def _dumps(value: dict[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _json_object(data: bytes | str) -> dict[str, Any]:
    if len(data) > MAX_PAYLOAD_BYTES:
        raise MalformedMessage(f"payload of {len(data)} bytes (at most {MAX_PAYLOAD_BYTES})")
    try:
        value = json.loads(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise MalformedMessage(f"not JSON: {exc}") from None
    except RecursionError:  # "[[[[..." nested past the parser's stack
        raise MalformedMessage("not JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise MalformedMessage(f"not a JSON object: {type(value).__name__}")
    return value


def _string(obj: dict[str, Any], name: str, default: str | None = None) -> str:
    value = obj.get(name, default)
    if not isinstance(value, str):
        what = "missing" if name not in obj else f"not a string: {type(value).__name__}"
        raise MalformedMessage(f"field {name!r} {what}")
    limit = MAX_NAME_CHARS if name in _NAME_FIELDS else MAX_TEXT_CHARS
    if len(value) > limit:
        raise MalformedMessage(f"field {name!r} has {len(value)} characters (at most {limit})")
    return value


# -- room publications -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Publication:
    """A decoded room publication (the room is its channel's)."""

    epoch: str
    seq: int
    kind: str
    nick: str
    text: str
    gateway: str
    time: float
    id: str = ""


def encode_body(
    kind: str, nick: str, text: str, gateway: str, pub_id: str = "", *, at: float | None = None
) -> str:
    """The JSON envelope of a publication (``at``: its time, now by default)."""
    body: dict[str, Any] = {
        "k": kind, "n": nick, "x": text, "g": gateway,
        "t": round(time.time() if at is None else at, 6),
    }
    if pub_id:
        body["i"] = pub_id
    return _dumps(body)


def encode_publication(epoch: str, seq: int, room: str, body: str) -> bytes:
    """The payload the scripts publish for ``body`` (they frame it in Lua; this is
    the same frame, for tests and tools)."""
    return f"{epoch} {seq} {room} {body}".encode()


def decode_publication(payload: bytes) -> Publication:
    """Parse ``b"<epoch> <seq> <room> <json>"``.  Raises :class:`MalformedMessage`."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MalformedMessage(f"payload of {len(payload)} bytes (at most {MAX_PAYLOAD_BYTES})")
    parts = payload.split(b" ", 3)
    if len(parts) != 4:
        raise MalformedMessage("not '<epoch> <seq> <room> <json>'")
    epoch, seq, room, body = parts
    if not (epoch.isdigit() and seq.isdigit() and room):
        raise MalformedMessage("epoch and sequence must be decimal numbers, the room not empty")
    if len(epoch) > 40 or len(seq) > 20:  # int() refuses numbers of thousands of digits
        raise MalformedMessage("epoch or sequence number too long")
    data = _json_object(body)
    at = data.get("t", 0.0)
    if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
        raise MalformedMessage("field 't' is not a finite number")
    return Publication(
        epoch=epoch.decode(),
        seq=int(seq),
        kind=_string(data, "k"),
        nick=_string(data, "n"),
        text=_string(data, "x", ""),
        gateway=_string(data, "g", ""),
        time=float(at),
        id=_string(data, "i", ""),
    )


# -- node and broadcast messages ----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Canary:
    """A gateway's message to itself, proving its subscriber loop is alive."""

    TYPE: ClassVar[str] = "canary"


@dataclass(frozen=True, slots=True)
class Kick:
    """Disconnect the user ``nick`` (display or folded) if it is on this gateway."""

    TYPE: ClassVar[str] = "kick"
    nick: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class PrivateMessage:
    """A private message for the user whose folded nick is ``to``."""

    TYPE: ClassVar[str] = "pm"
    to: str
    sender: str  # "from" on the wire
    text: str


@dataclass(frozen=True, slots=True)
class Announce:
    """An operator's announcement for every client (broadcast channel)."""

    TYPE: ClassVar[str] = "announce"
    text: str


@dataclass(frozen=True, slots=True)
class BansChanged:
    """The ban list in Redis changed (broadcast channel): every gateway reloads it
    and disconnects its clients that are now banned."""

    TYPE: ClassVar[str] = "bans"


NodeMessage = Canary | Kick | PrivateMessage
BroadcastMessage = Announce | BansChanged


def encode_message(message: NodeMessage | BroadcastMessage) -> str:
    """The JSON text of a node or broadcast message."""
    fields: dict[str, Any]
    match message:
        case Canary() | BansChanged():
            fields = {}
        case Kick(nick=nick, reason=reason):
            fields = {"nick": nick, "reason": reason}
        case PrivateMessage(to=to, sender=sender, text=text):
            fields = {"to": to, "from": sender, "text": text}
        case Announce(text=text):
            fields = {"text": text}
    return _dumps({"t": message.TYPE, **fields})


def decode_node_message(data: bytes | str) -> NodeMessage:
    """A message from a node channel.  Raises :class:`MalformedMessage`
    (:class:`UnknownMessage` for a type this version does not know)."""
    obj = _json_object(data)
    kind = _string(obj, "t")
    if kind == Canary.TYPE:
        return Canary()
    if kind == Kick.TYPE:
        return Kick(nick=_string(obj, "nick"), reason=_string(obj, "reason", ""))
    if kind == PrivateMessage.TYPE:
        return PrivateMessage(
            to=_string(obj, "to"), sender=_string(obj, "from"), text=_string(obj, "text")
        )
    raise UnknownMessage(f"unknown node message type {kind!r}", kind)


def decode_broadcast(data: bytes | str) -> BroadcastMessage:
    """A message from the broadcast channel.  Raises :class:`MalformedMessage`
    (:class:`UnknownMessage` for a type this version does not know)."""
    obj = _json_object(data)
    kind = _string(obj, "t")
    if kind == Announce.TYPE:
        return Announce(text=_string(obj, "text"))
    if kind == BansChanged.TYPE:
        return BansChanged()
    raise UnknownMessage(f"unknown broadcast message type {kind!r}", kind)
