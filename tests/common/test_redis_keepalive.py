"""TCP keepalive on every Redis socket the gateway opens (command and subscriber),
read back with ``getsockopt`` from an in-process gateway's connections."""

from __future__ import annotations

import socket
from typing import Any

from services.common.redis import stream_socket
from services.common.redis.connection import (
    KEEPALIVE_COUNT,
    KEEPALIVE_IDLE_S,
    KEEPALIVE_INTERVAL_S,
)
from tests.conftest import StartGateway
from tests.support.waiting import wait_until


def assert_keepalive(sock: Any) -> None:
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == KEEPALIVE_IDLE_S
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == KEEPALIVE_INTERVAL_S
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == KEEPALIVE_COUNT


def test_a_dead_redis_is_detected_within_a_minute() -> None:
    assert KEEPALIVE_IDLE_S + KEEPALIVE_INTERVAL_S * KEEPALIVE_COUNT <= 60


async def test_every_redis_socket_of_a_gateway_has_keepalive(start_gateway: StartGateway) -> None:
    gw = await start_gateway()
    await wait_until(lambda: gw.redis._conn is not None and gw.subscriber._stream is not None)
    assert gw.redis._conn is not None and gw.subscriber._stream is not None
    for stream in (gw.redis._conn.stream, gw.subscriber._stream):
        assert_keepalive(stream_socket(stream))
