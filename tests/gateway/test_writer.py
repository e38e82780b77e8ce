"""A client's writer on a real socket pair: direct writes, coalescing, the byte cap,
and the writer task started only when the socket is full."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing

from services.gateway.writer import PIECE_OVERHEAD, OutboxBudget, Writer


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


# -- the gateway's total budget ------------------------------------------------------------
def _budgeted(sock: socket.socket, budget: OutboxBudget, cuts: list[Writer],
              limit: int = 10**7) -> Writer:
    writer: Writer

    def overflowed() -> None:
        cuts.append(writer)

    writer = Writer(_Stream(sock), limit, on_overflow=overflowed,  # type: ignore[arg-type]
                    on_broken=lambda: None, spawn=lambda fn, *args: None, budget=budget)
    writer.start()
    return writer


def _stuck_pair() -> tuple[socket.socket, socket.socket]:
    """A socket pair whose reader never reads, with small kernel buffers."""
    a, b = socket.socketpair()
    a.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return a, b


def test_the_total_never_passes_the_budget_and_the_furthest_behind_go_first() -> None:
    budget = OutboxBudget(100_000)
    cuts: list[Writer] = []
    pairs = [_stuck_pair() for _ in range(4)]
    reader_a, reader_b = socket.socketpair()
    reader_a.setblocking(False)
    try:
        stuck = [_budgeted(a, budget, cuts) for a, _ in pairs]
        reader = _budgeted(reader_a, budget, cuts)
        # Backlogs of different sizes, then a stream of lines to everyone.
        for i, writer in enumerate(stuck):
            writer.put(b"b" * (5_000 * (i + 1)))
        line = b"x" * 99 + b"\n"
        for _ in range(400):
            for writer in [*stuck, reader]:
                writer.put(line)
            assert budget.used <= budget.limit_bytes
            assert budget.used == sum(w.charge for w in [*stuck, reader])
            reader_b.recv(1 << 20)  # the reader keeps up
        assert cuts and reader not in cuts
        # The first cut was the one with the largest backlog.
        assert cuts[0] is stuck[3] and cuts[0].budget_cut and cuts[0].cut_waiting > 0
        assert all(w.overflowed and w.charge == 0 for w in cuts)
        assert not reader.overflowed and reader.charge == 0
        assert budget.cuts == len(cuts)
    finally:
        for a, b in [*pairs, (reader_a, reader_b)]:
            a.close()
            b.close()


def test_a_clients_own_cap_is_not_a_budget_cut(pair) -> None:  # type: ignore[no-untyped-def]
    a, _b = pair
    budget = OutboxBudget(10**9)
    cuts: list[Writer] = []
    writer = _budgeted(a, budget, cuts, limit=10)
    assert writer.queue(b"12345")
    assert budget.used == 5 + PIECE_OVERHEAD
    assert not writer.queue(b"678901")
    assert cuts == [writer] and not writer.budget_cut
    assert budget.used == 0 and budget.cuts == 0


async def test_bytes_being_sent_stay_charged_until_sent_and_a_cut_frees_them() -> None:
    budget = OutboxBudget(10**9)
    a, _b = _stuck_pair()
    try:
        async with trio.open_nursery() as nursery:
            writer = Writer(_Stream(a), 10**7, on_overflow=lambda: None,  # type: ignore[arg-type]
                            on_broken=lambda: None, spawn=nursery.start_soon, budget=budget)
            writer.start()
            writer.put(b"z" * 300_000)  # the socket takes a little; a writer task the rest
            await trio.testing.wait_all_tasks_blocked()
            assert writer.in_flight > 0 and writer in budget.behind
            assert budget.used == writer.charge > 250_000
            writer.cut(budget=True)  # cancels the writer task; its bytes go at once
            assert budget.used == 0
            await writer.stop()
            assert writer not in budget.behind and budget.used == 0
    finally:
        a.close()
        _b.close()


async def test_the_last_send_is_charged_and_a_budget_cut_abandons_it() -> None:
    budget = OutboxBudget(10**9)
    a, _b = _stuck_pair()
    try:
        async with trio.open_nursery() as nursery:
            writer = Writer(_Stream(a), 10**7, on_overflow=lambda: None,  # type: ignore[arg-type]
                            on_broken=lambda: None, spawn=nursery.start_soon, budget=budget)
            done = trio.Event()

            async def last() -> None:
                await writer.send_last(b"q" * 300_000, timeout_s=60)
                done.set()

            nursery.start_soon(last)
            await trio.testing.wait_all_tasks_blocked()
            assert budget.used == 300_000 + PIECE_OVERHEAD and writer in budget.behind
            budget.limit_bytes = 1000
            budget.relieve(writer)  # as a charge from any other writer would
            with trio.fail_after(5):
                await done.wait()
            assert budget.used == 0 and writer not in budget.behind
    finally:
        a.close()
        _b.close()
