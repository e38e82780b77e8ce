"""The .lua files and their loader: every script documents its KEYS and ARGV,
builds no key name of its own, and writes no key it was not given; scripts
survive a flushed script cache."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Sequence
from importlib import resources
from typing import Any

import pytest
import redis
import trio

from services.common.bus import Bus, Script
from services.common.bus.scripts import script_names, script_source
from services.common.config import parse_redis_url
from services.common.keys import WILDCARD, Keys
from services.common.redis import Arg, RedisClient
from tests.support.redis_server import RedisServer

LUA = resources.files("services.common.bus").joinpath("lua")
SCRIPTS = script_names()


def header_and_body(name: str) -> tuple[str, str]:
    text = LUA.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    lines = text.splitlines()
    end = next(i for i, line in enumerate(lines) if not line.startswith("--"))
    return "\n".join(lines[:end]), "\n".join(lines[end:])


def declared(header: str, table: str) -> set[int]:
    """Indexes of ``-- KEYS[n]`` / ``-- ARGV[n..m]`` header lines."""
    found: set[int] = set()
    for first, last in re.findall(rf"^-- {table}\[(\d+)(?:\.\.(\d+))?\]", header, re.MULTILINE):
        found.update(range(int(first), int(last or first) + 1))
    return found


def test_every_script_is_run_by_the_bus_and_ships_with_the_package() -> None:
    expected = ["admit", "auth_attempt", "auth_undo", "claim", "epoch_check", "join_room",
                "leave_room",
                "publish", "reap", "register", "release", "release_addr", "rename", "resolve",
                "set_addr", "set_password"]
    assert script_names() == expected
    used = {v.name for v in vars(Bus).values() if isinstance(v, Script)}
    assert used == set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_each_header_names_the_script_and_states_keys_argv_and_replies(name: str) -> None:
    header, body = header_and_body(name)
    assert header.startswith(f"-- {name}: ")
    assert "Returns" in header
    keys, argv = declared(header, "KEYS"), declared(header, "ARGV")
    used_keys = {int(i) for i in re.findall(r"KEYS\[(\d+)\]", body)}
    assert used_keys == keys == set(range(1, len(keys) + 1))  # each declared key used
    used_argv = {int(i) for i in re.findall(r"ARGV\[(\d+)\]", body)}
    assert used_argv <= argv == set(range(1, len(argv) + 1))


@pytest.mark.parametrize("name", [*SCRIPTS, "_rooms"])
def test_no_script_spells_a_key_name(name: str) -> None:
    """Key names come from keys.py only: no Lua string literal holds a piece of one."""
    text = LUA.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    code = "\n".join(line.split("--", 1)[0] for line in text.splitlines())
    literals = re.findall(r"'([^']*)'|\"([^\"]*)\"", code)
    fragments = ("nicks", "gateways", "gw:", "room", "nick:", "epoch", ":seq", ":log",
                 ":history", ":members", ":alive", ":info", "chat:", "node:", "all")
    for single, double in literals:
        literal = single or double
        assert not any(f in literal for f in fragments), (name, literal)


def test_included_helpers_come_first_once() -> None:
    source = script_source("release")
    assert source.count("local function publish_room(") == 1
    assert source.index("local function publish_room(") < source.index("-- release: ")
    assert "local function" not in script_source("claim")  # includes nothing


async def test_a_flushed_script_cache_is_refilled_with_eval(
    redis_server: RedisServer, rc: redis.Redis, key_prefix: str
) -> None:
    keys = Keys(key_prefix)
    client = RedisClient(parse_redis_url(redis_server.url))
    claim = Script("claim")
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await client.wait_connected()
        rc.script_flush()
        assert rc.script_exists(claim.sha) == [False]
        args = ["ann", "g~1 Ann", ""]
        claim_keys = [keys.nicks, keys.gateway_nicks("g~1"), keys.account("ann")]
        assert await claim(client, claim_keys, args) == 2
        assert rc.script_exists(claim.sha) == [True]  # EVAL cached it for EVALSHA
        assert await claim(client, claim_keys, args) == 1
        nursery.cancel_scope.cancel()


# -- every key a script writes is one it was given -------------------------------------------
class KeyWrites:
    """Keyspace notifications of one redis-server: :meth:`take` returns the keys
    written since the last call, exactly (up to a marker key it sets)."""

    def __init__(self, rc: redis.Redis, marker: str) -> None:
        self.rc = rc
        self.marker = marker
        rc.config_set("notify-keyspace-events", "EA")
        self.pubsub = rc.pubsub()
        self.pubsub.psubscribe("__keyevent@0__:*")
        assert self.pubsub.get_message(timeout=5) is not None  # subscribed

    def take(self) -> set[str]:
        self.rc.set(self.marker, 1)
        written: set[str] = set()
        while True:
            message = self.pubsub.get_message(timeout=5)
            assert message is not None, "the marker's notification never came"
            key = message["data"].decode()
            if key == self.marker:
                return written
            written.add(key)


def allowed(key: str, keys: Sequence[str], args: Sequence[Arg]) -> bool:
    if key in keys:
        return True
    for pattern in args:
        if isinstance(pattern, str) and pattern.count(WILDCARD) == 1:
            head, tail = pattern.split(WILDCARD)
            if key.startswith(head) and key.endswith(tail) and len(key) > len(head) + len(tail):
                return True
    return False


@pytest.fixture
async def watched_bus(
    fresh_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Callable[[str], Bus], list[str]]]:
    """Buses on a redis-server of the test's own whose every script call checks
    that the keys it wrote were passed in KEYS or match a pattern passed in ARGV."""
    rc = fresh_redis.client()
    writes = KeyWrites(rc, "marker")
    calls: list[str] = []
    run = Script.__call__

    async def checked(self: Script, client: RedisClient, keys: Sequence[str],
                      args: Sequence[Arg] = ()) -> Any:
        writes.take()
        reply = await run(self, client, keys, args)
        undeclared = {k for k in writes.take() if not allowed(k, keys, args)}
        assert not undeclared, (self.name, undeclared)
        calls.append(self.name)
        return reply

    monkeypatch.setattr(Script, "__call__", checked)
    client = RedisClient(parse_redis_url(fresh_redis.url))
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await client.wait_connected()
        yield (lambda gateway: Bus(client, Keys("chat:"), gateway)), calls
        nursery.cancel_scope.cancel()
    writes.pubsub.close()
    rc.close()


async def test_every_key_a_script_writes_was_passed_to_it(
    watched_bus: tuple[Callable[[str], Bus], list[str]],
) -> None:
    make_bus, calls = watched_bus
    g1, g2 = make_bus("g1~a"), make_bus("g2~b")
    await g1.check_epoch()
    await g1.claim_nick("alice", "Alice")
    await g2.claim_nick("bob", "Bob")
    for room in ("#a", "#b"):
        await g1.join_room(room, "alice", "Alice")
    await g2.join_room("#b", "bob", "Bob")
    await g1.publish("#a", "msg", "Alice", "hi")
    await g1.publish("#b", "enter", "Alice")
    await g1.rename_nick("alice", "Alice", "alicia", "Alicia")
    await g1.rename_nick("alicia", "Alicia", "alicia", "ALICIA")
    await g1.leave_room("#a", "alicia")
    await g1.release_nick("alicia", "ALICIA", "bye")
    await g1.claim_nick("carl", "Carl")
    await g1.join_room("#c", "carl", "Carl")
    await g1.register("carl", "Carl", "$argon2id$old", address="127.0.0.1", per_address=5,
                      window_s=60)
    await g1.set_password("carl", "$argon2id$old", "$argon2id$new")
    await g1.auth_attempt("carl", "127.0.0.1", per_account=5, per_address=5, window_s=60)
    await g1.auth_undo("carl", "127.0.0.1")
    await g1.heartbeat(0.05, {"pid": 1})
    await trio.sleep(0.1)
    assert await g2.reap("g1~a") == ["Carl"]
    await g2.heartbeat(60, {"pid": 2})
    assert await g1.reap("g2~b", force=True) == ["Bob"]
    assert await g1.admit_address("10.0.0.1", 2, 5.0, 3) == (True, "", 1)
    assert await g2.admit_address("10.0.0.1", 2, 5.0, 3) == (True, "", 2)
    assert await g1.admit_address("10.0.0.1", 2, 5.0, 3) == (False, "connections", 2)
    assert await g1.admit_address("10.0.0.1", 2, 5.0, 3) == (False, "rate", 0)  # burst spent
    assert await g1.release_address("10.0.0.1") == 0
    assert await g2.set_address_count("10.0.0.1", 4)
    assert await g1.release_addresses("g2~b", force=True) == 1
    assert set(calls) == set(SCRIPTS) - {"resolve"}  # resolve only reads
