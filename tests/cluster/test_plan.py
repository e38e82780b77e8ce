"""The local cluster's plan: ports, settings and refusals, decided before anything starts."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from services.cluster.cli import build_parser
from services.cluster.plan import ClusterError, Plan, make_plan
from services.common.config import RedisURL
from services.common.probes import free_ports


def plan_for(*argv: str, env: dict[str, str] | None = None) -> Plan:
    ports = free_ports(7)
    defaults = [
        "--no-haproxy",
        "--gateway-ports", ",".join(map(str, ports[:3])),
        "--http-ports", ",".join(map(str, ports[3:6])),
        "--redis-port", str(ports[6]),
    ]  # fmt: skip
    return make_plan(build_parser().parse_args([*defaults, *argv]), env or {})


def test_defaults_come_from_settings() -> None:
    plan = plan_for("--log-format", "json")
    assert [gw.name for gw in plan.gateways] == ["gw1", "gw2", "gw3"]
    assert plan.redis_url is None and plan.redis_bin is not None  # owns its Redis
    assert plan.stop_timeout_s == 15.0  # CHAT_DRAIN_TIMEOUT_S default 10 + 5
    assert plan.log_format == "json" and not plan.color


def test_chat_variables_it_uses() -> None:
    env = {"CHAT_REDIS_URL": "redis://:pw@db:6380/0", "CHAT_DRAIN_TIMEOUT_S": "3", "CHAT_LOG_FORMAT": "json"}
    plan = plan_for(env=env)
    assert plan.redis_url == RedisURL("db", 6380, 0, None, "pw") and plan.redis_bin is None
    assert plan.stop_timeout_s == 8.0
    assert plan.log_format == "json"
    gw_env = plan.gateway_env(plan.gateways[0], None, env)
    assert gw_env["CHAT_REDIS_URL"] == "redis://:pw@db:6380/0"  # passed on as given, password and all
    assert gw_env["CHAT_GATEWAY_ID"] == "gw1" and gw_env["CHAT_LOG_FORMAT"] == "json"


def test_an_external_tls_redis_passes_its_tls_files_on() -> None:
    env = {"CHAT_REDIS_URL": "rediss://u:pw@db:6380/0", "CHAT_REDIS_TLS_CA": "/ca.pem",
           "CHAT_REDIS_TLS_CERT": "/c.pem", "CHAT_REDIS_TLS_KEY": "/k.pem"}
    plan = plan_for(env=env)
    assert plan.redis_url is not None and plan.redis_url.tls
    gw_env = plan.gateway_env(plan.gateways[0], None, env)
    assert {k: gw_env[k] for k in env} == env


def test_other_settings_are_left_to_the_gateways() -> None:
    plan_for(env={"CHAT_MAX_CLIENTS": "0"})  # invalid, but the gateways say so


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CHAT_REDIS_ULR": "redis://x"}, "unknown variable CHAT_REDIS_ULR (did you mean CHAT_REDIS_URL?)"),
        ({"CHAT_DRAIN_TIMEOUT_S": "soon"}, "invalid CHAT_DRAIN_TIMEOUT_S"),
        ({"CHAT_LOG_FORMAT": "xml"}, "invalid CHAT_LOG_FORMAT"),
        ({"CHAT_REDIS_URL": "http://x"}, "invalid CHAT_REDIS_URL"),
        ({"CHAT_REDIS_URL": "redis://x:1/1"}, "CHAT_REDIS_URL selects database 1"),
        ({"CHAT_REDIS_TLS_CA": "/ca.pem"}, "CHAT_REDIS_TLS_CA/CERT/KEY are set but"),
    ],
)
def test_bad_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ClusterError) as info:
        plan_for(env=env)
    assert str(info.value).startswith(message)


def test_busy_and_overlapping_ports_are_refused() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ClusterError, match=f"in use on 127.0.0.1: {port}"):
            plan_for("--lb-port", "1", "--gateway-ports", f"{port},{port + 1},{port + 2}")
    with pytest.raises(ClusterError, match="ports overlap"):
        plan_for("--http-ports", "8101,8101,8102")


def test_haproxy_environment(tmp_path: Path) -> None:
    args = build_parser().parse_args(["--host", "0.0.0.0", "--base-port", "7000"])
    plan = Plan(
        host="0.0.0.0", gateways=(), lb_port=7000, haproxy_bin="haproxy",
        haproxy_config=args.haproxy_config, redis_url=None, redis_bin="redis-server", redis_port=1,
        log_format="json", color=False, ready_timeout_s=1, stop_timeout_s=1, gateway_command=("gw",),
    )  # fmt: skip
    env = plan.haproxy_env({"LB_OLD": "x", "PATH": "/bin"}, tmp_path / "s.sock")
    assert env == {"PATH": "/bin", "LB_BIND": "0.0.0.0:7000", "LB_STATS_SOCKET": str(tmp_path / "s.sock")}
    assert (plan.probe_host, plan.shown_host) == ("127.0.0.1", "localhost")


def test_data_dir_is_for_the_owned_redis_only(tmp_path: Path) -> None:
    assert plan_for("--data", str(tmp_path / "new")).redis_data == (tmp_path / "new").resolve()
    assert plan_for().redis_data is None
    with pytest.raises(ClusterError, match="external CHAT_REDIS_URL"):
        plan_for("--data", str(tmp_path), env={"CHAT_REDIS_URL": "redis://127.0.0.1:1/0"})
    (tmp_path / "file").write_text("")
    with pytest.raises(ClusterError, match="not a directory"):
        plan_for("--data", str(tmp_path / "file"))
def test_tls_gives_each_gateway_a_tls_listener_with_the_given_files(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("y")
    tls_ports = free_ports(3)
    plan = plan_for("--tls-cert", str(cert), "--tls-key", str(key),
                    "--tls-ports", ",".join(map(str, tls_ports)))
    assert plan.tls is not None and plan.tls.cert == cert.resolve()
    assert [gw.tls_port for gw in plan.gateways] == tls_ports
    env = plan.gateway_env(plan.gateways[1], None, {}, (cert, key))
    assert env["CHAT_TLS_LISTEN"] == f"127.0.0.1:{tls_ports[1]}"
    assert (env["CHAT_TLS_CERT"], env["CHAT_TLS_KEY"]) == (str(cert), str(key))
    assert "CHAT_TLS_LISTEN" not in plan_for().gateway_env(plan.gateways[0], None, {})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tls-cert", "/nonexistent/c.pem"], "give both --tls-cert and --tls-key"),
        (["--tls-cert", "/nonexistent/c.pem", "--tls-key", "/nonexistent/k.pem"], "no such file"),
        (["--tls-cert", __file__, "--tls-key", __file__, "--tls-ports", "1,2"],
         "give exactly 3 --tls-ports"),
    ],
)
def test_bad_tls_arguments_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(ClusterError) as info:
        plan_for(*argv)
    assert message in str(info.value)


def test_redis_sentinel_plans_a_replica_and_three_sentinels() -> None:
    plan = plan_for("--redis", "sentinel")
    assert plan.redis_bin is not None and plan.replica_port
    assert len(plan.sentinel_ports) == 3
    ports = [plan.redis_port, plan.replica_port, *plan.sentinel_ports]
    assert len(set(ports)) == len(ports)
    env = plan.gateway_env(plan.gateways[0], "redis://127.0.0.1:1,127.0.0.1:2/0", {})
    assert env["CHAT_REDIS_MODE"] == "sentinel" and env["CHAT_REDIS_SENTINEL_MASTER"] == "chat"


def test_redis_sentinel_is_refused_with_an_external_redis() -> None:
    with pytest.raises(ClusterError, match="CHAT_REDIS_MODE=sentinel"):
        plan_for("--redis", "sentinel", env={"CHAT_REDIS_URL": "redis://db:6379/0"})


def test_an_external_sentinel_is_passed_on() -> None:
    env = {"CHAT_REDIS_MODE": "sentinel", "CHAT_REDIS_URL": "redis://s1:26379,s2:26379/0"}
    plan = plan_for(env=env)
    assert plan.redis_bin is None and not plan.sentinel_ports
    assert plan.redis_url is not None and len(plan.redis_url.hosts) == 2
