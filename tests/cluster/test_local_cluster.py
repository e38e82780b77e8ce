"""``python -m services.cluster`` as a user runs it: one command, a working chat, a clean stop.

A real subprocess on free ports: it starts redis-server, three gateways and HAProxy;
a raw socket connects through HAProxy, chooses a nickname, sees the welcome and its
own line echoed; then SIGINT (Ctrl-C) must stop every process it started.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import sys
from pathlib import Path

import pytest

from services.cluster.redis_server import find_redis_server
from services.common.probes import free_ports
from services.common.processes import Process, wait_until
from tests.support.haproxy import haproxy_binary
from tests.support.line_client import connect_client
from tests.support.processes import REPO, children_of, group_members, process_gone

pytestmark = pytest.mark.skipif(find_redis_server() is None, reason="no redis-server binary to start")


def cluster_argv(ports: list[int], *extra: str) -> list[str]:
    lb, g1, g2, g3, h1, h2, h3, redis = ports
    return [
        sys.executable, "-m", "services.cluster",
        "--lb-port", str(lb),
        "--gateway-ports", f"{g1},{g2},{g3}",
        "--http-ports", f"{h1},{h2},{h3}",
        "--redis-port", str(redis),
        *extra,
    ]  # fmt: skip


def cluster_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    env["CHAT_DRAIN_TIMEOUT_S"] = "3"
    return env


def stop_and_check_gone(proc: Process, pids: dict[str, int], sig: signal.Signals = signal.SIGINT) -> None:
    """Ctrl-C (SIGINT to the foreground process group) or SIGTERM: the cluster must
    exit 0 leaving no process behind."""
    direct = children_of(proc.pid)
    assert sorted(direct) == sorted(pids.values()), (direct, pids)
    proc.send_signal(sig)
    code = proc.wait(timeout_s=30)
    proc.close()
    assert code == 0, proc.tail()
    leftovers = {name: pid for name, pid in pids.items() if not process_gone(pid)}
    assert not leftovers, f"still running after Ctrl-C: {leftovers}\n{proc.tail()}"
    for name, pid in pids.items():
        assert not group_members(pid), f"{name}'s process group {pid} is not empty"
    stopped = proc.wait_for_record(lambda r: r.get("event") == "cluster.stopped", 1, "stopped")
    assert stopped["left_running"] == []


@pytest.mark.skipif(haproxy_binary() is None, reason="haproxy is not installed")
def test_cluster_behind_haproxy_chats_and_stops_cleanly() -> None:
    ports = free_ports(8)
    with Process("cluster", cluster_argv(ports), env=cluster_env(), cwd=REPO) as proc:
        ready = proc.wait_for_record(lambda r: r.get("event") == "cluster.ready", 60, "cluster.ready")
        assert ready["connect"] == [f"nc localhost {ports[0]}"]
        assert set(ready["pids"]) == {"redis", "gw1", "gw2", "gw3", "haproxy"}
        assert ready["redis"]["owned"] is True
        # Readiness was asked of HAProxy's runtime API, not probed with a fake client.
        assert not [r for r in proc.records() if r.get("event") == "client.connected"]

        with connect_client(ports[0]) as alice:
            welcome = alice.login("alice")
            assert "#lobby" in welcome
            alice.send_line("hello from the one-command cluster")
            alice.read_until(
                lambda line: line == "#lobby <alice> hello from the one-command cluster",
                10,
                "the echoed chat line",
            )
        # Gateway output is relayed as JSON lines, each tagged with its source.
        proc.wait_for_record(
            lambda r: r.get("source", "").startswith("gw") and r.get("event") == "client.joined",
            10,
            "a gateway's client.joined event",
        )
        stop_and_check_gone(proc, ready["pids"])


def test_cluster_without_haproxy_prints_gateway_ports() -> None:
    ports = free_ports(8)
    with Process("cluster", cluster_argv(ports, "--no-haproxy"), env=cluster_env(), cwd=REPO) as proc:
        ready = proc.wait_for_record(lambda r: r.get("event") == "cluster.ready", 60, "cluster.ready")
        assert ready["haproxy"] is None
        assert ready["connect"] == [f"nc localhost {port}" for port in ports[1:4]]
        with connect_client(ports[2]) as bob:
            bob.login("bob")
            bob.send_line("direct")
            bob.read_until(lambda line: line == "#lobby <bob> direct", 10, "the echo")
        stop_and_check_gone(proc, ready["pids"], signal.SIGTERM)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="--tls makes its certificate with openssl")
def test_cluster_with_tls_makes_a_certificate_and_prints_how_to_connect() -> None:
    ports = free_ports(11)
    tls_ports = ports[8:]
    argv = cluster_argv(ports[:8], "--no-haproxy", "--tls", "--tls-ports", ",".join(map(str, tls_ports)))
    with Process("cluster", argv, env=cluster_env(), cwd=REPO) as proc:
        ready = proc.wait_for_record(lambda r: r.get("event") == "cluster.ready", 60, "cluster.ready")
        commands = ready["connect_tls"]
        assert [c.split(" -CAfile ")[0] for c in commands] == [
            f"openssl s_client -connect localhost:{port} -quiet" for port in tls_ports
        ]
        ca_file = commands[0].split(" -CAfile ")[1]
        context = ssl.create_default_context(cafile=ca_file)
        with (
            socket.create_connection(("127.0.0.1", tls_ports[1]), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(b"tlsuser\nover tls\n/quit\n")
            received = b""
            while not received.endswith(b"== bye\r\n"):
                data = tls.recv(65536)
                if not data:
                    break
                received += data
        assert b"#lobby <tlsuser> over tls\r\n" in received, received
        stop_and_check_gone(proc, ready["pids"], signal.SIGTERM)


def test_a_gateway_failing_at_start_up_stops_everything() -> None:
    ports = free_ports(8)
    env = cluster_env()
    env["CHAT_MAX_CLIENTS"] = "0"  # the gateway rejects it and exits with status 2
    with Process("cluster", cluster_argv(ports, "--no-haproxy"), env=env, cwd=REPO) as proc:
        code = proc.wait(timeout_s=60)
        proc.close()
        assert code == 1, proc.tail()
        failed = proc.wait_for_record(lambda r: r.get("event") == "cluster.failed", 1, "failed")
        assert "exited during start-up" in failed["reason"]
        started = [r for r in proc.records() if r.get("event") == "process.started"]
        assert {r["name"] for r in started} >= {"redis", "gw1"}
        for record in started:
            assert process_gone(record["pid"]), record
            assert not group_members(record["pid"]), record


def test_cluster_refuses_a_busy_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ports = free_ports(8)
        ports[1] = port
        with Process("cluster", cluster_argv(ports), env=cluster_env(), cwd=REPO) as proc:
            code = proc.wait(timeout_s=30)
            proc.close()
            assert code == 2
            assert any(f"in use on 127.0.0.1: {port}" in line for line in proc.lines), proc.tail()


def test_console_format_prefixes_lines() -> None:
    ports = free_ports(8)
    argv = cluster_argv(ports, "--no-haproxy", "--log-format", "console")
    with Process("cluster", argv, env=cluster_env(), cwd=REPO) as proc:
        proc.wait_for_line(lambda line: "connect:   nc localhost" in line, 60, "the banner")
        wait_until(lambda: any(line.startswith("gw1     |") for line in proc.lines), 10, "gw1 lines")
        proc.send_signal(signal.SIGHUP)  # the terminal closed
        assert proc.wait(timeout_s=30) == 0
        proc.close()
        assert any(line.startswith("cluster |") and "cluster.stopped" in line for line in proc.lines)


def test_data_dir_keeps_accounts_across_cluster_restarts(tmp_path: Path) -> None:
    """``scripts/run --data DIR``: Redis keeps its AOF in DIR; a registered nickname
    is still registered after the whole cluster stopped and started again."""
    data = tmp_path / "redis-data"
    password = "kept-across-runs"
    for run in (1, 2):
        ports = free_ports(8)
        argv = cluster_argv(ports, "--no-haproxy", "--data", str(data))
        # Flood control is not under test: a wrong then a right password in quick
        # succession costs more than the default budget's burst.
        env = {**cluster_env(), "CHAT_FLOOD_BURST": "50"}
        with Process("cluster", argv, env=env, cwd=REPO) as proc:
            ready = proc.wait_for_record(lambda r: r.get("event") == "cluster.ready", 60, "ready")
            assert ready["redis"]["data"] == str(data)
            with connect_client(ports[1]) as client:
                if run == 1:
                    client.login("alice")
                    client.send_line(f"/register {password}")
                    client.read_until(lambda line: line.startswith("== alice is registered"), 10)
                else:
                    client.send_line("alice")
                    client.read_until(lambda line: line.startswith("?? alice is registered"), 10)
                    client.send_line("not-the-password")
                    client.read_until(lambda line: line == "!! wrong password for alice", 10)
                    client.send_line(f"alice {password}")
                    client.read_until(lambda line: line.startswith("== welcome, alice!"), 10)
            stop_and_check_gone(proc, ready["pids"], signal.SIGTERM)
    assert any(data.rglob("*.aof"))
