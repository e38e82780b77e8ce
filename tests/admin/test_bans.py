"""``chat-admin ban``, ``unban`` and ``bans`` against a real redis-server: what is
stored, the listing (text and ``--json``), expiry, and bad input (exit 2, one
line).  That gateways enforce bans is tested in tests/gateway/test_admission.py."""

from __future__ import annotations

import json

import pytest
import redis

from services.admin import main
from tests.support.redis_server import RedisServer


def admin(server: RedisServer, prefix: str, capsys: pytest.CaptureFixture[str], *argv: str
          ) -> tuple[int, str, str]:
    code = main(["--redis-url", server.url, "--key-prefix", prefix, *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_ban_list_and_unban(
    redis_server: RedisServer, rc: redis.Redis, key_prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with rc.pubsub() as sub:
        sub.subscribe(f"{key_prefix}all")
        assert sub.get_message(timeout=5) is not None
        code, out, _ = admin(redis_server, key_prefix, capsys, "ban", "203.0.113.9", "--for",
                             "2h", "too", "many", "bots")
        assert code == 0
        assert out.startswith("banned 203.0.113.9/32 for 7200s: too many bots")
        message = sub.get_message(timeout=5)
        assert message is not None and json.loads(message["data"]) == {"t": "bans"}
    record = json.loads(rc.hget(f"{key_prefix}bans", "203.0.113.9/32") or "")
    assert record["reason"] == "too many bots" and record["until"] > record["at"]
    # Host bits are cleared; IPv6 networks work; no reason and no expiry.
    assert admin(redis_server, key_prefix, capsys, "ban", "2001:db8:1:2:3::4/64")[0] == 0
    code, out, _ = admin(redis_server, key_prefix, capsys, "bans")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NETWORK", "EXPIRES", "REASON"]
    assert lines[1].split() == ["2001:db8:1:2::/64", "never", "-"]
    assert lines[2].startswith("203.0.113.9/32") and lines[2].endswith("too many bots")
    assert lines[-1] == "2 ban(s)"
    code, out, _ = admin(redis_server, key_prefix, capsys, "bans", "--json")
    listed = json.loads(out)
    assert listed["count"] == 2
    assert listed["bans"][0] == {"network": "2001:db8:1:2::/64", "reason": "", "since":
                                 listed["bans"][0]["since"], "until": None, "expires_in_s": None}
    assert 7190 < listed["bans"][1]["expires_in_s"] <= 7200

    assert admin(redis_server, key_prefix, capsys, "unban", "203.0.113.9")[0] == 0
    code, _, err = admin(redis_server, key_prefix, capsys, "unban", "203.0.113.9")
    assert code == 1 and "no ban on 203.0.113.9/32" in err
    assert rc.hkeys(f"{key_prefix}bans") == [b"2001:db8:1:2::/64"]


def test_expired_bans_are_not_listed_and_are_deleted(
    redis_server: RedisServer, rc: redis.Redis, key_prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc.hset(f"{key_prefix}bans", "198.51.100.0/24",
            json.dumps({"reason": "old", "until": 1.0, "at": 0.5}))
    code, out, _ = admin(redis_server, key_prefix, capsys, "bans")
    assert (code, out) == (0, "no bans\n")
    assert not rc.exists(f"{key_prefix}bans")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ban", "not-an-address"], "not an IP address or CIDR: 'not-an-address'"),
        (["ban", "10.0.0.0/33"], "not an IP address or CIDR"),
        (["ban", "10.0.0.1", "--for", "soon"], "expected a duration like 90s"),
        (["ban", "10.0.0.1", "--for", "0s"], "a ban must last longer than 0 seconds"),
        (["ban", "10.0.0.1", "bad\x07reason"], "the reason contains control characters"),
        (["unban", "nope"], "not an IP address or CIDR"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    redis_server: RedisServer, key_prefix: str, capsys: pytest.CaptureFixture[str],
    argv: list[str], message: str,
) -> None:
    code, out, err = admin(redis_server, key_prefix, capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.startswith(f"chat-admin: error: {message}")
    assert len(err.splitlines()) == 1
