"""The Trio RESP client against a real redis-server."""

from __future__ import annotations

import pytest
import redis
import trio

from services.common.config import parse_redis_url
from services.common.redis import (
    CommandNotSent,
    RedisClient,
    RedisReplyError,
    RedisUnavailable,
    Subscriber,
)
from tests.support.redis_server import RedisServer, free_port
from tests.support.waiting import wait_until


async def test_pipelined_commands_from_many_tasks_get_their_own_replies(
    redis_server: RedisServer, key_prefix: str
) -> None:
    client = RedisClient(parse_redis_url(redis_server.url))
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await client.wait_connected()
        results: dict[int, object] = {}

        async def worker(i: int) -> None:
            key = f"{key_prefix}k{i}"
            await client.execute("SET", key, f"v{i}")
            results[i] = await client.execute("GET", key)

        async with trio.open_nursery() as workers:
            for i in range(500):
                workers.start_soon(worker, i)
        assert results == {i: f"v{i}".encode() for i in range(500)}
        nursery.cancel_scope.cancel()


async def test_error_replies_raise_and_the_connection_survives(redis_server: RedisServer) -> None:
    client = RedisClient(parse_redis_url(redis_server.url))
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await client.wait_connected()
        with pytest.raises(RedisReplyError, match="unknown command"):
            await client.execute("NOSUCHCOMMAND")
        assert await client.execute("PING") == b"PONG"
        nursery.cancel_scope.cancel()


async def test_not_connected_raises_at_once() -> None:
    client = RedisClient(parse_redis_url(f"redis://127.0.0.1:{free_port()}/0"))
    with pytest.raises(CommandNotSent):  # a RedisUnavailable that certainly did not run
        await client.execute("PING")
    assert issubclass(CommandNotSent, RedisUnavailable)


async def test_password_and_database_from_the_url() -> None:
    with RedisServer(password="pw") as server:
        client = RedisClient(parse_redis_url(f"redis://:pw@127.0.0.1:{server.port}/5"))
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            await client.wait_connected()
            await client.execute("SET", "in-db-5", "yes")
            nursery.cancel_scope.cancel()
        assert server.client(db=5).get("in-db-5") == b"yes"
        assert server.client(db=0).get("in-db-5") is None


async def test_reconnects_after_client_kill(redis_server: RedisServer, rc: redis.Redis) -> None:
    client = RedisClient(parse_redis_url(redis_server.url), name="kill-me-cmd")
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await client.wait_connected()
        rc.execute_command("CLIENT", "KILL", "ID", _id("kill-me-cmd", rc))
        await wait_until(lambda: client.reconnects == 1 and client.connected)
        assert await client.execute("PING") == b"PONG"
        nursery.cancel_scope.cancel()


def _id(name: str, rc: redis.Redis) -> str:
    for entry in rc.client_list():
        if entry.get("name") == name:
            return str(entry["id"])
    raise AssertionError(f"no client named {name}")


async def test_subscriber_resubscribes_after_reconnect(
    redis_server: RedisServer, rc: redis.Redis, key_prefix: str
) -> None:
    got: list[tuple[bytes, bytes]] = []
    sub = Subscriber(parse_redis_url(redis_server.url), lambda c, d: got.append((c, d)),
                     name="kill-me-sub")
    channel = f"{key_prefix}chan"
    async with trio.open_nursery() as nursery:
        await nursery.start(sub.run)
        await wait_until(lambda: sub.connected)
        await sub.subscribe(channel)
        rc.publish(channel, "one")
        await wait_until(lambda: len(got) == 1)
        rc.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await wait_until(lambda: sub.reconnects == 1 and sub.connected)
        await wait_until(lambda: rc.pubsub_numsub(channel)[0][1] == 1)
        rc.publish(channel, "two")
        await wait_until(lambda: len(got) == 2)
        assert got == [(channel.encode(), b"one"), (channel.encode(), b"two")]
        await sub.unsubscribe(channel)
        await wait_until(lambda: rc.pubsub_numsub(channel)[0][1] == 0)
        nursery.cancel_scope.cancel()


async def test_reconnect_is_reported_once_redis_confirmed_the_resubscriptions(
    redis_server: RedisServer, rc: redis.Redis, key_prefix: str
) -> None:
    """Whoever looks for what was missed (on ``on_reconnect``) cannot miss it again:
    a message published from inside the callback is received."""
    got: list[bytes] = []
    channels = [f"{key_prefix}c{i}" for i in range(50)]
    sub = Subscriber(parse_redis_url(redis_server.url), lambda c, d: got.append(d),
                     name="resub-sub", on_reconnect=lambda: rc.publish(channels[-1], "probe"))
    async with trio.open_nursery() as nursery:
        await nursery.start(sub.run)
        await wait_until(lambda: sub.connected)
        for channel in channels:
            await sub.subscribe(channel)
        for attempt in range(1, 6):
            rc.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            await wait_until(lambda n=attempt: sub.reconnects == n and len(got) == n)  # type: ignore[misc]
        assert got == [b"probe"] * 5
        nursery.cancel_scope.cancel()


async def test_readonly_reply_is_not_sent_and_reconnects(redis_server: RedisServer) -> None:
    """A replica answers writes with READONLY (a failover demoted the server we
    talk to): the caller learns the command did not run, and the connection is
    dropped so that the primary is looked up again; in standalone mode too."""
    with RedisServer(extra=["--replicaof", "127.0.0.1", str(redis_server.port)]) as replica:
        client = RedisClient(parse_redis_url(replica.url), timeout_s=2.0)
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            await client.wait_connected()
            assert await client.execute("GET", "x") is None  # reads work on a replica
            with pytest.raises(CommandNotSent, match="READONLY"):
                await client.execute("SET", "x", "1")
            await wait_until(lambda: client.reconnects >= 1, 10.0, "a reconnect")
            nursery.cancel_scope.cancel()
