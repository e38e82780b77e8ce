"""Real HAProxy (deploy/haproxy/haproxy.cfg) in front of three gateway processes and a
real redis-server, everything on free loopback ports.

- Clients connect through HAProxy; ``balance leastconn`` spreads them over the
  gateways, and each gateway logs the client's real address, which it can only
  know from the PROXY v2 header HAProxy sends (HAProxy connects from another port).
- A chat line crosses gateways.
- A gateway drained with SIGTERM tells its client why, HAProxy's health check on
  ``/readyz`` takes it out of rotation, and new clients land on the others.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.cluster.redis_server import find_redis_server
from services.common.probes import free_ports
from services.common.processes import Process, wait_until
from tests.support.gateway_process import GatewayProcess
from tests.support.haproxy import HAPROXY_CFG, haproxy_binary, haproxy_env, haproxy_server_states
from tests.support.line_client import LineClient, connect_client
from tests.support.processes import REPO
from tests.support.redis_server import RedisServer

pytestmark = [
    pytest.mark.skipif(haproxy_binary() is None, reason="haproxy is not installed"),
    pytest.mark.skipif(find_redis_server() is None, reason="no redis-server binary"),
]

GATEWAY_SETTINGS = {
    "proxy_protocol": "true",
    "trusted_proxies": "127.0.0.1/32",
    "drain_timeout_s": "5",
    "canary_interval_s": "0.5",
    "heartbeat_interval_s": "0.5",
    "heartbeat_ttl_s": "3",
}


@dataclass
class Gw:
    name: str
    port: int
    http_port: int
    proc: GatewayProcess


@dataclass
class Stack:
    lb_port: int
    gateways: list[Gw]
    haproxy: Process
    stats_socket: Path

    def gateway_of(self, client: LineClient, timeout_s: float = 10.0) -> Gw:
        """The gateway that logged ``client`` connecting from its real address and port."""
        peer = f"127.0.0.1:{client.local_port}"

        def find() -> Gw | None:
            for gw in self.gateways:
                for record in gw.proc.records():
                    if record.get("event") == "client.connected" and record.get("peer") == peer:
                        return gw
            return None

        return wait_until(find, timeout_s, f"a gateway logging client.connected peer={peer}")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    yield from _stack(tmp_path, {})


@pytest.fixture
def limited_stack(tmp_path: Path) -> Iterator[Stack]:
    yield from _stack(tmp_path, {"max_connections_per_ip": "2"})


def _stack(tmp_path: Path, extra_settings: dict[str, str]) -> Iterator[Stack]:
    with ExitStack() as stack:
        url = stack.enter_context(RedisServer()).url
        ports = free_ports(7)
        lb_port, chat_ports, http_ports = ports[0], ports[1:4], ports[4:7]
        gateways = []
        for i, (port, http_port) in enumerate(zip(chat_ports, http_ports, strict=True), start=1):
            settings = {"port": port, "http_port": http_port, **GATEWAY_SETTINGS,
                        **extra_settings}
            proc = stack.enter_context(GatewayProcess(url, f"gw{i}", **settings)).start(20)
            gateways.append(Gw(f"gw{i}", port, http_port, proc))
        sock = tmp_path / "haproxy.sock"
        env = haproxy_env(lb_port, [(g.port, g.http_port) for g in gateways], sock)
        argv = [haproxy_binary() or "haproxy", "-db", "-f", str(HAPROXY_CFG)]
        haproxy = stack.enter_context(Process("haproxy", argv, env=env, cwd=REPO))
        wait_until(
            lambda: (
                set(haproxy_server_states(sock).values()) == {"UP"} and len(haproxy_server_states(sock)) == 3
            ),
            15,
            "HAProxy reporting gw1..gw3 UP",
        )
        yield Stack(lb_port, gateways, haproxy, sock)
        for proc in [haproxy, *(g.proc for g in gateways)]:  # shown if the test failed
            print(proc.tail(200))
        # Exit order (reverse of entry): HAProxy, the gateways, then Redis.


def test_haproxy_config_is_valid() -> None:
    import subprocess

    env = haproxy_env(7000, [(7001, 8001), (7002, 8002), (7003, 8003)], Path("/tmp/x.sock"))
    result = subprocess.run(
        [haproxy_binary() or "haproxy", "-c", "-f", str(HAPROXY_CFG)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_clients_spread_with_real_addresses_and_chat_crosses_gateways(stack: Stack) -> None:
    nicks = ["alice", "bob", "carol"]
    with ExitStack() as closing:
        clients = {}
        for nick in nicks:
            client = closing.enter_context(connect_client(stack.lb_port))
            client.login(nick)
            clients[nick] = client
        landed = {nick: stack.gateway_of(client).name for nick, client in clients.items()}
        # leastconn with three idle gateways: each new client goes to an empty one.
        assert sorted(landed.values()) == ["gw1", "gw2", "gw3"], landed

        clients["alice"].send_line("hello across the cluster")
        for nick in nicks:
            clients[nick].read_until(
                lambda line: line == "#lobby <alice> hello across the cluster",
                10,
                f"alice's line at {nick} (on {landed[nick]})",
            )


def test_drained_gateway_leaves_rotation(stack: Stack) -> None:
    with ExitStack() as closing:
        clients = {}
        for nick in ["dora", "eve", "fred"]:
            client = closing.enter_context(connect_client(stack.lb_port))
            client.login(nick)
            clients[nick] = client
        landed = {nick: stack.gateway_of(c) for nick, c in clients.items()}
        drained = landed["dora"]

        drained.proc.signal(signal.SIGTERM)
        line = clients["dora"].read_until(
            lambda text: text.startswith("!! disconnected:"), 10, "the drain's disconnect reason"
        )
        assert "shutting down" in line, line
        assert clients["dora"].wait_closed(10), "the drained gateway kept the connection open"
        for nick in ("eve", "fred"):
            clients[nick].read_until(
                lambda text: text.startswith("#lobby -- dora left the chat!"),
                10,
                f"dora's leave at {nick}",
            )

        wait_until(
            lambda: (
                haproxy_server_states(stack.stats_socket)
                .get(drained.name, "")
                .startswith(("DOWN", "MAINT", "NOLB"))
            ),
            15,
            f"HAProxy taking {drained.name} out of rotation",
        )
        assert drained.proc.wait(15) == 0, drained.proc.tail()

        others = {gw.name for gw in stack.gateways} - {drained.name}
        for i in range(4):
            nick = f"late{i}"
            client = closing.enter_context(connect_client(stack.lb_port))
            client.login(nick)
            assert stack.gateway_of(client).name in others
            client.send_line(f"hi from {nick}")
            clients["eve"].read_until(
                lambda text, nick=nick: text == f"#lobby <{nick}> hi from {nick}",
                10,
                f"{nick}'s line at eve",
            )


def test_per_address_limit_applies_to_the_real_client_address(limited_stack: Stack) -> None:
    """Every client reaches the gateways from HAProxy's own address; the limit
    counts the address in the PROXY v2 header, across all three gateways."""
    with ExitStack() as closing:
        for i in range(2):
            client = closing.enter_context(connect_client(limited_stack.lb_port, source="127.0.0.51"))
            client.login(f"limited{i}")
        refused = LineClient(limited_stack.lb_port, source="127.0.0.51")
        closing.enter_context(refused)
        line = refused.read_until(lambda text: text.startswith("!! "), 10, "the refusal")
        assert line == "!! disconnected: too many connections from your address (2, at most 2)"
        assert refused.wait_closed(10)
        for i in range(2):  # another address through the same balancer has its own count
            client = closing.enter_context(connect_client(limited_stack.lb_port, source="127.0.0.52"))
            client.login(f"free{i}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
