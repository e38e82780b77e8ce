"""Sans-I/O tests of framing, validation and formatting: no sockets."""

from __future__ import annotations

import pytest

from services.gateway import protocol as p


def feed_all(framer: p.LineFramer, *chunks: bytes) -> list[p.Line | p.BadLine]:
    out: list[p.Line | p.BadLine] = []
    for chunk in chunks:
        out += framer.feed(chunk)
    return out


def test_lines_split_on_lf_and_crlf() -> None:
    framer = p.LineFramer()
    assert feed_all(framer, b"hello\r\nworld\n") == [p.Line("hello"), p.Line("world")]


def test_one_recv_is_not_one_message() -> None:
    framer = p.LineFramer()
    events = feed_all(framer, b"hel", b"lo wor", b"ld\r", b"\nsecond", b"\n")
    assert events == [p.Line("hello world"), p.Line("second")]


def test_byte_by_byte_utf8_is_decoded_per_line() -> None:
    framer = p.LineFramer()
    data = "héllo ☃\n".encode()
    events = feed_all(framer, *[data[i : i + 1] for i in range(len(data))])
    assert events == [p.Line("héllo ☃")]


def test_blank_lines_are_ignored_and_spaces_trimmed() -> None:
    framer = p.LineFramer()
    assert feed_all(framer, b"\n  \r\n  hi there \t\n") == [p.Line("hi there")]


def test_tab_becomes_space() -> None:
    assert p.decode_line(b"a\tb") == p.Line("a b")


def test_line_at_limit_is_accepted_and_one_byte_more_is_rejected() -> None:
    framer = p.LineFramer(max_line_bytes=10)
    assert feed_all(framer, b"x" * 10 + b"\r\n") == [p.Line("x" * 10)]
    assert feed_all(framer, b"y" * 11 + b"\n") == [p.BadLine(p.REJECT_TOO_LONG)]


def test_overlong_line_is_rejected_whole_even_across_chunks() -> None:
    framer = p.LineFramer(max_line_bytes=10)
    events = feed_all(framer, b"a" * 8, b"b" * 8, b"c" * 100, b"tail\nnext\n")
    assert events == [p.BadLine(p.REJECT_TOO_LONG), p.Line("next")]


def test_overlong_line_memory_is_bounded() -> None:
    framer = p.LineFramer(max_line_bytes=100)
    for _ in range(1000):
        framer.feed(b"z" * 1000)
    assert framer.pending_bytes == 0
    assert framer.feed(b"\nok\n") == [p.Line("ok")]


def test_overlong_rejected_once_per_line() -> None:
    framer = p.LineFramer(max_line_bytes=4)
    events = feed_all(framer, b"123456", b"789", b"\n")
    assert events == [p.BadLine(p.REJECT_TOO_LONG)]


def test_invalid_utf8_is_rejected() -> None:
    framer = p.LineFramer()
    assert framer.feed(b"\xff\xfeabc\nfine\n") == [p.BadLine(p.REJECT_BAD_UTF8), p.Line("fine")]


@pytest.mark.parametrize(
    "raw",
    [b"\x1b[31mred", b"bell\x07", b"nul\x00", b"del\x7f", "c1\u009b2J".encode(), b"cr\rinside"],
)
def test_control_characters_and_escapes_are_rejected(raw: bytes) -> None:
    assert p.decode_line(raw) == p.BadLine(p.REJECT_CONTROL)


@pytest.mark.parametrize("nick", ["alice", "Bob", "a", "x" * 32, "_under", "[a]{b}|c^d\\e", "a-1"])
def test_valid_nicknames(nick: str) -> None:
    assert p.validate_nick(nick) is None


@pytest.mark.parametrize(
    "nick", ["", "x" * 33, "1abc", "-abc", "has space", "ünï", "a.b", "<x>", "a#b", "a:b"]
)
def test_invalid_nicknames(nick: str) -> None:
    assert p.validate_nick(nick)


def test_nick_folding_is_case_insensitive() -> None:
    assert p.fold_nick("AlIcE") == p.fold_nick("alice")


def test_room_rules() -> None:
    assert p.validate_room("#lobby") is None
    assert p.validate_room("#a.b-c_1") is None
    assert p.validate_room("lobby")
    assert p.validate_room("#")
    assert p.validate_room("#" + "x" * 33)
    assert p.validate_room("#Upper")
    assert p.normalize_room(" Dev ") == "#dev"


def test_commands_parse() -> None:
    assert p.parse_command("/WHO") == p.Command("who", "")
    assert p.parse_command("/quit  gone fishing ") == p.Command("quit", "gone fishing")
    assert p.parse_command("hello") is None
    assert p.parse_command("//not a command") is None
    assert p.chat_text("//not a command") == "/not a command"


def test_server_line_forms() -> None:
    assert p.info("hi") == b"== hi\r\n"
    assert p.prompt("nick?") == b"?? nick?\r\n"
    assert p.error("bad") == b"!! bad\r\n"
    assert p.chat_line("#lobby", "alice", "hello") == b"#lobby <alice> hello\r\n"
    assert p.action_line("#lobby", "alice", "waves") == b"#lobby * alice waves\r\n"
    assert p.event_line("#lobby", "alice joined the chat!") == b"#lobby -- alice joined the chat!\r\n"


def test_reject_messages_name_the_limit() -> None:
    assert b"4096" in p.reject_line(p.REJECT_TOO_LONG, 4096)
    assert p.reject_line(p.REJECT_BAD_UTF8, 10).startswith(b"!! ")


def test_sanitize_makes_controls_visible() -> None:
    assert p.sanitize("a\x1b[2Jb\x07") == "a<U+001B>[2Jb<U+0007>"
