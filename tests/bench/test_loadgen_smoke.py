"""Smoke test of the benchmark: a few clients for about two seconds, against ngircd and ours.

Each run goes through the whole runner (servers started on free ports, clients
connected, join announcements settled, one timed broadcast, a two-second
measurement window, everything stopped), and the counts must be exact: no
loss, no duplicates, one latency sample per delivery.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench.loadgen import WindowSpec, is_verified, message_text, schedule
from bench.protocols import ChatDialect, HandshakeError, IrcDialect
from bench.runner import run_system
from bench.scenarios import Scenario

TINY = Scenario(
    name="smoke",
    description="smoke test",
    clients=6,
    gateways=2,
    senders=3,
    rate=10,
    duration_s=2.0,
    drain_s=5.0,
    workers=2,
    connect_timeout_s=10.0,
)


def _check(result: dict[str, Any], fanout: int) -> None:
    assert result["connect"] == {**result["connect"], "ready": TINY.clients, "failed": 0}
    assert result["broadcast"]["lost"] == 0
    assert result["broadcast"]["received"] == fanout
    m = result["measure"]
    assert m["messages_sent"] == 20  # 10 msgs/s for 2 s
    assert m["expected"] == 20 * fanout
    assert m["received"] == m["expected"]
    assert m["lost"] == 0
    assert m["excess"] == 0
    assert m["verified_clients"] == TINY.clients
    assert m["verified_gaps"] == 0
    assert m["verified_dups_or_reordered"] == 0
    assert m["verified_missing_tail"] == 0
    assert m["latency"]["samples"] == m["expected"]
    assert 0 <= m["latency"]["p50_ms"] <= m["latency"]["p99_ms"] <= m["latency"]["max_ms"]
    assert m["latency"]["max_ms"] < 2000
    assert m["n_errors"] == 0
    assert m["cpu"]["loadgen"]["seconds"] > 0


def test_against_our_gateways() -> None:
    result = run_system("ours", TINY, log=lambda _: None)
    _check(result, fanout=TINY.clients)  # our chat echoes a line to its sender too
    assert result["measure"]["cpu"]["gateway"]["seconds"] > 0
    assert result["memory"]["gateway"]["after_bytes"] > 0


def test_against_ngircd() -> None:
    result = run_system("ngircd", TINY, log=lambda _: None)
    _check(result, fanout=TINY.clients - 1)  # IRC does not echo to the sender
    assert result["measure"]["cpu"]["ngircd"]["seconds"] >= 0


def test_schedule_interleaves_senders_at_the_total_rate() -> None:
    spec = WindowSpec("Bz0", duration_s=1.0, rate=4, senders=(7, 8), verify_fraction=1, drain_s=1)
    assert schedule(spec, 0) == [(0, 0), (250_000_000, 1), (500_000_000, 0), (750_000_000, 1)]
    broadcast = WindowSpec("Bb0", duration_s=0, rate=0, senders=(1, 2), verify_fraction=1, drain_s=1)
    assert schedule(broadcast, 5) == [(5, 0), (5, 1)]


def test_verified_sample_is_spread_and_sized() -> None:
    chosen = [i for i in range(10_000) if is_verified(i, 0.05)]
    assert 400 < len(chosen) < 600
    assert {i % 2 for i in chosen} == {0, 1}  # both gateways of a two-gateway run
    assert all(is_verified(i, 1.0) for i in range(10))


def test_message_text_is_padded_and_parseable() -> None:
    text = message_text(b"Bzab12 ", 12, 345, 1_700_000_000_000_000, 64)
    assert len(text) == 64
    assert text.startswith(b"Bzab12 12.345.1700000000000000 x")


def test_chat_handshake_waits_for_prompt_then_welcome() -> None:
    d = ChatDialect()
    state, step = d.handshake_line("b1", 0, b"== welcome to the chat on gateway g1")
    assert not step.ready and not step.send
    state, step = d.handshake_line("b1", state, b"?? Choose a nickname:")
    assert step.send == b"b1\n"
    state, step = d.handshake_line("b1", state, b"== welcome, b1! You are in #lobby.")
    assert not step.ready  # the join into #lobby may still fail
    state, step = d.handshake_line("b1", state, b"#lobby -- b0 joined the chat!")
    assert not step.ready
    state, step = d.handshake_line("b1", state, b"#lobby -- b1 joined the chat!")
    assert step.ready
    with pytest.raises(HandshakeError):
        d.handshake_line("b1", 1, b'!! nickname "b1" is taken, choose another')


def test_chat_handshake_retries_when_the_join_fails() -> None:
    d = ChatDialect()
    state, step = d.handshake_line("b1", 0, b"?? Choose a nickname:")
    state, step = d.handshake_line("b1", state, b"== welcome, b1! You are in #lobby.")
    unavailable = b"!! chat is unavailable right now (cannot reach Redis); try again shortly"
    state, step = d.handshake_line("b1", state, unavailable)
    assert step.retry and not step.ready
    state, step = d.handshake_line("b1", state, b"?? Choose a nickname:")
    assert step.send == b"b1\n"


def test_irc_handshake_registers_joins_and_answers_ping() -> None:
    d = IrcDialect("#bench")
    assert d.on_connect("b1") == b"NICK b1\r\nUSER b1 0 * :bench\r\n"
    state, step = d.handshake_line("b1", 0, b"PING :bench.irc")
    assert step.send == b"PONG :bench.irc\r\n"
    state, step = d.handshake_line("b1", state, b":bench.irc 001 b1 :Welcome")
    assert step.send == b"JOIN #bench\r\n"
    state, step = d.handshake_line("b1", state, b":bench.irc 366 b1 #bench :End of NAMES list")
    assert step.ready
    assert d.frame(b"hi") == b"PRIVMSG #bench :hi\r\n"
    with pytest.raises(HandshakeError):
        d.handshake_line("b1", 0, b":bench.irc 433 * b1 :Nickname already in use")
