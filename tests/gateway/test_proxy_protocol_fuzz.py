"""Property-based tests (hypothesis) of the PROXY v1/v2 parser: arbitrary bytes
never raise anything but ``ProxyProtocolError``; valid headers round-trip, with
or without client bytes after them; every prefix of a valid header asks for
more; the stream reader agrees with the parser whatever the chunking."""

from __future__ import annotations

import ipaddress
import struct

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from services.gateway.proxy_protocol import (
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    parse_proxy_header,
    read_proxy_header,
)

SETTINGS = settings(deadline=None, database=None, max_examples=300)

ipv4 = st.ip_addresses(v=4)
ipv6 = st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None)
ports = st.integers(min_value=0, max_value=65535)
trailing = st.binary(max_size=20)


def shown(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return str(address)


@st.composite
def valid_headers(draw: st.DrawFn) -> tuple[bytes, ProxyHeader]:
    """A valid v1 or v2 PROXY header and what it must parse to."""
    six = draw(st.booleans())
    src, dst = draw(ipv6 if six else ipv4), draw(ipv6 if six else ipv4)
    sport, dport = draw(ports), draw(ports)
    if draw(st.booleans()):
        family = "TCP6" if six else "TCP4"
        data = f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode()
        return data, ProxyHeader((shown(src), sport), (shown(dst), dport), 1, len(data))
    addresses = src.packed + dst.packed + struct.pack("!HH", sport, dport)
    tlvs = draw(st.binary(max_size=30))
    payload = addresses + tlvs
    data = V2_SIGNATURE + bytes([0x21, 0x21 if six else 0x11]) + struct.pack("!H", len(payload))
    data += payload
    return data, ProxyHeader((shown(src), sport), (shown(dst), dport), 2, len(data))


@SETTINGS
@given(st.binary(max_size=300))
def test_arbitrary_bytes_parse_or_raise_the_documented_error(data: bytes) -> None:
    try:
        parse_proxy_header(data)
    except ProxyProtocolError as exc:
        assert "\n" not in str(exc)


@SETTINGS
@given(st.sampled_from([b"PROXY ", V2_SIGNATURE, b"PROXY TCP4 ", b"PROXY UNKNOWN"]),
       st.binary(max_size=300))
def test_bytes_after_a_signature_parse_or_raise_the_documented_error(
    prefix: bytes, rest: bytes
) -> None:
    try:
        header = parse_proxy_header(prefix + rest)
    except ProxyProtocolError:
        return
    if header is not None:
        assert 0 < header.consumed <= len(prefix + rest)


@SETTINGS
@given(valid_headers(), trailing)
def test_valid_headers_round_trip(case: tuple[bytes, ProxyHeader], after: bytes) -> None:
    data, expected = case
    assert parse_proxy_header(data + after) == expected
    for cut in range(len(data)):
        assert parse_proxy_header(data[:cut]) is None


@SETTINGS
@given(valid_headers(), trailing, st.lists(st.integers(min_value=1, max_value=40), max_size=8))
def test_the_reader_agrees_with_the_parser_whatever_the_chunks(
    case: tuple[bytes, ProxyHeader], after: bytes, sizes: list[int]
) -> None:
    data, expected = case
    wire = data + after

    async def main() -> tuple[ProxyHeader, bytes]:
        send, receive = trio.testing.memory_stream_one_way_pair()

        async def sender() -> None:
            rest = wire
            for size in [*sizes, len(rest)]:
                await send.send_all(rest[:size])
                rest = rest[size:]
                # The reader takes this chunk on its own before the next arrives.
                await trio.testing.wait_all_tasks_blocked()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            result = await read_proxy_header(receive, 5.0)
            nursery.cancel_scope.cancel()
        return result

    header, leftover = trio.run(main)
    assert header == expected
    # What came after the header is handed on, never lost (some of it may still
    # be unread in the stream when the header ended mid-chunk).
    assert after.startswith(leftover)
