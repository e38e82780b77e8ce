"""Ban records, networks, durations and client addresses (pure functions)."""

from __future__ import annotations

import pytest

from services.common.bans import (
    Ban,
    client_address,
    decode_ban,
    decode_bans,
    matching_ban,
    parse_ban_duration,
    parse_network,
)


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),  # a dual-stack socket's IPv4 client
        ("[2001:DB8::0:1]", "2001:db8::1"),
        ("unknown", "unknown"),
    ],
)
def test_client_address_is_canonical(raw: str, canonical: str) -> None:
    assert client_address(raw) == canonical


def test_networks_clear_host_bits_and_map_ipv4_in_ipv6() -> None:
    assert str(parse_network("10.1.2.3/8")) == "10.0.0.0/8"
    assert str(parse_network("10.1.2.3")) == "10.1.2.3/32"
    assert str(parse_network("2001:db8::1/64")) == "2001:db8::/64"
    assert str(parse_network("::ffff:10.0.0.0/104")) == "10.0.0.0/8"
    with pytest.raises(ValueError, match="not an IP address or CIDR"):
        parse_network("10.0.0.0/40")


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("90", 90), ("90s", 90), ("10m", 600), ("2h", 7200), ("7d", 604800), ("1w", 604800),
     ("1h30m", 5400), ("0.5s", 0.5)],
)
def test_durations(raw: str, seconds: float) -> None:
    assert parse_ban_duration(raw) == seconds


@pytest.mark.parametrize("raw", ["", "soon", "5x", "-5", "0", "1h junk", "h1"])
def test_bad_durations(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_ban_duration(raw)


def test_matching_respects_family_network_and_expiry() -> None:
    v4 = Ban(parse_network("198.51.100.0/24"), "v4", None, 0.0)
    v6 = Ban(parse_network("2001:db8::/48"), "v6", 100.0, 0.0)
    bans = [v4, v6]
    assert matching_ban("198.51.100.77", bans, now=50) is v4
    assert matching_ban("198.51.101.1", bans, now=50) is None
    assert matching_ban("2001:db8:0:ffff::1", bans, now=50) is v6
    assert matching_ban("2001:db8:0:ffff::1", bans, now=100) is None  # expired
    assert matching_ban("2001:db9::1", bans, now=50) is None
    assert matching_ban("unknown", bans, now=50) is None


def test_records_round_trip_and_bad_ones_are_reported() -> None:
    ban = Ban(parse_network("192.0.2.0/24"), "spam", 123.5, 100.0)
    assert decode_ban("192.0.2.0/24", ban.record()) == ban
    bans, problems = decode_bans({"192.0.2.0/24": ban.record(), "10.0.0.1/32": "[1]",
                                  "nonsense": "{}", "10.0.0.2/32": '{"until": "x"}'})
    assert bans == [ban]
    assert len(problems) == 3
