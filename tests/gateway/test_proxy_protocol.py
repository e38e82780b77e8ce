"""PROXY protocol v1/v2 parsing, the stream reader, and the trusted-peer check."""

from __future__ import annotations

import ipaddress
import math
import socket
import struct

import pytest
import trio
import trio.testing

from services.gateway.proxy_protocol import (
    MAX_V2_HEADER_BYTES,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    is_trusted,
    parse_proxy_header,
    read_proxy_header,
)

V1_TCP4 = b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 7000\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 7000\r\n"


def v2_header(
    *,
    command: int = 0x21,
    family: int = 0x11,
    addresses: bytes | None = None,
    tlvs: bytes = b"",
    length: int | None = None,
) -> bytes:
    """A v2 header built field by field, so tests can break any one field."""
    if addresses is None:
        addresses = (
            ipaddress.IPv4Address("192.0.2.10").packed
            + ipaddress.IPv4Address("198.51.100.1").packed
            + struct.pack("!HH", 56324, 7000)
        )
    payload = addresses + tlvs
    declared = len(payload) if length is None else length
    return V2_SIGNATURE + bytes([command, family]) + struct.pack("!H", declared) + payload


def v2_ipv6_addresses(source: str, destination: str, sport: int, dport: int) -> bytes:
    return (
        ipaddress.IPv6Address(source).packed
        + ipaddress.IPv6Address(destination).packed
        + struct.pack("!HH", sport, dport)
    )


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


# -- v1 --


def test_v1_tcp4() -> None:
    header = parse_proxy_header(V1_TCP4 + b"alice\n")
    assert header == ProxyHeader(
        source=("192.0.2.10", 56324),
        destination=("198.51.100.1", 7000),
        version=1,
        consumed=len(V1_TCP4),
    )


def test_v1_tcp6() -> None:
    header = parse_proxy_header(V1_TCP6)
    assert header is not None
    assert header.source == ("2001:db8::1", 4000)
    assert header.destination == ("2001:db8::2", 7000)
    assert header.consumed == len(V1_TCP6)


def test_v1_tcp6_ipv4_mapped_source_is_reported_as_ipv4() -> None:
    header = parse_proxy_header(b"PROXY TCP6 ::ffff:192.0.2.10 ::1 1 2\r\n")
    assert header is not None
    assert header.source == ("192.0.2.10", 1)
    assert header.destination == ("::1", 2)


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY UNKNOWN\r\n",
        b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
    ],
)
def test_v1_unknown_carries_no_address(line: bytes) -> None:
    assert parse_proxy_header(line + b"x") == ProxyHeader(None, None, 1, len(line))


def test_v1_longest_legal_header_is_accepted() -> None:
    line = (
        b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
        b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
    )
    assert len(line) == 104
    header = parse_proxy_header(line)
    assert header is not None and header.source == (
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        65535,
    )
    unknown = b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n"
    assert len(unknown) == 107
    assert parse_proxy_header(unknown) == ProxyHeader(None, None, 1, 107)


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP5 192.0.2.10 198.51.100.1 1 2\r\n",
        b"PROXY TCP4 192.0.2.10 198.51.100.1 1\r\n",
        b"PROXY TCP4 192.0.2.10 198.51.100.1 1 2 3\r\n",
        b"PROXY TCP4  192.0.2.10 198.51.100.1 1 2\r\n",
        b"PROXY TCP4 192.0.2.300 198.51.100.1 1 2\r\n",
        b"PROXY TCP4 192.0.2.010 198.51.100.1 1 2\r\n",
        b"PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n",
        b"PROXY TCP6 192.0.2.10 2001:db8::2 1 2\r\n",
        b"PROXY TCP6 fe80::1%eth0 2001:db8::2 1 2\r\n",
        b"PROXY TCP4 192.0.2.10 198.51.100.1 65536 2\r\n",
        b"PROXY TCP4 192.0.2.10 198.51.100.1 -1 2\r\n",
        b"PROXY TCP4 192.0.2.10 198.51.100.1 +1 2\r\n",
        b"PROXY TCP4 192.0.2.10 198.51.100.1 1 123456\r\n",
        b"PROXY TCP4 192.0.2.10 198.51.100.1 1 \r\n",
        b"PROXY TCP4 192.0.2.10 198.51.100.1 1 2\rX",
        b"PROXY TCP4 192.0.2.10 198.51.100.1 1 2\n",
        b"PROXY TCP4 192.0.2.10\t198.51.100.1 1 2\r\n",
        b"PROXY TCP4 192.0.2.10 198.51.100.1 1 \xd9\xa1\r\n",
        b"PROXY \r\n",
    ],
)
def test_v1_malformed(line: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(line)


def test_v1_too_long_is_rejected_at_the_limit_without_waiting_for_crlf() -> None:
    assert parse_proxy_header(b"PROXY UNKNOWN " + b"x" * 92) is None  # 106 bytes
    with pytest.raises(ProxyProtocolError, match="107"):
        parse_proxy_header(b"PROXY UNKNOWN " + b"x" * 93)
    with pytest.raises(ProxyProtocolError, match="107"):
        parse_proxy_header(b"PROXY UNKNOWN " + b"x" * 92 + b"\r")


# -- v2 --


def test_v2_proxy_ipv4() -> None:
    data = v2_header()
    assert parse_proxy_header(data + b"bob\n") == ProxyHeader(
        source=("192.0.2.10", 56324),
        destination=("198.51.100.1", 7000),
        version=2,
        consumed=16 + 12,
    )


def test_v2_proxy_ipv6() -> None:
    data = v2_header(
        family=0x21, addresses=v2_ipv6_addresses("2001:db8::1", "2001:db8::2", 4000, 7000)
    )
    header = parse_proxy_header(data)
    assert header == ProxyHeader(("2001:db8::1", 4000), ("2001:db8::2", 7000), 2, 16 + 36)


def test_v2_ipv4_mapped_ipv6_source_is_reported_as_ipv4() -> None:
    data = v2_header(family=0x21, addresses=v2_ipv6_addresses("::ffff:192.0.2.10", "::1", 1, 2))
    header = parse_proxy_header(data)
    assert header is not None and header.source == ("192.0.2.10", 1)


def test_v2_local_has_no_address_and_skips_its_block() -> None:
    data = v2_header(command=0x20, family=0x00, addresses=b"")
    assert parse_proxy_header(data + b"hi") == ProxyHeader(None, None, 2, 16)
    # A LOCAL header may still carry a block; it is skipped whatever it says.
    data = v2_header(command=0x20)
    assert parse_proxy_header(data) == ProxyHeader(None, None, 2, 28)
    data = v2_header(command=0x20, family=0x11, addresses=b"")
    assert parse_proxy_header(data) == ProxyHeader(None, None, 2, 16)


@pytest.mark.parametrize("family", [0x00, 0x12, 0x22, 0x31, 0x32])
def test_v2_addressless_families_are_treated_like_local(family: int) -> None:
    size = {0x00: 0, 0x12: 12, 0x22: 36, 0x31: 216, 0x32: 216}[family]
    data = v2_header(family=family, addresses=b"\x01" * size)
    assert parse_proxy_header(data) == ProxyHeader(None, None, 2, 16 + size)


def test_v2_tlvs_are_skipped() -> None:
    tlvs = tlv(0x05, b"unique-id-1234") + tlv(0x04, b"") + tlv(0xEA, b"\x01vpce-0123")
    data = v2_header(tlvs=tlvs)
    header = parse_proxy_header(data + b"client data")
    assert header is not None
    assert header.source == ("192.0.2.10", 56324)
    assert header.consumed == len(data)


def test_v2_length_at_the_cap_is_accepted_and_beyond_it_rejected_early() -> None:
    room = MAX_V2_HEADER_BYTES - 16 - 12 - 3
    data = v2_header(tlvs=tlv(0x04, b"\x00" * room))
    assert len(data) == MAX_V2_HEADER_BYTES
    header = parse_proxy_header(data)
    assert header is not None and header.consumed == MAX_V2_HEADER_BYTES
    # Rejected from the 16 fixed bytes alone, before any of the payload arrives.
    too_long = v2_header(length=MAX_V2_HEADER_BYTES - 16 + 1)[:16]
    with pytest.raises(ProxyProtocolError, match="longer"):
        parse_proxy_header(too_long)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (v2_header(command=0x11), "version"),
        (v2_header(command=0x31), "version"),
        (v2_header(command=0x22), "command"),
        (v2_header(family=0x13), "family"),
        (v2_header(family=0x41), "family"),
        (v2_header(family=0x10), "family"),
        (v2_header(length=11), "short"),
        (v2_header(family=0x21), "short"),
        (v2_header(family=0x31, addresses=b"\x00" * 100), "short"),
    ],
)
def test_v2_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(ProxyProtocolError, match=reason):
        parse_proxy_header(data)


def test_v2_bad_command_is_rejected_from_its_byte_alone() -> None:
    with pytest.raises(ProxyProtocolError, match="command"):
        parse_proxy_header(V2_SIGNATURE + b"\x2f")
    with pytest.raises(ProxyProtocolError, match="family"):
        parse_proxy_header(V2_SIGNATURE + b"\x21\xff")


# -- signatures and fragmentation --


@pytest.mark.parametrize(
    "data", [b"", b"P", b"PROXY", b"PROXY ", b"\r", b"\r\n\r\n\x00", V2_SIGNATURE]
)
def test_signature_prefixes_need_more(data: bytes) -> None:
    assert parse_proxy_header(data) is None


@pytest.mark.parametrize(
    "data", [b"alice\n", b"G", b"PROXX", b"PROXY\r\n", b"\r\n\r\n\x01", b"\r\nhello", b"\n"]
)
def test_wrong_signature_is_rejected_at_the_first_differing_byte(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError, match="signature"):
        parse_proxy_header(data)


@pytest.mark.parametrize(
    "header",
    [
        V1_TCP4,
        V1_TCP6,
        b"PROXY UNKNOWN\r\n",
        v2_header(),
        v2_header(family=0x21, addresses=v2_ipv6_addresses("2001:db8::1", "::1", 1, 2)),
        v2_header(tlvs=tlv(0x01, b"h2")),
        v2_header(command=0x20, family=0x00, addresses=b""),
    ],
)
def test_fragmented_byte_by_byte(header: bytes) -> None:
    complete = parse_proxy_header(header)
    assert complete is not None and complete.consumed == len(header)
    for end in range(len(header)):
        assert parse_proxy_header(header[:end]) is None, end
    assert parse_proxy_header(header + b"\r\n\r\nQUIT") == complete


# -- read_proxy_header --


async def test_read_proxy_header_preserves_leftover_bytes() -> None:
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(V1_TCP4 + b"alice\nhello")
    header, leftover = await read_proxy_header(server, timeout_s=5)
    assert header.source == ("192.0.2.10", 56324)
    assert leftover == b"alice\nhello"


async def test_read_proxy_header_fragmented_delivery() -> None:
    client, server = trio.testing.memory_stream_pair()
    data = v2_header(tlvs=tlv(0x05, b"abc"))
    result: list[tuple[ProxyHeader, bytes]] = []

    async def read() -> None:
        result.append(await read_proxy_header(server, timeout_s=5))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        for byte in data[:-1]:
            await client.send_all(bytes([byte]))
            await trio.testing.wait_all_tasks_blocked()
            assert not result
        # The header's last byte arrives together with the client's first line.
        await client.send_all(data[-1:] + b"bob\n")
    header, leftover = result[0]
    assert header.source == ("192.0.2.10", 56324)
    assert header.version == 2
    assert leftover == b"bob\n"


async def test_read_proxy_header_empty_leftover() -> None:
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(b"PROXY UNKNOWN\r\n")
    header, leftover = await read_proxy_header(server, timeout_s=math.inf)
    assert header == ProxyHeader(None, None, 1, 15)
    assert leftover == b""


async def test_read_proxy_header_rejects_plain_client_data() -> None:
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(b"alice\n")
    with pytest.raises(ProxyProtocolError, match="signature"):
        await read_proxy_header(server, timeout_s=5)


async def test_read_proxy_header_eof_before_complete() -> None:
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(V1_TCP4[:10])
    await client.aclose()
    with pytest.raises(ProxyProtocolError, match="closed"):
        await read_proxy_header(server, timeout_s=5)


async def test_read_proxy_header_times_out(autojump_clock: trio.testing.MockClock) -> None:
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(V1_TCP4[:10])
    with pytest.raises(ProxyProtocolError, match="timed out"):
        await read_proxy_header(server, timeout_s=3)
    assert trio.current_time() == pytest.approx(3)


async def test_read_proxy_header_over_loopback_socket() -> None:
    listener = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with listener:
        await listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        sender = await trio.open_tcp_stream("127.0.0.1", port)
        async with sender:
            accepted, _ = await listener.accept()
            async with trio.SocketStream(accepted) as receiver:
                await sender.send_all(V1_TCP6 + b"carol\n")
                header, leftover = await read_proxy_header(receiver, timeout_s=5)
                # The read may stop before "carol\n" arrives; what was read is kept.
                rest = leftover
                while rest != b"carol\n":
                    rest += await receiver.receive_some(100)
    assert header.source == ("2001:db8::1", 4000)


# -- trusted proxies --


@pytest.mark.parametrize(
    ("peer", "networks", "trusted"),
    [
        ("127.0.0.1", ("127.0.0.1/32", "::1/128"), True),
        ("::1", ("127.0.0.1/32", "::1/128"), True),
        ("::ffff:127.0.0.1", ("127.0.0.1/32",), True),
        ("::ffff:10.1.2.3", ("10.0.0.0/8",), True),
        ("::ffff:10.1.2.3", ("::ffff:0:0/96",), True),
        ("10.1.2.3", ("10.0.0.0/8", "192.168.0.0/16"), True),
        ("10.1.2.3", ("10.1.2.0/255.255.255.0",), True),
        ("10.1.2.3", ("10.1.2.3",), True),
        ("10.1.2.3", ("10.1.2.1/24",), True),
        ("fe80::1%eth0", ("fe80::/10",), True),
        ("192.0.2.1", ("127.0.0.1/32", "::1/128"), False),
        ("::ffff:192.0.2.1", ("127.0.0.1/32", "::1/128"), False),
        ("2001:db8::1", ("127.0.0.1/32",), False),
        ("127.0.0.1", (), False),
        ("not-an-ip", ("0.0.0.0/0", "::/0"), False),
        ("", ("0.0.0.0/0",), False),
    ],
)
def test_is_trusted(peer: str, networks: tuple[str, ...], trusted: bool) -> None:
    assert is_trusted(peer, networks) is trusted
    assert is_trusted(peer, list(networks)) is trusted


def test_is_trusted_rejects_an_invalid_network() -> None:
    with pytest.raises(ValueError):
        is_trusted("127.0.0.1", ["nonsense"])
