"""Configuration from flags and CHAT_* variables; bad values exit with status 2."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import pytest

from services.common.config import (
    ConfigError,
    HostPort,
    RedisURL,
    Settings,
    env_name,
    given_settings,
    load_settings,
)


def test_defaults() -> None:
    s = load_settings([], {})
    assert s.listen == HostPort("127.0.0.1", 7000)
    assert s.redis_url == RedisURL("127.0.0.1", 6379, 0)
    assert s.max_line_bytes == 4096
    assert s.idle_timeout_s == math.inf
    assert s.default_room == "#lobby"


def test_gateway_ids_are_unique_per_process_by_default() -> None:
    assert load_settings([], {}).gateway_id != load_settings([], {}).gateway_id


def test_environment_and_flags_flag_wins() -> None:
    env = {
        "CHAT_LISTEN": "0.0.0.0:7001",
        "CHAT_REDIS_URL": "redis://:s3cret@redis.example:6380/0",
        "CHAT_GATEWAY_ID": "gw1",
        "CHAT_LOG_FORMAT": "console",
        "CHAT_LOG_LEVEL": "debug",
        "CHAT_IDLE_TIMEOUT_S": "300",
    }
    s = load_settings(["--gateway-id", "from-flag", "--max-line-bytes", "100"], env)
    assert s.listen == HostPort("0.0.0.0", 7001)
    assert s.redis_url == RedisURL("redis.example", 6380, 0, None, "s3cret")
    assert "s3cret" not in str(s.redis_url)
    assert s.gateway_id == "from-flag"
    assert s.log_format == "console" and s.log_level == "debug"
    assert s.idle_timeout_s == 300.0
    assert s.max_line_bytes == 100


def test_redis_url_with_user_and_password() -> None:
    s = load_settings(["--redis-url", "redis://chat:p%40ss@127.0.0.1:6379/0"], {})
    assert (s.redis_url.username, s.redis_url.password, s.redis_url.db) == ("chat", "p@ss", 0)
    assert not s.redis_url.tls


def test_rediss_url_means_tls() -> None:
    s = load_settings(["--redis-url", "rediss://chat:pw@redis.example:6380/0"], {})
    assert s.redis_url == RedisURL("redis.example", 6380, 0, "chat", "pw", tls=True)
    assert str(s.redis_url) == "rediss://chat:***@redis.example:6380/0"


def test_a_non_zero_database_is_refused_because_pub_sub_ignores_it() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings([], {"CHAT_REDIS_URL": "redis://127.0.0.1:6379/2"})
    assert str(info.value) == (
        "CHAT_REDIS_URL selects database 2: pub/sub ignores the database number, so use"
        " database 0 and CHAT_KEY_PREFIX to separate deployments"
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"CHAT_REDIS_TLS_CA": "/ca.pem"}, "CHAT_REDIS_URL is not rediss://"),
        ({"CHAT_REDIS_URL": "rediss://h:1/0", "CHAT_REDIS_TLS_CERT": "/c.pem"},
         "CHAT_REDIS_TLS_CERT and CHAT_REDIS_TLS_KEY go together"),
    ],
)
def test_redis_tls_files_that_cannot_be_used(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_settings([], env)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"CHAT_LISTEN": "nope"}, "CHAT_LISTEN"),
        ({"CHAT_LISTEN": "127.0.0.1:99999"}, "CHAT_LISTEN"),
        ({"CHAT_REDIS_URL": "http://x"}, "CHAT_REDIS_URL"),
        ({"CHAT_REDIS_URL": "redis://x/abc"}, "CHAT_REDIS_URL"),
        ({"CHAT_GATEWAY_ID": "has space"}, "CHAT_GATEWAY_ID"),
        ({"CHAT_LOG_FORMAT": "xml"}, "CHAT_LOG_FORMAT"),
        ({"CHAT_MAX_LINE_BYTES": "0"}, "CHAT_MAX_LINE_BYTES"),
        ({"CHAT_OUTBOX_BYTES": "lots"}, "CHAT_OUTBOX_BYTES"),
        ({"CHAT_DEFAULT_ROOM": "lobby"}, "CHAT_DEFAULT_ROOM"),
        ({"CHAT_HEARTBEAT_TTL_S": "1", "CHAT_HEARTBEAT_INTERVAL_S": "2"}, "heartbeat"),
        ({"CHAT_TRUSTED_PROXIES": "10.0.0.0/33"}, "CHAT_TRUSTED_PROXIES"),
        ({"CHAT_HEARTBEAT_TTL_S": "inf"}, "CHAT_HEARTBEAT_TTL_S"),
        ({"CHAT_REDIS_TIMEOUT_S": "off"}, "CHAT_REDIS_TIMEOUT_S"),
        ({"CHAT_DRAIN_TIMEOUT_S": "inf"}, "CHAT_DRAIN_TIMEOUT_S"),
        ({"CHAT_REDIS_MODE": "cluster"}, "not supported yet"),
        ({"CHAT_REDIS_MODE": "ring"}, "CHAT_REDIS_MODE"),
        ({"CHAT_REDIS_URL": "redis://a:1,b:2/0"}, "CHAT_REDIS_MODE=sentinel"),
        ({"CHAT_REDIS_MODE": "sentinel", "CHAT_REDIS_SENTINEL_MASTER": "a b"},
         "CHAT_REDIS_SENTINEL_MASTER"),
    ],
)
def test_invalid_values_raise_one_line_errors(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings([], env)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"CHAT_REDIS_ULR": "redis://x"}, "unknown variable CHAT_REDIS_ULR (did you mean CHAT_REDIS_URL?)"),
        ({"CHAT_MAX_CLIENT": "5"}, "unknown variable CHAT_MAX_CLIENT (did you mean CHAT_MAX_CLIENTS?)"),
        ({"CHAT_FOO": "1"}, "unknown variable CHAT_FOO"),
        (
            {"CHAT_LISTN": "x", "CHAT_FOO": "1", "CHAT_LISTEN": "127.0.0.1:1"},
            "unknown variables CHAT_FOO, CHAT_LISTN (did you mean CHAT_LISTEN?)",
        ),
    ],
)
def test_unknown_chat_variables_are_reported(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings([], env)
    assert str(info.value) == expected


def test_other_variables_are_ignored() -> None:
    load_settings([], {"CHATTY": "1", "chat_redis_ulr": "x", "REDIS_URL": "x", "PATH": "/bin"})


def test_given_settings_reads_only_what_it_is_asked_for() -> None:
    env = {"CHAT_KEY_PREFIX": "p:", "CHAT_MAX_CLIENTS": "0", "CHAT_REDIS_URL": "redis://r:1/2"}
    given = given_settings(env, {"redis_url": "redis://flag:2/0", "key_prefix": None},
                           only=("redis_url", "key_prefix"))
    assert given == {"redis_url": RedisURL("flag", 2, 0), "key_prefix": "p:"}
    with pytest.raises(ConfigError, match="CHAT_MAX_CLIENTS"):
        given_settings(env)
    with pytest.raises(ConfigError, match="CHAT_REDIS_ULR"):
        given_settings({"CHAT_REDIS_ULR": "x"}, only=("key_prefix",))


def test_every_setting_has_a_flag_and_env_var_in_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "services.gateway", "--help"], capture_output=True, text=True,
        check=True,
    ).stdout
    for f in dataclasses.fields(Settings):
        assert "--" + f.name.replace("_", "-") in out
        assert env_name(f.name) in out


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--listen", "bogus"], {}),
        ([], {"CHAT_LOG_LEVEL": "loud"}),
        (["--no-such-flag"], {}),
        ([], {"CHAT_REDIS_ULR": "redis://127.0.0.1:6379/0"}),
    ],
)
def test_invalid_configuration_exits_2_with_one_line(args: list[str], env: dict[str, str]) -> None:
    import os

    proc = subprocess.run(
        [sys.executable, "-m", "services.gateway", *args],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=30,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chat-gateway: error: "), proc.stderr


def test_memory_bounds_defaults_match_the_bus_and_are_checked() -> None:
    from services.common.bus import HISTORY_BYTES, LOG_BYTES, ROOM_RETENTION_S

    s = Settings()
    assert (s.room_ttl_s, s.room_log_bytes, s.room_history_bytes) == (
        ROOM_RETENTION_S, LOG_BYTES, HISTORY_BYTES
    )
    assert s.outbox_total_bytes == 256 * 1024 * 1024
    assert load_settings([], {"CHAT_ROOM_TTL_S": "60"}).room_ttl_s == 60
    with pytest.raises(ConfigError, match="CHAT_ROOM_TTL_S must be a positive, finite"):
        load_settings([], {"CHAT_ROOM_TTL_S": "inf"})
    with pytest.raises(ConfigError, match=r"CHAT_OUTBOX_TOTAL_BYTES .* must be at least"):
        load_settings([], {"CHAT_OUTBOX_TOTAL_BYTES": "1000", "CHAT_OUTBOX_BYTES": "2000"})


def test_sentinel_mode_takes_a_list_of_sentinels_and_hides_passwords() -> None:
    settings = load_settings([], {
        "CHAT_REDIS_MODE": "sentinel",
        "CHAT_REDIS_URL": "redis://:datapw@10.0.0.1:26379, 10.0.0.2 ,10.0.0.3:26380/0",
        "CHAT_REDIS_SENTINEL_MASTER": "chat",
        "CHAT_REDIS_SENTINEL_PASSWORD": "sentinelpw",
    })
    url = settings.redis_url
    assert [str(h) for h in url.hosts] == ["10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3:26380"]
    assert (url.password, url.db) == ("datapw", 0)
    assert settings.redis_sentinel_master == "chat"
    assert str(url) == "redis://:***@10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26380/0"
    assert "pw" not in repr(settings)
