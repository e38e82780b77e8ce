"""Password hashing and checking in the gateway: hashes run in worker threads,
no more than CHAT_PASSWORD_HASH_THREADS at once, while the event loop carries
on; the password rules; and password commands cost a high flood price."""

from __future__ import annotations

import threading
import time

import pytest
import redis
import trio
from argon2 import PasswordHasher

from services.common.bus import AuthLock
from services.common.config import HostPort, Settings
from services.gateway.accounts import (
    HASH_MEMORY_KIB,
    Accounts,
    Check,
    Checked,
    locked_line_text,
    password_problem,
)
from tests.conftest import StartGateway
from tests.support.chat_client import ChatClient
from tests.support.redis_server import RedisServer

SETTINGS = Settings(listen=HostPort("127.0.0.1", 0), password_hash_threads=2)


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("eight-ch", None),
        ("x" * 128, None),
        ("seven-c", "at least 8"),
        ("x" * 129, "at most 128"),
        ("has a space", "cannot contain spaces"),
        ("/leading-slash", "cannot start with /"),
        ("ünïcödé-ok", None),
    ],
)
def test_password_rules(password: str, problem: str | None) -> None:
    found = password_problem(password, SETTINGS)
    assert (found is None) if problem is None else (problem in (found or ""))
    assert password not in (found or "")  # never echoed


def test_a_lock_says_what_is_locked_and_for_how_long_in_whole_seconds() -> None:
    account = Checked(Check.LOCKED, lock=AuthLock.ACCOUNT, retry_after_s=12.2)
    assert locked_line_text(account, "alice") == "too many wrong passwords for alice; try again in 13s"
    address = Checked(Check.LOCKED, lock=AuthLock.ADDRESS, retry_after_s=0.01)
    assert locked_line_text(address, "alice") == (
        "too many wrong passwords from your address; try again in 1s"
    )


async def test_hashes_run_in_threads_at_most_the_limit_at_once_while_the_loop_runs() -> None:
    accounts = Accounts(SETTINGS, bus=None)  # type: ignore[arg-type]  # hash() needs no Redis
    lock = threading.Lock()
    running = peak = 0
    loop_thread = threading.get_ident()
    threads: set[int] = set()

    def slow_hash(password: str) -> str:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            threads.add(threading.get_ident())
        time.sleep(0.05)
        with lock:
            running -= 1
        return f"hash of {len(password)}"

    class SlowHasher:
        hash = staticmethod(slow_hash)

    accounts.hasher = SlowHasher()  # type: ignore[assignment]
    ticks = 0

    async def ticker(done: trio.Event) -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += running > 0  # the loop ran while a hash was being computed
            await trio.sleep(0.005)

    done = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker, done)
        async with trio.open_nursery() as hashing:
            for i in range(6):
                hashing.start_soon(accounts.hash, f"password-{i}")
        done.set()
    assert peak == 2
    assert loop_thread not in threads
    assert ticks >= 3  # the loop kept running through ~0.15 s of hashing


async def test_the_real_hash_is_argon2id_with_the_documented_parameters() -> None:
    accounts = Accounts(SETTINGS, bus=None)  # type: ignore[arg-type]
    stored = await accounts.hash("correct-horse")
    assert stored.startswith(f"$argon2id$v=19$m={HASH_MEMORY_KIB},t=2,p=1$")
    assert "correct-horse" not in stored
    assert await accounts._matches(stored, "correct-horse")
    assert not await accounts._matches(stored, "wrong-horse")
    assert not await accounts._matches("not a hash", "correct-horse")


async def test_password_commands_cost_five_lines_of_the_flood_budget(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway(flood_burst=12, flood_rate=0.01)
    client = await ChatClient.join(gw.ports[0], "flooder")
    for _ in range(2):
        await client.send("/identify nobody some-password")
        await client.expect(r"^!! nobody is not registered$")
    await client.send("/register some-password")  # 10 of 12 spent: refused
    await client.expect(r"^!! too many lines, slow down; your line was not sent$")
    await client.send("two lines left")
    await client.expect(r"^#lobby <flooder> two lines left$")


async def test_a_hash_with_old_parameters_is_replaced_at_the_next_login(
    start_gateway: StartGateway, rc: redis.Redis, key_prefix: str
) -> None:
    gw = await start_gateway()
    old = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash("old-params-pw")
    rc.hset(f"{key_prefix}account:olga", mapping={"hash": old, "nick": "olga"})
    client = await ChatClient.connect(gw.ports[0])
    await client.send("olga old-params-pw")
    await client.expect(r"^== welcome, olga!")
    stored = rc.hget(f"{key_prefix}account:olga", "hash").decode()
    assert stored.startswith(f"$argon2id$v=19$m={HASH_MEMORY_KIB},t=2,p=1$")
    await client.send("/password old-params-pw new-params-pw")  # the session knows the new hash
    await client.expect(r"^== your password is changed$")


async def test_password_commands_while_redis_is_down_say_so_and_keep_nothing(
    start_gateway: StartGateway, fresh_redis: RedisServer
) -> None:
    gw = await start_gateway(redis_url=fresh_redis.url, redis_timeout_s=1.0, flood_burst=100)
    client = await ChatClient.join(gw.ports[0], "dora")
    fresh_redis.kill()
    await client.expect(r"^== chat interrupted: ")
    unavailable = r"^!! chat is unavailable right now \(cannot reach Redis\); try again shortly$"
    for line in ("/register dora-password", "/identify dora dora-password",
                 "/identify other other-password"):
        await client.send(line)
        await client.expect(unavailable)
    newcomer = await ChatClient.connect(gw.ports[0])
    await newcomer.send("erin erin-password")
    await newcomer.expect(unavailable)
    await newcomer.expect(r"^\?\? Choose a nickname:$")
    fresh_redis.start()  # empty: nothing was kept to be written later
    await client.expect(r"^== chat is back$", timeout=15)
    assert fresh_redis.client().keys("*account*") == []


async def test_failures_count_against_the_real_client_address_behind_a_proxy(
    start_gateway: StartGateway, rc: redis.Redis, key_prefix: str
) -> None:
    gw = await start_gateway(proxy_protocol=True, flood_burst=100)
    rc.hset(f"{key_prefix}account:pat", mapping={"hash": "$argon2id$not-real", "nick": "pat"})
    client = await ChatClient.connect(gw.ports[0])
    await client.send(b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 7000\r\n")
    await client.send("pat wrong-password")
    await client.expect(r"^!! wrong password for pat$")
    assert rc.get(f"{key_prefix}auth:fail:ip:203.0.113.7") == b"1"
    assert rc.get(f"{key_prefix}auth:fail:ip:127.0.0.1") is None
