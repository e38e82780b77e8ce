"""End-to-end fuzzing: random byte soup from a real client to a live gateway.

Whatever the soup (line ends of every kind, invalid UTF-8, controls, bidi and
invisible characters, commands with odd arguments, over-long lines, split at
random points), every line the gateway sends, to the fuzzer and to a bystander
in the same room, is one well-formed server line of printable UTF-8, and the
gateway keeps serving: the bystander still chats.  Seeded, so a failure
reproduces.
"""

from __future__ import annotations

import random
import re
import unicodedata

import pytest
import trio

from tests.conftest import StartGateway
from tests.support.chat_client import ChatClient

MAX_LINE = 200

# Every form docs/PROTOCOL.md lists for a server line.
SERVER_LINE = re.compile(
    r"^(== |\?\? |!! "
    r"|#[a-z0-9_.\-]{1,32} (<[^ >]+> |\* [^ ]+ |-- |\(history\) (<[^ >]+> |\* [^ ]+ ))"
    r"|@[^ ]+ <[^ >]+> )"
)

TOKENS = [
    b"\n", b"\r\n", b"\r", b"\n\r", b" ", b"\t", b"/", b"//", b"/join #", b"/join ", b"/part",
    b"/nick ", b"/msg ", b"/me ", b"/who", b"/rooms", b"/help", b"/unknown", b"#", b"alice",
    b"bystander", b"BYSTANDER", b"\xff", b"\xc3", b"\xe2\x80", b"\x00", b"\x1b[2J", b"\x7f",
    "\u202e".encode(), "\u2066".encode(), "\u200b".encode(), "\u2028".encode(),
    "\ufeff".encode(), "\u00ad".encode(), "é".encode(), "😀".encode(), b"<U+202E>",
    b"x" * (MAX_LINE + 5), b"AIice", b"rn", b"[]{}\\|^",
]


def soup(rng: random.Random, size: int) -> bytes:
    parts = []
    while sum(map(len, parts)) < size:
        if rng.random() < 0.7:
            parts.append(rng.choice(TOKENS))
        else:
            parts.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8))))
    return b"".join(parts)


def check_lines(raw: bytes, who: str) -> list[str]:
    """Every line of ``raw`` is a well-formed server line; returns them."""
    assert raw.endswith(b"\r\n") or not raw, f"{who}: unterminated output {raw[-80:]!r}"
    lines = []
    for line in raw.split(b"\r\n")[:-1]:
        text = line.decode("utf-8")  # raises on invalid UTF-8
        assert SERVER_LINE.match(text), f"{who}: malformed server line {text!r}"
        bad = [ch for ch in text if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs")]
        assert not bad, f"{who}: invisible characters {bad!r} in {text!r}"
        lines.append(text)
    return lines


async def read_all(stream: trio.SocketStream, into: bytearray, done: trio.Event) -> None:
    try:
        while data := await stream.receive_some(65536):
            into += data
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    done.set()


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_byte_soup_yields_only_well_formed_lines_and_the_gateway_keeps_serving(
    start_gateway: StartGateway, seed: int
) -> None:
    gw = await start_gateway(max_line_bytes=MAX_LINE, flood_burst=1000, flood_rate=1000)
    port = gw.ports[0]
    bystander = await ChatClient.join(port, "bystander")
    rng = random.Random(seed)
    fuzzer_out = bytearray()
    async with trio.open_nursery() as nursery:
        for attempt in range(4):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            received = bytearray()
            closed = trio.Event()
            nursery.start_soon(read_all, stream, received, closed)
            # A nickname first on half the connections, so commands run too.
            data = (f"fz{seed}{attempt}\n".encode() if attempt % 2 == 0 else b"")
            data += soup(rng, 3000)
            try:
                while data:
                    cut = rng.randrange(1, 200)
                    await stream.send_all(data[:cut])
                    data = data[cut:]
                await stream.send_all(b"\n/quit\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the soup itself said /quit
            with trio.fail_after(10):
                await closed.wait()
            await stream.aclose()
            check_lines(bytes(received), f"fuzzer {seed}/{attempt}")
            fuzzer_out += received
    assert fuzzer_out.count(b"!! ") > 0  # the soup did provoke errors

    # The bystander saw only well-formed lines, and the gateway still serves.
    await bystander.send("still here")
    await bystander.expect(r"^#lobby <bystander> still here$")
    other = await ChatClient.join(port, "other")
    await other.send("hello")
    await bystander.expect(r"^#lobby <other> hello$")
    raw = "".join(line + "\r\n" for line in bystander.lines).encode()
    check_lines(raw, "bystander")
