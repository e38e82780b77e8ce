"""The key schema: names are exactly the documented ones (operators, chat-admin
and deployed gateways depend on them), patterns derive the same names."""

from __future__ import annotations

import pytest

from services.common.keys import (
    WILDCARD,
    Keys,
    incarnation_id,
    incarnation_name,
    owner_record,
    parse_owner_record,
)


def test_every_name_is_the_documented_one() -> None:
    k = Keys()
    assert k.prefix == "chat:"
    assert [k.nicks, k.gateways, k.epoch, k.rooms, k.all_channel] == [
        "chat:nicks", "chat:gateways", "chat:epoch", "chat:rooms-by-size", "chat:all",
    ]
    assert [k.gateway_alive("g~1"), k.gateway_nicks("g~1"), k.gateway_info("g~1")] == [
        "chat:gw:g~1:alive", "chat:gw:g~1:nicks", "chat:gw:g~1:info",
    ]
    assert [k.room_members("#a"), k.room_seq("#a"), k.room_history("#a"), k.room_log("#a")] == [
        "chat:room:#a:members", "chat:room:#a:seq", "chat:room:#a:history", "chat:room:#a:log",
    ]
    assert k.room_bytes("#a") == "chat:room:#a:bytes"
    assert k.nick_rooms("bob") == "chat:nick:bob:rooms"
    assert k.room_channel("#a") == "chat:room:#a"
    assert k.node_channel("g~1") == "chat:node:g~1"
    assert Keys("t1:").room_log("#a") == "t1:room:#a:log"


def test_patterns_expand_to_the_same_names() -> None:
    k = Keys("x-1:")
    assert k.room_patterns() == (
        "x-1:room:*:members", "x-1:room:*:seq", "x-1:room:*:history", "x-1:room:*:log",
        "x-1:room:*", "x-1:room:*:bytes",
    )
    builders = [k.room_members, k.room_seq, k.room_history, k.room_log, k.room_channel,
                k.room_bytes]
    for pattern, build in zip(k.room_patterns(), builders, strict=True):
        assert pattern.replace(WILDCARD, "#r*") == build("#r*")  # the room may hold a '*'
    assert k.nick_rooms_pattern.replace(WILDCARD, "bob") == k.nick_rooms("bob")


def test_a_prefix_with_the_wildcard_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot contain"):
        Keys("a*:")


def test_owner_records_and_incarnations_split_back() -> None:
    record = owner_record("gw~3f", "Alice Smith")
    assert record == "gw~3f Alice Smith"
    assert parse_owner_record(record) == ("gw~3f", "Alice Smith")
    assert incarnation_id("gw", "3f") == "gw~3f"
    assert incarnation_name("gw~3f") == "gw" and incarnation_name("gw") == "gw"
