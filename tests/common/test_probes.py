"""The blocking probes (services/common/probes.py) against real and fake servers."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.probes import free_ports, haproxy_stat, http_get, port_is_free, redis_ping
from tests.support.redis_server import RedisServer


def test_free_ports_are_distinct_and_free() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5
    assert all(port_is_free(port) for port in ports)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert not port_is_free(busy.getsockname()[1])


def test_redis_ping(redis_server: RedisServer) -> None:
    assert redis_ping(redis_server.port)
    assert not redis_ping(free_ports(1)[0])


def test_redis_ping_with_a_password() -> None:
    with RedisServer(password="s3 cret") as server:
        assert redis_ping(server.port, password="s3 cret")
        assert not redis_ping(server.port)
        assert not redis_ping(server.port, password="wrong")


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"ready\n" if self.path == "/readyz" else b"nope\n"
        self.send_response(200 if self.path == "/readyz" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


def test_http_get(http_port: int) -> None:
    assert http_get(http_port, "/readyz") == (200, "ready\n")
    assert http_get(http_port, "/other") == (404, "nope\n")
    assert http_get(free_ports(1)[0], "/readyz") == (None, "")


def test_haproxy_stat(tmp_path: Path) -> None:
    path = tmp_path / "stats.sock"
    assert haproxy_stat(path) == []
    csv = "# pxname,svname,status,\nchat,FRONTEND,OPEN,\ngateways,gw1,UP,\n\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen()

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                assert conn.recv(100) == b"show stat\n"
                conn.sendall(csv.encode())

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        rows = haproxy_stat(path)
        thread.join()
    assert [(r["pxname"], r["svname"], r["status"]) for r in rows] == [
        ("chat", "FRONTEND", "OPEN"),
        ("gateways", "gw1", "UP"),
    ]
