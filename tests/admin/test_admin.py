"""``chat-admin`` against a running cluster: a real redis-server and two gateway
processes (on free loopback ports, with a non-default key prefix), clients on both.

- ``who`` and ``gateways`` list what the gateways recorded;
- ``kick`` makes the owning gateway disconnect the user with the reason;
- ``announce`` reaches clients on both gateways.

Most commands run in-process (``main([...])``, output captured); one runs as
``python -m services.admin`` to prove the entry point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest

from services.admin import main
from services.cluster.redis_server import find_redis_server
from services.common.probes import free_ports
from services.common.processes import wait_until
from tests.support.gateway_process import GatewayProcess
from tests.support.line_client import LineClient, connect_client
from tests.support.processes import REPO
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.skipif(find_redis_server() is None, reason="no redis-server binary")

PREFIX = "adm:"
SETTINGS = {
    "key_prefix": PREFIX,
    "heartbeat_interval_s": "0.3",
    "heartbeat_ttl_s": "3",
    "canary_interval_s": "0.5",
    "drain_timeout_s": "3",
}


@dataclass
class Cluster:
    redis_url: str
    gateways: dict[str, GatewayProcess]

    def admin(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
        code = main(["--redis-url", self.redis_url, "--key-prefix", PREFIX, *argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    def admin_json(self, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
        code, out, err = self.admin(capsys, *argv, "--json")
        assert code == 0, err
        return json.loads(out)

    def client(self, gateway: str, nick: str, stack: ExitStack) -> LineClient:
        client = stack.enter_context(connect_client(self.gateways[gateway].port))
        client.login(nick)
        return client


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with ExitStack() as stack:
        redis = stack.enter_context(RedisServer())
        gateways = {}
        for gw in ("adm1", "adm2"):
            gateway = stack.enter_context(GatewayProcess(redis.url, gw, http_port=0, **SETTINGS))
            gateways[gw] = gateway.start(20)
        yield Cluster(redis.url, gateways)
        for gateway in gateways.values():  # shown if the test failed
            print(gateway.tail(100))


def test_who_and_gateways_list_the_cluster(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    with ExitStack() as stack:
        cluster.client("adm1", "Alice", stack)
        cluster.client("adm2", "bob", stack)
        cluster.client("adm1", "carol", stack)

        who = cluster.admin_json(capsys, "who")
        assert who["count"] == 3
        assert {(o["nick"], o["gateway"], o["gateway_alive"]) for o in who["online"]} == {
            ("Alice", "adm1", True),
            ("bob", "adm2", True),
            ("carol", "adm1", True),
        }
        code, out, _ = cluster.admin(capsys, "who")
        assert code == 0
        assert out.splitlines()[0].split() == ["NICK", "GATEWAY"]
        assert "3 online on 2 gateway(s)" in out

        def counts() -> dict[str, Any] | None:
            states = {g["gateway"]: g for g in cluster.admin_json(capsys, "gateways")["gateways"]}
            got = {gw: (s["clients"], s["nicks"]) for gw, s in states.items()}
            return states if got == {"adm1": (2, 2), "adm2": (1, 1)} else None

        states = wait_until(counts, 10, "client counts 2 and 1 in the heartbeats")
        for gw, gateway in cluster.gateways.items():
            state = states[gw]
            assert state["alive"] is True
            assert state["heartbeat_age_s"] is not None and state["heartbeat_age_s"] < 3
            assert state["listen"] == f"127.0.0.1:{gateway.port}"
            assert state["pid"] == gateway.pid
        code, out, _ = cluster.admin(capsys, "gateways")
        assert code == 0
        assert out.splitlines()[0].split()[:5] == ["GATEWAY", "STATE", "HEARTBEAT", "CLIENTS", "NICKS"]
        assert "2 alive, 0 dead; 3 client(s)" in out


def test_kick_disconnects_the_user_with_the_reason(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    with ExitStack() as stack:
        alice = cluster.client("adm1", "alice", stack)
        bob = cluster.client("adm2", "bob", stack)
        mallory = cluster.client("adm2", "Mallory", stack)

        code, out, err = cluster.admin(capsys, "kick", "mallory", "flooding", "the", "lobby")
        assert code == 0, err
        assert out.strip() == "kicked Mallory from adm2: flooding the lobby"

        line = mallory.read_until(lambda text: text.startswith("!! disconnected:"), 10, "the kick")
        assert "flooding the lobby" in line, line
        assert mallory.wait_closed(10), "the kicked client's connection stayed open"
        for watcher in (alice, bob):
            watcher.read_until(
                lambda text: text.startswith("#lobby -- Mallory left the chat!"), 10, "the leave"
            )
        wait_until(
            lambda: "mallory" not in {o["nick"].lower() for o in cluster.admin_json(capsys, "who")["online"]},
            10,
            "Mallory gone from who",
        )

        code, out, err = cluster.admin(capsys, "kick", "nobody")
        assert code == 1
        assert "no such nick: nobody" in err


def test_announce_reaches_clients_on_every_gateway(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    with ExitStack() as stack:
        alice = cluster.client("adm1", "alice", stack)
        bob = cluster.client("adm2", "bob", stack)

        result = cluster.admin_json(capsys, "announce", "maintenance", "at", "noon")
        assert result == {"text": "maintenance at noon", "gateways": 2}
        for client in (alice, bob):
            client.read_until(
                lambda text: text == "== announcement: maintenance at noon", 10, "the announcement"
            )

        code, _, err = cluster.admin(capsys, "announce", "bad \x1b[31m text")
        assert code == 2
        assert "control characters" in err


def test_accounts_lists_and_drop_account_frees_a_nickname(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    password = "admin-test-password"
    with ExitStack() as stack:
        assert cluster.admin(capsys, "accounts")[1].strip() == "no nickname is registered"
        for gw, nick in (("adm1", "Alice"), ("adm2", "bob")):
            client = cluster.client(gw, nick, stack)
            client.send_line(f"/register {password}")
            client.read_until(lambda text, n=nick: text.startswith(f"== {n} is registered"), 10)
        carol = cluster.client("adm2", "carol", stack)
        carol.send_line("/quit")
        assert carol.wait_closed(10)

        listed = cluster.admin_json(capsys, "accounts")
        assert listed["count"] == 2
        assert {(a["nick"], a["online"]) for a in listed["accounts"]} == {("Alice", True), ("bob", True)}
        code, out, _ = cluster.admin(capsys, "accounts")
        assert out.splitlines()[0].split() == ["NICK", "ONLINE", "REGISTERED"]
        assert "2 account(s), 2 online" in out and password not in out and "argon2" not in out

        code, out, err = cluster.admin(capsys, "drop-account", "ALICE")
        assert code == 0, err
        assert out.strip().startswith("dropped the account Alice (still online")
        assert [a["nick"] for a in cluster.admin_json(capsys, "accounts")["accounts"]] == ["bob"]
        code, _, err = cluster.admin(capsys, "drop-account", "alice")
        assert code == 1 and "no such account: alice" in err

        # Once Alice leaves, anyone may take the freed nickname, with no password.
        code, _, _ = cluster.admin(capsys, "kick", "alice", "account dropped")
        assert code == 0
        wait_until(lambda: cluster.admin_json(capsys, "who")["count"] == 1, 10, "Alice gone")
        cluster.client("adm2", "alice", stack)


def test_entry_point_runs_as_a_module(cluster: Cluster) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    env.update(CHAT_REDIS_URL=cluster.redis_url, CHAT_KEY_PREFIX=PREFIX)
    result = subprocess.run(
        [sys.executable, "-m", "services.admin", "gateways", "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert {g["gateway"] for g in json.loads(result.stdout)["gateways"]} == {"adm1", "adm2"}


def test_unreachable_redis_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    (port,) = free_ports(1)
    code = main(["--redis-url", f"redis://127.0.0.1:{port}/0", "--timeout-s", "1", "who"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"cannot talk to Redis at redis://127.0.0.1:{port}/0" in err


def test_settings_come_from_flags_then_chat_variables() -> None:
    from services.admin.cli import build_parser, read_settings

    env = {"CHAT_REDIS_URL": "redis://env:1/0", "CHAT_KEY_PREFIX": "env:", "CHAT_MAX_CLIENTS": "0"}
    settings = read_settings(build_parser().parse_args(["who"]), env)
    assert (str(settings.redis_url), settings.key_prefix) == ("redis://env:1/0", "env:")
    argv = ["--redis-url", "redis://flag:3/0", "--key-prefix", "", "who"]
    settings = read_settings(build_parser().parse_args(argv), env)
    assert (str(settings.redis_url), settings.key_prefix) == ("redis://flag:3/0", "")


@pytest.mark.parametrize(
    ("env", "argv", "message"),
    [
        ({"CHAT_REDIS_ULR": "x"}, [], "unknown variable CHAT_REDIS_ULR (did you mean CHAT_REDIS_URL?)"),
        ({}, ["--redis-url", "http://x"], "invalid --redis-url: expected redis://host:port/db"),
        ({"CHAT_KEY_PREFIX": "a b"}, [], "invalid CHAT_KEY_PREFIX"),
    ],
)
def test_bad_configuration_exits_2_with_one_line(
    env: dict[str, str], argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main([*argv, "who"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"chat-admin: error: {message}")
    assert len(captured.err.splitlines()) == 1
