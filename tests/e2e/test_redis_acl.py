"""The documented Redis ACL (docs/OPERATIONS.md) is enough, and no more.

A redis-server loads the documented users from an aclfile (the ``default`` user
off), with a key prefix other than the documented one.  Three gateway processes
log in as ``chat-gateway``: chat, join, rename, private messages, history,
registering an account, and reaping a SIGKILLed gateway all work; ``chat-admin``
logged in as ``chat-admin`` runs who, accounts, ban and kick.  Redis's ``ACL LOG``
then holds no refusal.  Finally commands outside the users' permissions, sent
with their credentials through redis-py, fail with NOPERM.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import trio

from services.admin.cli import main as admin_main
from tests.support.chat_client import ChatClient
from tests.support.gateway_process import GatewayProcess
from tests.support.redis_acl import aclfile_text
from tests.support.redis_server import RedisServer

PREFIX = "acltest:"
GATEWAY_PASSWORD = "gw-Secret-1"
ADMIN_PASSWORD = "admin-Secret-2"
ORACLE = "user oracle on >oracle-pw ~* &* +@all"  # the test's own eyes


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[RedisServer]:
    aclfile = tmp_path / "users.acl"
    aclfile.write_text(aclfile_text(GATEWAY_PASSWORD, ADMIN_PASSWORD, PREFIX,
                                    extra_users=(ORACLE,)))
    with RedisServer(extra=["--aclfile", str(aclfile)], username="oracle",
                     password="oracle-pw") as server:
        yield server


def url(server: RedisServer, user: str, password: str) -> str:
    return f"redis://{user}:{password}@127.0.0.1:{server.port}/0"


async def admin(server: RedisServer, capsys: pytest.CaptureFixture[str], *argv: str
                ) -> tuple[int, str]:
    argv = ("--redis-url", url(server, "chat-admin", ADMIN_PASSWORD), "--key-prefix", PREFIX,
            *argv)
    code = await trio.to_thread.run_sync(admin_main, list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return code, out


async def test_gateways_and_admin_work_with_only_the_documented_permissions(
    acl_redis: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    gw_url = url(acl_redis, "chat-gateway", GATEWAY_PASSWORD)
    procs = [GatewayProcess(gw_url, f"acl-gw{i}", key_prefix=PREFIX, heartbeat_interval_s=0.5,
                            heartbeat_ttl_s=3, flood_burst=50)
             for i in (1, 2, 3)]
    try:
        for proc in procs:
            proc.start()
        alice = await ChatClient.join(procs[0].port, "alice")
        bob = await ChatClient.join(procs[1].port, "bob")
        dave = await ChatClient.join(procs[2].port, "dave")
        await alice.seen(r"^#lobby -- dave joined the chat!$")
        await alice.send("hello over acl")
        await bob.expect(r"^#lobby <alice> hello over acl$")

        await bob.send("/join #dev")
        await bob.expect(r"^== now talking in #dev")
        await bob.send("earlier line")
        await bob.expect(r"^#dev <bob> earlier line$")
        await alice.send("/join #dev")
        await alice.expect(r"^#dev \(history\) <bob> earlier line$")
        await alice.send("/nick alicia")
        await alice.expect(r"^== you are now alicia$")
        await bob.send("/msg alicia psst")
        await alice.expect(r"^@alicia <bob> psst$")
        await alice.send("/register Tr0ub4dor-and-3")
        await alice.expect(r"^== alicia is registered to you")

        procs[2].signal(signal.SIGKILL)  # dave's gateway dies; another one reaps it
        await alice.seen(r"^#lobby -- dave left the chat! \(gateway lost\)$", timeout=15)
        del dave

        _, out = await admin(acl_redis, capsys, "who")
        assert "alicia" in out and "bob" in out
        _, out = await admin(acl_redis, capsys, "accounts")
        assert "alicia" in out
        await admin(acl_redis, capsys, "ban", "192.0.2.7", "acl test")
        _, out = await admin(acl_redis, capsys, "bans")
        assert "192.0.2.7" in out
        await admin(acl_redis, capsys, "kick", "bob", "acl test")
        await bob.seen(r"^!! disconnected: kicked by an operator: acl test$")

        with acl_redis.client() as oracle:
            refused = oracle.acl_log()
        assert refused == [], refused  # nothing the gateways or chat-admin sent was refused
        for proc in procs:
            assert not any("NOPERM" in line for line in proc.log_lines()), proc.tail()
    finally:
        for proc in procs:
            proc.stop()
            proc.cleanup()


@pytest.mark.parametrize(
    ("user", "password", "command"),
    [
        ("chat-gateway", GATEWAY_PASSWORD, ("FLUSHALL",)),
        ("chat-gateway", GATEWAY_PASSWORD, ("KEYS", "*")),
        ("chat-gateway", GATEWAY_PASSWORD, ("CONFIG", "GET", "requirepass")),
        ("chat-gateway", GATEWAY_PASSWORD, ("GET", "another-deployment:epoch")),
        ("chat-gateway", GATEWAY_PASSWORD, ("PUBLISH", "another-deployment:all", "x")),
        ("chat-admin", ADMIN_PASSWORD, ("EVAL", "return 1", "0")),
        ("chat-admin", ADMIN_PASSWORD, ("SUBSCRIBE", f"{PREFIX}all")),
    ],
)
def test_a_command_outside_the_acl_fails_with_noperm(
    acl_redis: RedisServer, user: str, password: str, command: tuple[str, ...]
) -> None:
    client = redis.Redis(host="127.0.0.1", port=acl_redis.port, username=user,
                         password=password, socket_timeout=5)
    # NoPermissionError is redis-py's name for a NOPERM reply.
    with client, pytest.raises(redis.exceptions.NoPermissionError, match="no permissions"):
        client.execute_command(*command)


def test_the_default_user_is_off(acl_redis: RedisServer) -> None:
    client = redis.Redis(host="127.0.0.1", port=acl_redis.port, socket_timeout=5)
    with client, pytest.raises(redis.exceptions.AuthenticationError):
        client.get(f"{PREFIX}epoch")
