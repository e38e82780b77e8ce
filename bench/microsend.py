"""What one delivery costs, two ways, on this machine: ``python -m bench.microsend``.

Both deliver one 64-byte line to each of N TCP-loopback connections:

* ``trio writer task``: the gateway's first write path.  Fan-out appends to the
  client's queue and wakes the client's writer task (a ``ParkingLot``), which
  then calls ``SocketStream.send_all``: one task switch per client per wake.
* ``direct send``: a non-blocking ``socket.send`` called from the fan-out loop
  itself, no task switch.  This is what the gateway does now whenever the
  socket can take the bytes at once; only what it cannot take waits for a
  writer task (``docs/BENCHMARKS.md`` tells how the figures led there).

It prints CPU microseconds per delivery (user + system, from ``getrusage``).
"""

from __future__ import annotations

import resource
import socket
import sys

import trio

LINE = b"#lobby <b1> " + b"x" * 50 + b"\r\n"


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _tcp_pairs(n: int) -> list[tuple[socket.socket, socket.socket]]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(n)
        pairs = []
        for _ in range(n):
            client = socket.create_connection(listener.getsockname())
            server, _ = listener.accept()
            pairs.append((server, client))
        return pairs


def _drain(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    for _, client in pairs:
        client.recv(1 << 16)


def direct(n: int, rounds: int) -> float:
    """CPU us per delivery of a non-blocking send from the fan-out loop."""
    pairs = _tcp_pairs(n)
    try:
        for server, _ in pairs:
            server.setblocking(False)
        spent = 0.0
        for _ in range(rounds):
            t = _cpu()
            for server, _ in pairs:
                server.send(LINE)
            spent += _cpu() - t
            _drain(pairs)
        return spent / (n * rounds) * 1e6
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def via_tasks(n: int, rounds: int) -> float:
    """CPU us per delivery of queue + wake writer task + ``send_all``."""
    pairs = _tcp_pairs(n)
    result = 0.0

    async def main() -> None:
        nonlocal result
        streams = [trio.SocketStream(trio.socket.from_stdlib_socket(s)) for s, _ in pairs]
        queues: list[list[bytes]] = [[] for _ in range(n)]
        lots = [trio.lowlevel.ParkingLot() for _ in range(n)]

        async def writer(i: int) -> None:
            while True:
                while not queues[i]:
                    await lots[i].park()
                data = b"".join(queues[i])
                queues[i].clear()
                await streams[i].send_all(data)

        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(writer, i)
            await trio.sleep(0.2)
            spent = 0.0
            for _ in range(rounds):
                t = _cpu()
                for i in range(n):
                    queues[i].append(LINE)
                    lots[i].unpark_all()
                while any(queues):
                    await trio.lowlevel.checkpoint()
                await trio.lowlevel.checkpoint()
                spent += _cpu() - t
                _drain(pairs)
            result = spent / (n * rounds) * 1e6
            nursery.cancel_scope.cancel()
        for s in streams:
            await s.aclose()

    try:
        trio.run(main)
    finally:
        for _, client in pairs:
            client.close()
    return result


def main(argv: list[str]) -> int:
    n = int(argv[0]) if argv else 1000
    rounds = int(argv[1]) if len(argv) > 1 else 20
    print(f"{n} TCP loopback connections, {rounds} rounds of one line each")
    print(f"direct send:       {direct(n, rounds):6.1f} CPU us per delivery")
    print(f"trio writer task:  {via_tasks(n, rounds):6.1f} CPU us per delivery")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
