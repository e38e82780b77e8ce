"""Accounts across real gateway processes on one real Redis: register on one
gateway, identify on another; impostors refused while the owner is online and
offline, at the prompt and through /nick and /identify; wrong passwords limited
per account and per address across the cluster; /password; and the password
never in Redis or in a gateway's log in clear."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator

import pytest
import redis
import trio

from services.common.names import fold_nick
from tests.support.chat_client import ChatClient
from tests.support.gateway_process import GatewayProcess
from tests.support.redis_server import RedisServer

PASSWORD = "Tr0ub4dor-and-3"
OTHER = "correct-horse-battery"
PROMPT = r"^\?\? Choose a nickname:$"
ALICE = fold_nick("alice")  # the form Redis keys use ("allce": look-alikes fold together)


@pytest.fixture
def prefix(key_prefix: str) -> str:
    """A prefix of this test's own: counts (registrations, failures) must not leak
    from one test into the next."""
    return f"acct:{os.getpid()}:{key_prefix}"


@pytest.fixture
def pair(
    redis_server: RedisServer, gateway_procs: Callable[..., GatewayProcess], prefix: str
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    settings = {"key_prefix": prefix, "flood_burst": 500, "auth_failures_per_account": 3,
                "auth_failures_per_ip": 4, "registrations_per_ip": 4}
    yield (gateway_procs(redis_server.url, "gw1", **settings),
           gateway_procs(redis_server.url, "gw2", **settings))


async def connect_from(port: int, address: str = "127.0.0.1") -> ChatClient:
    """A client whose connection comes from ``address`` (any 127.0.0.0/8 address)."""
    return ChatClient(await trio.open_tcp_stream("127.0.0.1", port, local_address=address))


async def login(port: int, nick: str, password: str, address: str = "127.0.0.1") -> ChatClient:
    """Log in to a registered nickname at the prompt with ``NICK PASSWORD``."""
    client = await connect_from(port, address)
    await client.send(f"{nick} {password}")
    await client.expect(rf"^== welcome, {re.escape(nick)}!")
    client.nick = nick
    return client


async def register(port: int, nick: str, password: str = PASSWORD) -> ChatClient:
    client = await ChatClient.join(port, nick)
    await client.send(f"/register {password}")
    await client.expect(rf"^== {nick} is registered to you; from now on log in with: {nick} PASSWORD")
    return client


async def quit_(client: ChatClient) -> None:
    await client.send("/quit")
    await client.read_until_closed()


def everything_in_redis(rc: redis.Redis, prefix: str) -> list[bytes]:
    """Every key under ``prefix`` and every value (of any type) it holds."""
    found: list[bytes] = []
    for key in rc.scan_iter(match=f"{prefix}*", count=1000):
        found.append(key)
        kind = rc.type(key)
        if kind == b"string":
            found.append(rc.get(key))
        elif kind == b"hash":
            for field, value in rc.hgetall(key).items():
                found += [field, value]
        elif kind == b"set":
            found += list(rc.smembers(key))
        elif kind == b"list":
            found += rc.lrange(key, 0, -1)
        elif kind == b"zset":
            found += [member for member, _ in rc.zrange(key, 0, -1, withscores=True)]
        elif kind == b"none":
            continue  # deleted since the scan saw it (the gateways are live)
        else:
            raise AssertionError(f"unexpected type {kind!r} of {key!r}")
    return found


async def test_register_on_one_gateway_identify_on_another_impostors_refused(
    pair: tuple[GatewayProcess, GatewayProcess], rc: redis.Redis, prefix: str
) -> None:
    gw1, gw2 = pair
    alice = await register(gw1.port, "alice")
    await alice.send(f"/register {OTHER}")
    await alice.expect(r"^!! alice is registered already")

    # While alice is online: at the prompt (both forms), through /nick and /identify.
    impostor = await ChatClient.connect(gw2.port)
    await impostor.send("alice")
    await impostor.expect(r"^\?\? alice is registered; enter its password \(or /back")
    await impostor.send("guess-one-two")
    await impostor.expect(r"^!! wrong password for alice$")
    await impostor.expect(PROMPT)
    await impostor.send("ALICE guess-three-four")  # case does not matter
    await impostor.expect(r"^!! wrong password for ALICE$")
    await impostor.send("mallory")
    await impostor.expect(r"^== welcome, mallory!")
    await impostor.send("/nick Alice")
    await impostor.expect(r'^!! nickname "Alice" is registered; if it is yours: /identify Alice PASSWORD$')
    await impostor.send(f"/identify alice {PASSWORD}")  # right, but alice is online
    await impostor.expect(r"^!! alice is online in another session; /quit that one first$")

    await quit_(alice)
    await impostor.seen(r"^#lobby -- alice left the chat!$")
    # Offline: still refused, by every way in.
    await impostor.send("/nick alice")
    await impostor.expect(r'^!! nickname "alice" is registered')
    await impostor.send("/identify alice not-the-password")
    await impostor.expect(r"^!! wrong password for alice$")  # the 3rd in the window
    await impostor.send(f"/identify alice {PASSWORD}")
    await impostor.expect(r"^!! too many wrong passwords for alice; try again in \d+s$")
    await quit_(impostor)
    rc.delete(f"{prefix}auth:fail:nick:{ALICE}", f"{prefix}auth:fail:ip:127.0.0.1")
    squatter = await ChatClient.connect(gw1.port)
    await squatter.send("alice")
    await squatter.expect(r"^\?\? alice is registered")
    await squatter.send("/back")
    await squatter.expect(PROMPT)
    assert rc.hget(f"{prefix}nicks", ALICE) is None  # nobody took it meanwhile

    # The owner, from the other gateway: NICK PASSWORD at the prompt.
    owner = await login(gw2.port, "alice", PASSWORD)
    await owner.expect(r"^#lobby -- alice joined the chat!$")
    await owner.send(f"/identify {PASSWORD}")
    await owner.expect(r"^== you are identified as alice already$")
    await quit_(owner)
    # Or the password after the prompt asks for it, or /identify NICK from a guest nick.
    owner = await ChatClient.connect(gw1.port)
    await owner.send("alice")
    await owner.expect(r"^\?\? alice is registered")
    await owner.send(PASSWORD)
    await owner.expect(r"^== welcome, alice!")
    await quit_(owner)
    guest = await ChatClient.join(gw2.port, "guest1")
    await guest.send(f"/identify alice {PASSWORD}")
    await guest.expect(r"^== you are identified; you are now alice$")
    await guest.seen(r"^#lobby -- guest1 is now known as alice$")
    await guest.send("/who")
    await guest.expect(r"^== \d+ online: .*\balice\b")
    await quit_(guest)
    await quit_(squatter)

    # The password is nowhere in Redis, and no gateway logged it (nor its hash).
    stored = everything_in_redis(rc, prefix)
    assert stored and not [v for v in stored if PASSWORD.encode() in v]
    account = rc.hgetall(f"{prefix}account:{ALICE}")
    assert account[b"hash"].startswith(b"$argon2id$v=19$m=19456,t=2,p=1$")
    for gw in (gw1, gw2):
        gw.stop()
        text = gw.log_path.read_text()
        assert PASSWORD not in text and OTHER not in text and "guess-" not in text
        assert account[b"hash"].decode() not in text
    events = [(e["event"], e.get("nick")) for gw in (gw1, gw2) for e in gw.events()]
    assert ("account.registered", "alice") in events
    assert events.count(("account.identified", "alice")) == 3
    failed = [e for gw in (gw1, gw2) for e in gw.events() if e["event"] == "account.identify_failed"]
    assert {e["reason"] for e in failed} == {"wrong", "locked"}


async def test_wrong_passwords_are_limited_per_account_and_per_address_cluster_wide(
    pair: tuple[GatewayProcess, GatewayProcess],
) -> None:
    gw1, gw2 = pair
    for gw, nick in ((gw1, "bob"), (gw2, "carol"), (gw1, "dave"), (gw2, "erin")):
        await quit_(await register(gw.port, nick))
    # 4 registrations from one address in an hour (CHAT_REGISTRATIONS_PER_IP), cluster-wide.
    fifth = await ChatClient.join(gw1.port, "frank")
    await fifth.send(f"/register {PASSWORD}")
    await fifth.expect(r"^!! too many nicknames registered from your address; try again in \d+s$")
    await quit_(fifth)

    # Per account (3 in the window): from three addresses, on both gateways.
    for i, gw in enumerate((gw1, gw2, gw1)):
        attacker = await connect_from(gw.port, f"127.0.0.{10 + i}")
        await attacker.send("bob wrong-password")
        await attacker.expect(r"^!! wrong password for bob$")
        await attacker.aclose()
    late = await connect_from(gw2.port, "127.0.0.13")
    await late.send("bob wrong-password")
    await late.expect(r"^!! too many wrong passwords for bob; try again in (\d+)s$")
    await late.send(f"bob {PASSWORD}")  # even the right one, until the window ends
    await late.expect(r"^!! too many wrong passwords for bob")
    # Other accounts from that address still work.
    await late.send(f"erin {PASSWORD}")
    await late.expect(r"^== welcome, erin!")

    # Per address (4 in the window): spread over accounts, so none is locked.
    for gw, nick in ((gw1, "carol"), (gw2, "carol"), (gw1, "dave"), (gw2, "dave")):
        attacker = await connect_from(gw.port, "127.0.0.20")
        await attacker.send(f"{nick} wrong-password")
        await attacker.expect(rf"^!! wrong password for {nick}$")
        await attacker.aclose()
    attacker = await connect_from(gw1.port, "127.0.0.20")
    await attacker.send("/nick x")
    await attacker.expect(r"^!! choose a nickname first$")
    await attacker.send(f"carol {PASSWORD}")
    await attacker.expect(r"^!! too many wrong passwords from your address; try again in \d+s$")
    await attacker.send("guest2")
    await attacker.expect(r"^== welcome, guest2!")
    await attacker.send(f"/identify dave {PASSWORD}")
    await attacker.expect(r"^!! too many wrong passwords from your address")
    # The owners, from their own addresses, are not locked out by it.
    await quit_(await login(gw2.port, "carol", PASSWORD, "127.0.0.21"))
    await quit_(await login(gw1.port, "dave", PASSWORD, "127.0.0.22"))


async def test_password_change_and_bad_passwords(
    pair: tuple[GatewayProcess, GatewayProcess],
) -> None:
    gw1, gw2 = pair
    frank = await ChatClient.join(gw1.port, "frank")
    for bad, why in (("short", "needs at least 8 characters"), ("x" * 129, "can have at most 128 characters"),
                     ("/slashy-password", "cannot start with /")):
        await frank.send(f"/register {bad}")
        await frank.expect(rf"^!! a password {why}; your nickname was not registered$")
    await frank.send("/register two words-here")
    await frank.expect(r"^!! a password cannot contain spaces")
    await frank.send("/password anything at-all")
    await frank.expect(r"^!! frank is not registered to you; /register PASSWORD first$")
    await frank.send(f"/register {PASSWORD}")
    await frank.expect(r"^== frank is registered to you")
    await frank.send(f"/password wrong-old-one {OTHER}")
    await frank.expect(r"^!! wrong password for frank$")
    await frank.send(f"/password {PASSWORD} tiny")
    await frank.expect(r"^!! a password needs at least 8 characters; your password was not changed$")
    await frank.send(f"/password {PASSWORD} {OTHER}")
    await frank.expect(r"^== your password is changed$")
    await quit_(frank)

    old = await connect_from(gw2.port, "127.0.0.30")
    await old.send(f"frank {PASSWORD}")
    await old.expect(r"^!! wrong password for frank$")
    await old.aclose()
    frank = await login(gw2.port, "frank", OTHER)
    # Still identified after a case change; /password works with the new one.
    await frank.send("/nick FRANK")
    await frank.expect(r"^== you are now FRANK$")
    await frank.send(f"/password {OTHER} {PASSWORD}")
    await frank.expect(r"^== your password is changed$")
    # Renaming away leaves the account behind, offline and protected.
    await frank.send("/nick frankie")
    await frank.expect(r"^== you are now frankie$")
    await frank.send(f"/password {PASSWORD} {OTHER}")
    await frank.expect(r"^!! frankie is not registered to you")
    await frank.send("/nick frank")
    await frank.expect(r'^!! nickname "frank" is registered')
    await frank.send(f"/identify frank {PASSWORD}")
    await frank.expect(r"^== you are identified; you are now frank$")
