"""No password in any error message or log line.

A gateway (a real process) with a Redis URL that carries a password: given a bad
setting it exits 2 with one line, and given good ones it serves a client against
a password-protected redis-server; neither its stderr, its stdout nor its log
holds the password.  The admin tool's errors hide it too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from services.admin import main as admin_main
from services.cluster.redis_server import find_redis_server
from services.common.config import ConfigError, load_settings, redact_secrets, redact_url
from services.common.probes import free_ports
from tests.support.gateway_process import GatewayProcess
from tests.support.line_client import connect_client
from tests.support.processes import REPO
from tests.support.redis_server import RedisServer

PASSWORD = "Tr0ub4dor-s3cret"

pytestmark = pytest.mark.skipif(find_redis_server() is None, reason="no redis-server binary")


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{PASSWORD}@127.0.0.1:notaport/0",
        f"redis://chat:{PASSWORD}@127.0.0.1:6379/notadb",
        f"redis+tls://:{PASSWORD}@127.0.0.1:6379/0",
        f"http://user:{PASSWORD}@host/0",
        f"redis://:{PASSWORD}@[::1/0",
        f"redis://:{PASSWORD}@with@at@127.0.0.1:x/0",
        f"redis:{PASSWORD}@127.0.0.1/x",
    ],
)
def test_a_bad_redis_url_is_reported_without_its_password(url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings([], {"CHAT_REDIS_URL": url})
    message = str(raised.value)
    assert message.startswith("invalid CHAT_REDIS_URL")
    assert PASSWORD not in message
    with pytest.raises(ConfigError) as raised:
        load_settings(["--redis-url", url], {})
    assert PASSWORD not in str(raised.value)


def test_settings_never_show_the_password() -> None:
    settings = load_settings([], {"CHAT_REDIS_URL": f"redis://chat:{PASSWORD}@db:6380/0"})
    assert settings.redis_url.password == PASSWORD
    for shown in (str(settings.redis_url), repr(settings.redis_url), repr(settings)):
        assert PASSWORD not in shown


def test_redaction_keeps_what_helps_the_operator() -> None:
    assert redact_url(f"redis://chat:{PASSWORD}@db.example:6380/2") == "redis://chat:***@db.example:6380/2"
    assert redact_url("redis://db.example:6380/2") == "redis://db.example:6380/2"
    assert redact_secrets(f"got redis://:{PASSWORD}@h:1/0 and more") == "got redis://:***@h:1/0 and more"


def run_gateway(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "services.gateway", *argv],
        cwd=REPO, env=full, capture_output=True, text=True, timeout=30, check=False,
    )


def test_gateway_with_a_password_url_and_a_bad_setting_exits_without_the_password() -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:6379/0"
    for env, argv in [
        ({"CHAT_REDIS_URL": url, "CHAT_MAX_CLIENTS": "0"}, ()),
        ({"CHAT_REDIS_URL": url.replace("/0", "/db")}, ()),
        ({}, ("--redis-url", url.replace("6379", "port"))),
        ({}, ("--redis-url", url, "--no-such-flag")),
    ]:
        result = run_gateway(env, *argv)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("chat-gateway: error: ")
        assert len(result.stderr.splitlines()) == 1
        assert PASSWORD not in result.stderr + result.stdout


def test_a_serving_gateway_never_logs_the_password(
    gateway_procs: Callable[..., GatewayProcess],
) -> None:
    with RedisServer(password=PASSWORD) as redis_server:
        url = f"redis://:{PASSWORD}@127.0.0.1:{redis_server.port}/0"
        gw = gateway_procs(url, "sec1", http_port=0)
        with connect_client(gw.port) as client:
            client.login("alice")
            client.send_line("hello")
            client.read_until(lambda line: line.endswith("<alice> hello"), what="alice's echo")
        gw.stop()
        log = gw.log_path.read_text()
        assert '"redis.connected"' in log or '"gateway.started"' in log
        assert "redis://:***@127.0.0.1" in log
        assert PASSWORD not in log
        # A wrong password: the refusal is logged, the password is not.
        with GatewayProcess(f"redis://:{PASSWORD}x@127.0.0.1:{redis_server.port}/0", "sec2") as wrong:
            wrong.start(wait_ready=False)
            assert "WRONGPASS" in wrong.wait_for_event("redis.connect_failed", 15.0)["error"]
            wrong.stop()
            assert PASSWORD not in wrong.log_path.read_text()


def test_admin_errors_hide_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    (port,) = free_ports(1)
    code = admin_main(["--redis-url", f"redis://:{PASSWORD}@127.0.0.1:{port}/0", "--timeout-s", "1",
                       "who"])
    captured = capsys.readouterr()
    assert code == 1
    assert f"redis://:***@127.0.0.1:{port}/0" in captured.err
    assert PASSWORD not in captured.out + captured.err
    code = admin_main(["--redis-url", f"redis://:{PASSWORD}@127.0.0.1:x/0", "who"])
    captured = capsys.readouterr()
    assert code == 2
    assert PASSWORD not in captured.out + captured.err
