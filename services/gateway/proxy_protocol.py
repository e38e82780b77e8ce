"""HAProxy PROXY protocol v1 and v2: learn the real client address behind a TCP proxy.

A load balancer that speaks the PROXY protocol prepends one header to each
connection, before any client byte.  :func:`parse_proxy_header` is sans-I/O: it
judges the bytes received so far and says "complete", "need more" or "invalid".
:func:`read_proxy_header` drives it over a Trio stream, under a deadline, and
hands back the bytes that followed the header so the client's first line is not
lost.  :func:`is_trusted` decides whether a peer may send a header at all: only
proxies the operator named may rewrite a client's address.

Bounds: a v1 header is at most 107 bytes (the spec's own limit); a v2 header at
most :data:`MAX_V2_HEADER_BYTES`.  Whatever a peer sends, the parser never asks for
more than that before answering.

Specification: https://www.haproxy.org/download/1.8/doc/proxy-protocol.txt
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import trio

__all__ = [
    "MAX_V1_HEADER_BYTES",
    "MAX_V2_HEADER_BYTES",
    "V1_SIGNATURE",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyProtocolError",
    "is_trusted",
    "parse_proxy_header",
    "read_proxy_header",
]

V1_SIGNATURE = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

MAX_V1_HEADER_BYTES = 107
"""The spec's worst case: ``PROXY UNKNOWN`` plus two full IPv6 addresses and ports."""

_V2_FIXED_BYTES = 16

MAX_V2_HEADER_BYTES = _V2_FIXED_BYTES + 4096
"""Largest v2 header accepted (the spec allows 16 + 65535).

The address block takes at most 216 bytes (AF_UNIX); the rest is TLVs.  Real
senders (HAProxy with SSL and unique-id TLVs, AWS NLB, Azure, GCP) stay well
under 1 KiB, so 4 KiB of payload leaves room while bounding what a
misbehaving proxy can make us buffer.
"""

# Reads are small because whatever follows the header is handed back to the caller
# as leftover bytes; a large read would only move client data into that buffer.
_RECEIVE_BYTES = 4096

_V2_VERSION = 0x2
_V2_LOCAL = 0x0
_V2_PROXY = 0x1

_V2_INET_STREAM = 0x11
_V2_INET6_STREAM = 0x21
# Families the spec defines but that say nothing usable about a TCP client
# (UNSPEC, UDP, AF_UNIX): the spec lets the receiver ignore the addresses, so they
# are treated like LOCAL.  Any other family byte is undefined and, as the spec
# requires, rejected.
_V2_ADDRESSLESS_FAMILIES = frozenset({0x00, 0x12, 0x22, 0x31, 0x32})
_V2_ADDRESS_BYTES = {0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36, 0x31: 216, 0x32: 216}

_V1_PRINTABLE = frozenset(range(0x20, 0x7F))
_PORT_DIGITS = frozenset(b"0123456789")


class ProxyProtocolError(Exception):
    """Bytes that are not (or cannot become) a valid PROXY header.

    The message is a short, single-line reason fit for a log field.
    """


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """One parsed PROXY header.

    ``source`` and ``destination`` are ``(ip, port)`` as the proxy saw them, with
    IPv4-mapped IPv6 addresses (``::ffff:1.2.3.4``) reduced to IPv4 so one client
    has one spelling.  Both are ``None`` for LOCAL (health checks), UNKNOWN and
    address-less families: the caller then uses the real socket peer.
    ``consumed`` is the header's length in bytes; client data starts right after.
    """

    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    version: int
    consumed: int


def parse_proxy_header(data: bytes) -> ProxyHeader | None:
    """Parse a PROXY v1 or v2 header at the start of ``data``.

    Returns the header once it is complete (bytes after it are ignored), or
    ``None`` when ``data`` is a valid prefix of a header and more bytes are needed.
    Raises :class:`ProxyProtocolError` as soon as the bytes cannot become a valid
    header: a signature mismatch is detected from the first differing byte, an
    oversize header from its declared length (v2) or its 107th byte (v1).
    """
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data)
    if data.startswith(V1_SIGNATURE):
        return _parse_v1(data)
    prefix = data[: len(V2_SIGNATURE)]
    if V2_SIGNATURE.startswith(prefix) or V1_SIGNATURE.startswith(prefix):
        return None
    raise ProxyProtocolError("no PROXY protocol signature")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    window = data[:MAX_V1_HEADER_BYTES]
    end = -1
    for index, byte in enumerate(window):
        if byte == 0x0D:  # \r
            if index + 1 == len(window):
                if len(window) == MAX_V1_HEADER_BYTES:
                    raise ProxyProtocolError("PROXY v1 header longer than 107 bytes")
                return None
            if window[index + 1] != 0x0A:
                raise ProxyProtocolError("PROXY v1 header has a bare CR")
            end = index
            break
        if byte not in _V1_PRINTABLE:
            raise ProxyProtocolError("PROXY v1 header contains a non-printable byte")
    if end < 0:
        if len(window) == MAX_V1_HEADER_BYTES:
            raise ProxyProtocolError("PROXY v1 header longer than 107 bytes")
        return None

    consumed = end + 2
    line = window[:end].decode("ascii")
    fields = line.split(" ")
    protocol = fields[1] if len(fields) > 1 else ""
    if protocol == "UNKNOWN":
        # The spec: the receiver must ignore whatever follows UNKNOWN.
        return ProxyHeader(source=None, destination=None, version=1, consumed=consumed)
    if protocol not in ("TCP4", "TCP6"):
        raise ProxyProtocolError("PROXY v1 protocol must be TCP4, TCP6 or UNKNOWN")
    if len(fields) != 6:
        raise ProxyProtocolError("PROXY v1 header must have 6 space-separated fields")
    version = 4 if protocol == "TCP4" else 6
    source_ip = _v1_address(fields[2], version)
    destination_ip = _v1_address(fields[3], version)
    source_port = _v1_port(fields[4])
    destination_port = _v1_port(fields[5])
    return ProxyHeader(
        source=(source_ip, source_port),
        destination=(destination_ip, destination_port),
        version=1,
        consumed=consumed,
    )


def _v1_address(text: str, ip_version: int) -> str:
    # ipaddress accepts "fe80::1%eth0"; a zone index means nothing on the proxy's
    # far side, so it is refused rather than silently carried along.
    if "%" in text:
        raise ProxyProtocolError("PROXY v1 address has a zone index")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyProtocolError("PROXY v1 address is not a valid IP address") from None
    if address.version != ip_version:
        raise ProxyProtocolError(f"PROXY v1 address does not match TCP{ip_version}")
    return _normalise(address)


def _v1_port(text: str) -> int:
    if not 1 <= len(text) <= 5 or not _PORT_DIGITS.issuperset(text.encode("ascii")):
        raise ProxyProtocolError("PROXY v1 port is not a decimal number")
    port = int(text)
    if port > 65535:
        raise ProxyProtocolError("PROXY v1 port out of range")
    return port


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < _V2_FIXED_BYTES:
        # Judge the version/command and family bytes as soon as they arrive.
        if len(data) > 12:
            _v2_command(data[12])
        if len(data) > 13:
            _v2_family(data[13])
        return None
    command = _v2_command(data[12])
    family = _v2_family(data[13])
    (payload_length,) = struct.unpack_from("!H", data, 14)
    total = _V2_FIXED_BYTES + payload_length
    if total > MAX_V2_HEADER_BYTES:
        raise ProxyProtocolError(f"PROXY v2 header longer than {MAX_V2_HEADER_BYTES} bytes")
    # LOCAL discards the address block whatever its family, so only PROXY must
    # carry one as long as its family says.
    if command == _V2_PROXY and payload_length < _V2_ADDRESS_BYTES.get(family, 0):
        raise ProxyProtocolError("PROXY v2 length too short for its address family")
    if len(data) < total:
        return None

    if command == _V2_LOCAL or family in _V2_ADDRESSLESS_FAMILIES:
        # TLVs, if any, follow the address block and are skipped unread.
        return ProxyHeader(source=None, destination=None, version=2, consumed=total)

    payload = data[_V2_FIXED_BYTES:total]
    if family == _V2_INET_STREAM:
        raw_source, raw_destination, source_port, destination_port = struct.unpack_from(
            "!4s4sHH", payload
        )
        source_ip = _normalise(ipaddress.IPv4Address(raw_source))
        destination_ip = _normalise(ipaddress.IPv4Address(raw_destination))
    else:  # _V2_INET6_STREAM: _v2_family admitted nothing else
        raw_source, raw_destination, source_port, destination_port = struct.unpack_from(
            "!16s16sHH", payload
        )
        source_ip = _normalise(ipaddress.IPv6Address(raw_source))
        destination_ip = _normalise(ipaddress.IPv6Address(raw_destination))
    return ProxyHeader(
        source=(source_ip, source_port),
        destination=(destination_ip, destination_port),
        version=2,
        consumed=total,
    )


def _v2_command(byte: int) -> int:
    if byte >> 4 != _V2_VERSION:
        raise ProxyProtocolError("PROXY v2 header has an unsupported version")
    command = byte & 0x0F
    if command not in (_V2_LOCAL, _V2_PROXY):
        raise ProxyProtocolError("PROXY v2 header has an unknown command")
    return command


def _v2_family(byte: int) -> int:
    if byte not in _V2_ADDRESSLESS_FAMILIES and byte not in (_V2_INET_STREAM, _V2_INET6_STREAM):
        raise ProxyProtocolError("PROXY v2 header has an undefined address family")
    return byte


def _normalise(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


async def read_proxy_header(
    stream: trio.abc.ReceiveStream, timeout_s: float
) -> tuple[ProxyHeader, bytes]:
    """Read one PROXY header from ``stream`` within ``timeout_s`` (``math.inf``: no limit).

    Returns the header and the bytes received after it (possibly empty), which
    belong to the client and must be fed to its protocol before reading more.
    Reads at most the header plus one 4 KiB chunk.  Raises
    :class:`ProxyProtocolError` on malformed bytes, end of stream or a broken
    connection before the header is complete, and on timeout.  Does not close
    ``stream``: its owner does.
    """
    buffer = bytearray()
    try:
        with trio.fail_after(timeout_s):
            while True:
                chunk = await stream.receive_some(_RECEIVE_BYTES)
                if not chunk:
                    raise ProxyProtocolError("connection closed before the PROXY header")
                buffer += chunk
                header = parse_proxy_header(bytes(buffer))
                if header is not None:
                    return header, bytes(buffer[header.consumed :])
    except trio.TooSlowError:
        raise ProxyProtocolError("timed out waiting for the PROXY header") from None
    except trio.BrokenResourceError:
        raise ProxyProtocolError("connection lost before the PROXY header") from None


def is_trusted(peer_ip: str, networks: Sequence[str]) -> bool:
    """Whether ``peer_ip`` lies in one of ``networks`` (CIDR strings, as from config).

    An IPv4-mapped IPv6 peer (``::ffff:127.0.0.1``, as a dual-stack socket reports
    IPv4 clients) matches IPv4 networks by its IPv4 address.  A peer that is not a
    valid IP address is not trusted.  Raises ``ValueError`` for an invalid network,
    which :func:`services.common.config.parse_networks` has already excluded.
    """
    try:
        address = ipaddress.ip_address(peer_ip)
    except ValueError:
        return False
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)
    return any(
        candidate in network
        for network in _parse_networks(tuple(networks))
        for candidate in candidates
        if candidate.version == network.version
    )


@functools.lru_cache(maxsize=32)
def _parse_networks(
    networks: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    # Cached: called once per accepted connection with the same configured tuple.
    return tuple(ipaddress.ip_network(network, strict=False) for network in networks)
