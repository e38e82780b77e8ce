"""Nicknames and room names: what is valid, and when two nicknames are the same.

Shared by the gateway (which enforces the rules on clients), the configuration
(``CHAT_DEFAULT_ROOM`` must be a valid room) and the admin tool (which looks
nicknames up the way the gateway stores them).  ``docs/PROTOCOL.md`` describes
the same rules for users.
"""

from __future__ import annotations

import re

NICK_MAX = 32
_NICK_CHARS = re.compile(r"[A-Za-z0-9_\-\[\]{}\\|^]+")

ROOM_MAX = 32
_ROOM = re.compile(r"#[a-z0-9_.\-]{1,32}")


def validate_nick(nick: str) -> str | None:
    """The reason ``nick`` is not a valid nickname, or ``None`` when it is."""
    if not nick:
        return "a nickname needs at least 1 character"
    if len(nick) > NICK_MAX:
        return f"a nickname has at most {NICK_MAX} characters"
    if not _NICK_CHARS.fullmatch(nick):
        return "use only letters A-Z, digits and _ - [ ] { } \\ | ^"
    if nick[0].isdigit() or nick[0] == "-":
        return "a nickname cannot start with a digit or -"
    return None


# Look-alikes (see docs/PROTOCOL.md, "Nicknames"): after lower-casing, each
# character of a group becomes the group's first one, then letter pairs that
# read as one letter become it.  The targets are never sources, so folding is
# idempotent.  Inspired by the skeletons of Unicode TS #39, for ASCII only.
_LOOKALIKE_CHARS = str.maketrans({"i": "l", "1": "l", "|": "l", "0": "o", "5": "s"})
_LOOKALIKE_PAIRS = (("rn", "m"), ("vv", "w"))


def fold_nick(nick: str) -> str:
    """The identity of a nickname: its look-alike skeleton.

    Two nicknames are the same nickname when their skeletons are equal, so
    ``AIice`` (capital i) cannot be taken while ``alice`` is online, nor ``b0b``
    beside ``Bob``.  Every Redis key and field for a nickname uses this form;
    the nickname as typed is only ever displayed.  Total on any string (``/msg``
    looks up whatever it is given).
    """
    folded = nick.lower().translate(_LOOKALIKE_CHARS)
    for pair, letter in _LOOKALIKE_PAIRS:
        folded = folded.replace(pair, letter)
    return folded


def validate_room(room: str) -> str | None:
    """The reason ``room`` is not a valid room name, or ``None``.

    Rooms are ``#`` followed by 1-32 of lower-case ``a-z 0-9 _ . -``; callers
    lower-case user input first (see :func:`normalize_room`).
    """
    if not _ROOM.fullmatch(room):
        return "a room is # followed by 1-32 of a-z 0-9 _ . -"
    return None


def normalize_room(raw: str) -> str:
    """User input to a room name: lower-cased, ``#`` added when missing."""
    raw = raw.strip().lower()
    return raw if raw.startswith("#") else "#" + raw
