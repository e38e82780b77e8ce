"""The outbox on a real socket pair: direct writes, coalescing, the byte cap."""

from __future__ import annotations

import socket

import pytest

from services.gateway.outbox import Outbox


@pytest.fixture
def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_queued_messages_leave_in_one_write_without_the_writer(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    outbox = Outbox(1024, lambda: None)
    for i in range(5):
        assert outbox.queue(f"m{i}\n".encode())
    assert outbox.flush_now(a.fileno())
    assert b.recv(100) == b"m0\nm1\nm2\nm3\nm4\n"
    assert outbox.size == 0
    assert outbox.take() == b""


def test_what_the_socket_cannot_take_is_left_for_the_writer(pair) -> None:  # type: ignore[no-untyped-def]
    a, _b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    outbox = Outbox(10**7, lambda: None)
    outbox.queue(b"x" * 2_000_000)
    assert not outbox.flush_now(a.fileno())
    left = outbox.size
    assert 0 < left < 2_000_000
    assert len(outbox.take()) == left


def test_no_direct_write_while_the_writer_is_sending(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    outbox = Outbox(1024, lambda: None)
    outbox.writer_busy = True
    outbox.queue(b"later\n")
    assert not outbox.flush_now(a.fileno())
    with pytest.raises(BlockingIOError):
        b.recv(100)
    assert outbox.take() == b"later\n"


def test_overflow_refuses_and_reports_once() -> None:
    calls: list[int] = []
    outbox = Outbox(10, lambda: calls.append(1))
    assert outbox.queue(b"12345")
    assert not outbox.queue(b"678901")
    assert not outbox.put(b"more")
    assert calls == [1]
    assert outbox.overflowed and outbox.take() == b""


def test_put_reports_pending_data_and_queue_does_not() -> None:
    calls: list[int] = []
    outbox = Outbox(100, lambda: None, lambda: calls.append(1))
    outbox.queue(b"batched")
    assert calls == []
    outbox.put(b"now")
    assert calls == [1]
    assert outbox.take() == b"batchednow"
