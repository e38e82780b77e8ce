"""Fixtures: real Redis servers and gateways (in-process on port 0, or as processes)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
import trio

from services.common.config import Settings, parse_redis_url
from services.common.logging import configure_logging
from services.gateway.gateway import Gateway
from tests.support.chat_client import ChatClient
from tests.support.gateway_process import GatewayProcess
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until, wait_until_sync

# Tests import these from here too; they live in tests/support/waiting.py.
__all__ = ["StartGateway", "make_settings", "wait_until", "wait_until_sync"]

_prefixes = itertools.count(1)

GENEROUS_ADDRESS_LIMITS: dict[str, Any] = {
    "max_connections_per_ip": 100000,
    "connect_rate_per_ip": 100000.0,
    "connect_burst_per_ip": 100000,
}


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the whole session; tests isolate with a key prefix."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def fresh_redis(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """A redis-server of this test's own, for tests that kill or restart it.

    Parametrize it indirectly with a dict of :class:`RedisServer` options (e.g.
    ``{"appendonly": True}``) for another kind of server; by default, no persistence.
    """
    options: dict[str, Any] = getattr(request, "param", None) or {}
    with RedisServer(**options) as server:
        yield server


@pytest.fixture
def key_prefix() -> str:
    return f"t{next(_prefixes)}:"


@pytest.fixture
def rc(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """The independent oracle: redis-py on the session's Redis."""
    client = redis_server.client()
    yield client
    client.close()


def make_settings(redis_url: str, key_prefix: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "listen": Settings().listen.__class__("127.0.0.1", 0),
        "redis_url": parse_redis_url(redis_url),
        "key_prefix": key_prefix,
        "log_format": "json",
        "heartbeat_interval_s": 0.5,
        "heartbeat_ttl_s": 3.0,
        "canary_interval_s": 0.5,
        "canary_timeout_s": 3.0,
        # Tests connect dozens of clients from 127.0.0.1: only the tests about the
        # per-address limits meet the defaults (finite, so admission still runs).
        **GENEROUS_ADDRESS_LIMITS,
    }
    values.update(overrides)
    return Settings(**values)


StartGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def start_gateway(
    redis_server: RedisServer, key_prefix: str
) -> AsyncIterator[StartGateway]:
    """Start in-process gateways on port 0; all are stopped at the end of the test."""
    configure_logging(fmt="json", level="warning")
    async with trio.open_nursery() as nursery:

        async def start(*, wait_available: bool = True, **overrides: Any) -> Gateway:
            url = overrides.pop("redis_url", redis_server.url)
            gateway = Gateway(make_settings(url, key_prefix, **overrides))
            await nursery.start(gateway.serve)
            if wait_available:
                await wait_until(lambda: gateway.available)
            return gateway

        yield start
        nursery.cancel_scope.cancel()


@pytest.fixture(autouse=True)
def _close_chat_clients() -> Iterator[None]:
    yield
    ChatClient.close_all()


@pytest.fixture
def gateway_procs() -> Iterator[Callable[..., GatewayProcess]]:
    """Start gateway processes; every one is killed and its log removed afterwards."""
    started: list[GatewayProcess] = []

    def start(redis_url: str, gateway_id: str, **settings: Any) -> GatewayProcess:
        proc = GatewayProcess(redis_url, gateway_id, **settings)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.cleanup()
