"""A client's writer on a real socket pair: direct writes, coalescing, the byte cap,
and the writer task started only when the socket is full."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from services.gateway.writer import Writer


class _Stream:
    """Just enough of a trio SocketStream for the writer: a socket and send_all."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = trio.socket.from_stdlib_socket(sock)

    async def send_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            sent = await self.socket.send(view)
            view = view[sent:]


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def _writer(sock: socket.socket, limit: int, spawned: list[Any] | None = None,
            overflows: list[int] | None = None) -> Writer:
    return Writer(
        _Stream(sock),  # type: ignore[arg-type]
        limit,
        on_overflow=lambda: (overflows if overflows is not None else []).append(1),
        on_broken=lambda: None,
        spawn=lambda fn, *args: (spawned if spawned is not None else []).append((fn, args)),
    )


def test_queued_messages_leave_in_one_write_without_a_task(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    spawned: list[Any] = []
    writer = _writer(a, 1024, spawned)
    writer.start()
    for i in range(5):
        assert writer.queue(f"m{i}\n".encode())
    assert writer.size == 15
    writer.flush()
    assert b.recv(100) == b"m0\nm1\nm2\nm3\nm4\n"
    assert writer.size == 0 and spawned == []


def test_nothing_is_written_before_the_connection_task_starts(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    writer = _writer(a, 1024)
    writer.put(b"early\n")
    with pytest.raises(BlockingIOError):
        b.recv(100)
    writer.start()
    assert b.recv(100) == b"early\n"


def test_what_the_socket_cannot_take_goes_to_one_writer_task(pair) -> None:  # type: ignore[no-untyped-def]
    a, _b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    spawned: list[Any] = []
    writer = _writer(a, 10**7, spawned)
    writer.start()
    writer.put(b"x" * 2_000_000)
    assert len(spawned) == 1
    left = writer.size
    assert 0 < left < 2_000_000
    # While the task runs, nobody else writes around it and no second task starts.
    writer.put(b"later\n")
    assert len(spawned) == 1
    assert writer.size == left + len(b"later\n")


async def test_the_writer_task_sends_everything_then_ends(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    received = bytearray()
    async with trio.open_nursery() as nursery:
        writer = Writer(_Stream(a), 10**7, on_overflow=lambda: None,  # type: ignore[arg-type]
                        on_broken=lambda: None, spawn=nursery.start_soon)
        writer.start()
        writer.put(b"y" * 500_000)
        peer = trio.socket.from_stdlib_socket(b)
        with trio.fail_after(10):
            while len(received) < 500_000:
                received += await peer.recv(65536)
        await writer.wait_flushed(5)
    assert bytes(received) == b"y" * 500_000
    assert writer.size == 0


def test_overflow_refuses_and_reports_once(pair) -> None:  # type: ignore[no-untyped-def]
    a, _b = pair
    overflows: list[int] = []
    writer = _writer(a, 10, overflows=overflows)
    assert writer.queue(b"12345")
    assert not writer.queue(b"678901")
    assert not writer.put(b"more")
    assert overflows == [1]
    assert writer.overflowed and writer.take() == b""
