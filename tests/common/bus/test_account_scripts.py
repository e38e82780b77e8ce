"""The account scripts against a real redis-server (redis-py as the oracle): the
"registered" check is atomic with the claim and the rename, only a nickname's
holder registers it, a password changes only from the hash it was checked
against, and failed attempts are counted and locked per account and address."""

from __future__ import annotations

import redis
import trio

from services.common.bus import AuthLock, ClaimResult, RegisterResult, RenameResult
from services.common.keys import Keys
from tests.common.bus.conftest import MakeBus

HASH = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA"
LIMITS = {"address": "10.9.9.9", "per_address": 100, "window_s": 3600.0}


async def test_a_registered_nick_is_claimed_only_with_its_current_hash(
    make_bus: MakeBus, rc: redis.Redis, keys: Keys
) -> None:
    g1, g2 = make_bus("g1~a"), make_bus("g2~b")
    assert await g1.claim_nick("alice", "Alice") is ClaimResult.CLAIMED
    assert await g1.register("alice", "Alice", HASH, **LIMITS) == (RegisterResult.REGISTERED, 0)
    assert rc.hgetall(keys.account("alice"))[b"hash"] == HASH.encode()
    assert rc.smembers(keys.accounts) == {b"alice"}
    await g1.release_nick("alice", "Alice")
    # Offline: a guest, a wrong hash, another display form without proof: refused.
    assert await g2.claim_nick("alice", "alice") is ClaimResult.REGISTERED
    assert await g2.claim_nick("alice", "ALICE", "$argon2id$other") is ClaimResult.REGISTERED
    assert not rc.hexists(keys.nicks, "alice")
    assert await g2.claim_nick("alice", "Alice", HASH) is ClaimResult.CLAIMED
    # Online: with the right proof it is still taken by its holder.
    assert await g1.claim_nick("alice", "Alice", HASH) is ClaimResult.TAKEN
    assert not ClaimResult.REGISTERED and ClaimResult.ALREADY_OURS  # true: it holds it


async def test_rename_to_a_registered_nick_needs_its_hash(
    make_bus: MakeBus, rc: redis.Redis, keys: Keys
) -> None:
    g1 = make_bus("g1~a")
    rc.hset(keys.account("alice"), mapping={"hash": HASH, "nick": "Alice"})
    await g1.claim_nick("guest", "guest")
    await g1.join_room("#a", "guest", "guest")
    before = {key: rc.dump(key) for key in rc.keys(f"{keys.prefix}*")}
    assert await g1.rename_nick("guest", "guest", "alice", "alice") is RenameResult.REGISTERED
    assert await g1.rename_nick("guest", "guest", "alice", "alice", "x") is RenameResult.REGISTERED
    assert {key: rc.dump(key) for key in rc.keys(f"{keys.prefix}*")} == before
    assert await g1.rename_nick("guest", "guest", "alice", "Alice", HASH) is RenameResult.RENAMED
    assert rc.hget(keys.nicks, "alice") == b"g1~a Alice"
    # Its holder changes only its case: no proof needed (it holds it).
    assert await g1.rename_nick("alice", "Alice", "alice", "ALICE") is RenameResult.RENAMED


async def test_only_the_holder_registers_and_only_once(
    make_bus: MakeBus, rc: redis.Redis, keys: Keys
) -> None:
    g1, g2 = make_bus("g1~a"), make_bus("g2~b")
    await g1.claim_nick("alice", "Alice")
    assert await g2.register("alice", "Alice", HASH, **LIMITS) == (RegisterResult.NOT_OURS, 0)
    # Held under another display form, or offline: not the caller's.
    assert await g1.register("alice", "alice", HASH, **LIMITS) == (RegisterResult.NOT_OURS, 0)
    assert await g1.register("bob", "bob", HASH, **LIMITS) == (RegisterResult.NOT_OURS, 0)
    assert not rc.exists(keys.account("alice")) and not rc.exists(keys.account("bob"))
    assert await g1.register("alice", "Alice", HASH, **LIMITS) == (RegisterResult.REGISTERED, 0)
    already = (RegisterResult.ALREADY_REGISTERED, 0)
    assert await g1.register("alice", "Alice", "other", **LIMITS) == already
    assert rc.hget(keys.account("alice"), "hash") == HASH.encode()


async def test_a_password_changes_only_from_the_hash_it_was_checked_against(
    make_bus: MakeBus, rc: redis.Redis, keys: Keys
) -> None:
    g1 = make_bus("g1~a")
    rc.hset(keys.account("alice"), mapping={"hash": HASH, "nick": "Alice"})
    assert await g1.set_password("alice", "stale", "new") is False
    assert await g1.set_password("alice", HASH, "new") is True
    assert rc.hget(keys.account("alice"), "hash") == b"new"
    assert await g1.set_password("nobody", HASH, "new") is False
    assert not rc.exists(keys.account("nobody"))


async def test_failed_attempts_lock_the_account_and_the_address_for_the_window(
    make_bus: MakeBus, rc: redis.Redis, keys: Keys
) -> None:
    bus = make_bus("g1~a")
    limits = {"per_account": 3, "per_address": 5, "window_s": 60.0}
    for _ in range(3):
        assert await bus.auth_attempt("alice", "10.0.0.1", **limits) == (AuthLock.NONE, 0)
    lock, retry_s = await bus.auth_attempt("alice", "10.0.0.2", **limits)
    assert lock is AuthLock.ACCOUNT and 55 < retry_s <= 60
    assert 55_000 < rc.pttl(keys.auth_failures_nick("alice")) <= 60_000
    # The same address on other accounts: 2 more, then the address is locked.
    for nick in ("bob", "carl"):
        assert (await bus.auth_attempt(nick, "10.0.0.1", **limits))[0] is AuthLock.NONE
    assert (await bus.auth_attempt("dave", "10.0.0.1", **limits))[0] is AuthLock.ADDRESS
    assert int(rc.get(keys.auth_failures_address("10.0.0.1"))) == 5
    # A correct password takes its attempt back.
    assert (await bus.auth_attempt("erin", "10.0.0.3", **limits))[0] is AuthLock.NONE
    await bus.auth_undo("erin", "10.0.0.3")
    assert int(rc.get(keys.auth_failures_nick("erin"))) == 0


async def test_concurrent_attempts_never_pass_the_limit(make_bus: MakeBus) -> None:
    buses = [make_bus(f"g{i}~x") for i in range(10)]
    allowed: list[AuthLock] = []

    async def attempt(i: int) -> None:
        lock, _ = await buses[i].auth_attempt(
            "alice", f"10.1.0.{i}", per_account=4, per_address=100, window_s=60
        )
        allowed.append(lock)

    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(attempt, i)
    assert allowed.count(AuthLock.NONE) == 4


async def test_an_address_registers_a_limited_number_of_accounts_per_window(
    make_bus: MakeBus, rc: redis.Redis, keys: Keys
) -> None:
    g1 = make_bus("g1~a")
    limits = {"address": "10.0.0.7", "per_address": 2, "window_s": 3600.0}
    for nick in ("ann", "ben", "cat"):
        await g1.claim_nick(nick, nick)
    assert (await g1.register("ann", "ann", HASH, **limits))[0] is RegisterResult.REGISTERED
    assert (await g1.register("ben", "ben", HASH, **limits))[0] is RegisterResult.REGISTERED
    result, retry_s = await g1.register("cat", "cat", HASH, **limits)
    assert result is RegisterResult.ADDRESS_LIMITED and 3590 < retry_s <= 3600
    assert not rc.exists(keys.account("cat"))
    assert rc.smembers(keys.accounts) == {b"ann", b"ben"}
    other = {**limits, "address": "10.0.0.8"}
    assert (await g1.register("cat", "cat", HASH, **other))[0] is RegisterResult.REGISTERED
