"""Property-based tests (hypothesis) of the sans-I/O line protocol: the framer,
command parsing, name rules, the look-alike skeleton and the sanitiser.

Each property says what holds for *any* input: the framer yields every complete
line once, in order, whatever the chunking, or a ``BadLine`` with a reason, and
never raises; parsing and validation never raise; folding is idempotent and
case-insensitive and merges the documented look-alikes; every formatted server
line is one line of printable UTF-8.
"""

from __future__ import annotations

import string
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.gateway import protocol as p

SETTINGS = settings(deadline=None, database=None, max_examples=300)
LIMIT = 24  # small, so over-long lines are common

# Bytes that matter to a framer: line ends, UTF-8 fragments, controls, tabs.
pieces = st.sampled_from(
    [b"a", b"hello", b" ", b"\t", b"\r", b"\n", b"\r\n", b"\n\r", b"\xff", b"\xc3", b"\xc3\xa9",
     "\u202e".encode(), "\u2028".encode(), b"\x1b[2J", b"\x00", b"/join #x", b"//", b"x" * 30]
)
streams = st.lists(pieces | st.binary(max_size=12), max_size=40).map(b"".join)


def expected_events(data: bytes, limit: int) -> list[p.Line | p.BadLine]:
    """What a framer must yield for ``data``: an independent model."""
    *complete, tail = data.split(b"\n")
    out: list[p.Line | p.BadLine] = []
    for raw in complete:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if len(raw) > limit:
            out.append(p.BadLine(p.REJECT_TOO_LONG))
            continue
        event = p.decode_line(raw)
        if event is not None:
            out.append(event)
    if len(tail) > limit + 1:  # reported as soon as it cannot fit, before its end
        out.append(p.BadLine(p.REJECT_TOO_LONG))
    return out


@SETTINGS
@given(streams, st.lists(st.integers(min_value=0, max_value=2000), max_size=10))
def test_framer_yields_every_line_once_in_order_whatever_the_chunks(
    data: bytes, cuts: list[int]
) -> None:
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    framer = p.LineFramer(LIMIT)
    events: list[p.Line | p.BadLine] = []
    for chunk in chunks:
        events += framer.feed(chunk)
        assert framer.pending_bytes <= LIMIT + 1  # memory stays bounded
    assert events == expected_events(data, LIMIT)


@SETTINGS
@given(streams)
def test_every_line_is_clean_text_or_a_reason(data: bytes) -> None:
    for event in p.LineFramer(LIMIT).feed(data):
        if isinstance(event, p.BadLine):
            assert event.reason in p.REJECT_MESSAGES
            assert p.reject_line(event.reason, LIMIT).startswith(b"!! ")
        else:
            text = event.text
            assert text and text == text.strip(" ") and "\t" not in text
            assert not any(unicodedata.category(ch) == "Cc" for ch in text)
            assert len(text.encode()) <= LIMIT


@SETTINGS
@given(st.text(max_size=60))
def test_command_parsing_never_raises(text: str) -> None:
    command = p.parse_command(text)
    if command is None:
        assert not text.startswith("/") or text.startswith("//")
        assert isinstance(p.chat_text(text), str)
    else:
        assert text.startswith("/")
        assert command.name == command.name.lower()
        assert " " not in command.name
        assert command.arg == command.arg.strip()


@SETTINGS
@given(st.text(max_size=40))
def test_name_rules_never_raise(raw: str) -> None:
    problem = p.validate_nick(raw)
    if problem is None:
        assert raw.isascii() and raw.isprintable() and 1 <= len(raw) <= p.NICK_MAX
    room = p.normalize_room(raw)
    assert room.startswith("#")
    if p.validate_room(room) is None:
        assert room == room.lower() and room.isascii()
    assert isinstance(p.fold_nick(raw), str)


# -- invisible characters ----------------------------------------------------------------
INVISIBLE = [
    "\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069",
    "\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u2028", "\u2029", "\ufeff", "\u00ad",
    "\u061c", "\u180e", "\x1b", "\x85", "\n", "\r", "\x00",
]


@pytest.mark.parametrize("ch", INVISIBLE)
def test_invisible_characters_are_rejected_in_nicknames(ch: str) -> None:
    assert p.validate_nick(f"al{ch}ice")
    assert p.validate_nick(f"alice{ch}")


@pytest.mark.parametrize("ch", INVISIBLE)
def test_invisible_characters_are_made_visible_in_every_server_line(ch: str) -> None:
    marker = f"<U+{ord(ch):04X}>"
    for line in (
        p.chat_line("#r", "bob", f"a{ch}b"),
        p.action_line("#r", "bob", f"a{ch}b"),
        p.event_line("#r", f"a{ch}b"),
        p.private_line("bob", "al", f"a{ch}b"),
        p.publication_line("#r", "leave", "bob", f"a{ch}b"),
        p.publication_line("#r", "msg", "bob", f"a{ch}b", history=True),
        p.info(f"announcement: a{ch}b"),
        p.error(f"disconnected: kicked by an operator: a{ch}b"),
    ):
        assert marker in line.decode()
        assert ch.encode() not in line[:-2]


@SETTINGS
@given(st.text(max_size=40), st.text(max_size=20))
def test_formatted_lines_are_one_line_of_printable_utf8(text: str, nick: str) -> None:
    for kind in ("msg", "act", "join", "leave", "enter", "part", "nick", "other"):
        line = p.publication_line("#r", kind, nick, text)
        body = line.decode("utf-8")  # lone surrogates too are made visible
        assert body.endswith("\r\n")
        assert "\n" not in body[:-2] and "\r" not in body[:-2]
        assert all(unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp", "Cs")
                   for ch in body[:-2])
    assert p.sanitize(p.sanitize(text)) == p.sanitize(text)


# -- look-alike nicknames ------------------------------------------------------------------
NICK_CHARS = string.ascii_letters + string.digits + "_-[]{}\\|^"
nicks = st.text(NICK_CHARS, min_size=1, max_size=p.NICK_MAX)


@SETTINGS
@given(nicks)
def test_folding_is_idempotent_and_case_insensitive(nick: str) -> None:
    folded = p.fold_nick(nick)
    assert p.fold_nick(folded) == folded
    assert p.fold_nick(nick.upper()) == folded == p.fold_nick(nick.swapcase())
    assert folded.isascii() and len(folded) <= len(nick)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("alice", "AIice"),  # capital i
        ("alice", "ALICE"),
        ("alice", "a1ice"),
        ("alice", "a|ice"),
        ("bob", "b0b"),
        ("Bob", "BOB"),
        ("mike", "rnike"),
        ("will", "vvill"),
        ("jess", "je55"),
        ("Tom", "T0rn"),
        ("x_l1", "x_Il"),
    ],
)
def test_look_alike_pairs_collide(a: str, b: str) -> None:
    assert p.validate_nick(a) is None and p.validate_nick(b) is None
    assert p.fold_nick(a) == p.fold_nick(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [("alice", "bob"), ("alice", "alicia"), ("dave", "david"), ("carol", "karol"), ("ann", "anne"),
     ("mike", "nike"), ("bob_", "bob-"), ("x[1]", "x{1}"), ("will", "wil"), ("sam", "zam")],
)
def test_ordinary_distinct_names_stay_distinct(a: str, b: str) -> None:
    assert p.fold_nick(a) != p.fold_nick(b)


@SETTINGS
@given(nicks, st.sampled_from([("I", "l"), ("1", "l"), ("|", "l"), ("0", "O"), ("5", "S"),
                               ("rn", "m"), ("vv", "w")]))
def test_swapping_a_look_alike_anywhere_keeps_the_identity(nick: str, pair: tuple[str, str]) -> None:
    a, b = pair
    assert p.fold_nick(nick.replace(a, b)) == p.fold_nick(nick) or a not in nick


def test_the_marker_table_covers_every_invisible_code_point_of_this_python() -> None:
    """protocol._INVISIBLE_RANGES is written out for speed; it must hold every
    Cc, Cf, Zl, Zp and Cs code point that the running Python's Unicode knows
    (a newer Unicode adding one fails here: add its range)."""
    covered = {ord(ch) for ch in p._MARKERS}
    wanted = {cp for cp in range(0x110000)
              if unicodedata.category(chr(cp)) in ("Cc", "Cf", "Zl", "Zp", "Cs")}
    assert wanted == covered, sorted(wanted ^ covered)[:20]
