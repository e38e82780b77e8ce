"""Deployments sharing one Redis are separated by the key prefix, never by the
database number: pub/sub ignores SELECT, so the gateway and chat-admin refuse a
non-zero database at start-up (one line, exit 2) and tell the operator what to
use instead.  The test first shows why, with two redis-py clients on two
databases of one real Redis."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.processes import REPO
from tests.support.redis_server import RedisServer

ADVICE = "use database 0 and CHAT_KEY_PREFIX to separate deployments"


def test_pub_sub_crosses_databases(redis_server: RedisServer) -> None:
    with redis_server.client(db=1) as listener_db1, redis_server.client(db=0) as speaker_db0:
        pubsub = listener_db1.pubsub()
        pubsub.subscribe("isolation-test:room")
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
        assert speaker_db0.publish("isolation-test:room", "heard on db 1") == 1
        pubsub.close()


@pytest.mark.parametrize("program", ["services.gateway", "services.admin"])
def test_a_non_zero_database_is_refused_at_start_up(
    redis_server: RedisServer, program: str
) -> None:
    env = {"PATH": "/usr/bin:/bin", "CHAT_REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/1",
           "CHAT_LISTEN": "127.0.0.1:0"}
    if program == "services.admin":
        del env["CHAT_LISTEN"]  # not a setting chat-admin reads (its name is still checked)
    argv = [sys.executable, "-m", program] + (["who"] if program == "services.admin" else [])
    result = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "CHAT_REDIS_URL selects database 1" in result.stderr
    assert ADVICE in result.stderr
