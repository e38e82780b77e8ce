"""Fixtures for the bus: a connected Trio Redis client on the session's
redis-server and buses of several gateways on it, all under the test's prefix."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import trio

from services.common.bus import Bus
from services.common.config import parse_redis_url
from services.common.keys import Keys
from services.common.redis import RedisClient
from tests.support.redis_server import RedisServer

MakeBus = Callable[[str], Bus]


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[RedisClient]:
    """The product's own client (the one the scripts run through), connected."""
    redis = RedisClient(parse_redis_url(redis_server.url), timeout_s=5.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(redis.run)
        await redis.wait_connected()
        yield redis
        nursery.cancel_scope.cancel()


@pytest.fixture
def keys(key_prefix: str) -> Keys:
    return Keys(key_prefix)


@pytest.fixture
def make_bus(client: RedisClient, keys: Keys) -> MakeBus:
    """``make_bus(gateway_id)``: that gateway's bus over the shared client."""
    return lambda gateway_id: Bus(client, keys, gateway_id)
