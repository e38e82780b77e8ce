"""The whole local-cluster run: start in order, wait for each to be ready, print how
to connect, wait for a signal (or a fatal exit), stop everything.

Readiness is asked of each process without pretending to be a client: Redis
answers ``PING``, a gateway's ``/readyz`` answers 200, HAProxy's runtime API shows
its frontend open and a gateway UP (a probe connection would be logged by the
gateway as a client that came and went).
"""

from __future__ import annotations

import signal
import tempfile
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import trio

from services.cluster.logs import Output
from services.cluster.plan import SENTINEL_MASTER, ClusterError, GatewayPlan, Plan
from services.cluster.redis_server import redis_server_command, sentinel_command
from services.cluster.supervisor import Child, Supervisor
from services.common.probes import haproxy_stat, http_get, redis_ping

POLL_INTERVAL_S = 0.1
PROBE_TIMEOUT_S = 1.0


async def wait_ready(child: Child, what: str, probe: Callable[[], Awaitable[bool]], timeout_s: float) -> None:
    """Poll ``probe`` until it is true; raises :class:`ClusterError` on death or deadline."""
    deadline = trio.current_time() + timeout_s
    while True:
        if not child.running:
            raise ClusterError(f"{child.name} exited during start-up (see its output above)")
        if await probe():
            return
        if trio.current_time() > deadline:
            raise ClusterError(f"{child.name} not ready after {timeout_s:g}s ({what})")
        await trio.sleep(POLL_INTERVAL_S)


def haproxy_ready(rows: list[dict[str, str]]) -> bool:
    """Whether ``show stat`` reports the chat frontend open and a gateway UP."""
    listening = up = False
    for row in rows:
        status = row.get("status", "")
        if row.get("pxname") == "chat" and row.get("svname") == "FRONTEND":
            listening = status == "OPEN"
        elif row.get("pxname") == "gateways" and row.get("svname", "").startswith("gw"):
            up = up or status.startswith("UP")
    return listening and up


async def _start_sentinel(
    sup: Supervisor, nursery: trio.Nursery, workdir: Path, environ: dict[str, str], probe: str
) -> str:
    """--redis sentinel: a replica of the primary just started and three sentinels
    watching it (failure detected within 1 s); returns the gateways' CHAT_REDIS_URL."""
    plan = sup.plan
    assert plan.redis_bin is not None
    replica_dir = workdir / "replica"
    replica_dir.mkdir(exist_ok=True)
    command = redis_server_command(
        plan.redis_bin, plan.replica_port, bind=probe, workdir=replica_dir, loglevel="notice",
        extra=["--replicaof", probe, str(plan.redis_port)],
    )
    replica = await sup.spawn(nursery, "replica", "redis", command, environ)
    ping = partial(redis_ping, plan.replica_port, probe, timeout_s=PROBE_TIMEOUT_S)

    async def replica_answers() -> bool:
        return await trio.to_thread.run_sync(ping)

    await wait_ready(replica, "no PONG", replica_answers, plan.ready_timeout_s)
    for i, port in enumerate(plan.sentinel_ports, start=1):
        command = sentinel_command(
            plan.redis_bin, port, workdir=workdir, master=SENTINEL_MASTER,
            primary_host=probe, primary_port=plan.redis_port, bind=probe,
            down_after_ms=1000, failover_timeout_ms=5000,
        )
        child = await sup.spawn(nursery, f"sentinel{i}", "redis", command, environ)
        sentinel_ping = partial(redis_ping, port, probe, timeout_s=PROBE_TIMEOUT_S)

        async def sentinel_answers(sentinel_ping: Callable[[], bool] = sentinel_ping) -> bool:
            return await trio.to_thread.run_sync(sentinel_ping)

        await wait_ready(child, "no PONG", sentinel_answers, plan.ready_timeout_s)
    hosts = ",".join(f"{probe}:{port}" for port in plan.sentinel_ports)
    return f"redis://{hosts}/0"


async def _start(sup: Supervisor, nursery: trio.Nursery, workdir: Path, environ: dict[str, str]) -> None:
    plan, out = sup.plan, sup.out
    probe = plan.probe_host

    owned_url: str | None = None
    if plan.redis_url is None:
        assert plan.redis_bin is not None
        owned_url = f"redis://{probe}:{plan.redis_port}/0"
        redis_dir = workdir
        if plan.redis_data is not None:
            plan.redis_data.mkdir(parents=True, exist_ok=True)
            redis_dir = plan.redis_data
        command = redis_server_command(
            plan.redis_bin, plan.redis_port, bind=probe, workdir=redis_dir, loglevel="notice",
            persistent=plan.redis_data is not None,
        )
        redis = await sup.spawn(nursery, "redis", "redis", command, environ)
        ping = partial(redis_ping, plan.redis_port, probe, timeout_s=PROBE_TIMEOUT_S)

        async def redis_answers() -> bool:
            return await trio.to_thread.run_sync(ping)

        await wait_ready(redis, "no PONG", redis_answers, plan.ready_timeout_s)
        if plan.sentinel_ports:
            owned_url = await _start_sentinel(sup, nursery, workdir, environ, probe)

    tls_files = await _tls_files(plan, workdir)
    gateways = []
    for gw in plan.gateways:
        env = plan.gateway_env(gw, owned_url, environ, tls_files)
        child = await sup.spawn(nursery, gw.name, "gateway", plan.gateway_command, env, structured=True)
        gateways.append((gw, child))

    async def ready(gw: GatewayPlan, child: Child) -> None:
        get = partial(http_get, gw.http_port, "/readyz", probe, timeout_s=PROBE_TIMEOUT_S)

        async def probe_ready() -> bool:
            status, _ = await trio.to_thread.run_sync(get)
            return status == 200

        await wait_ready(child, "/readyz is not 200", probe_ready, plan.ready_timeout_s)

    async with trio.open_nursery() as waiters:
        for gw, child in gateways:
            waiters.start_soon(ready, gw, child)

    lb = None
    if plan.lb_port is not None:
        assert plan.haproxy_bin is not None
        stats_socket = workdir / "haproxy.sock"
        command = [plan.haproxy_bin, "-db", "-f", str(plan.haproxy_config)]
        lb = await sup.spawn(nursery, "haproxy", "haproxy", command, plan.haproxy_env(environ, stats_socket))
        stat = partial(haproxy_stat, stats_socket, timeout_s=PROBE_TIMEOUT_S)

        async def lb_ready() -> bool:
            return haproxy_ready(await trio.to_thread.run_sync(stat))

        what = "its runtime API shows no open frontend with a gateway UP"
        await wait_ready(lb, what, lb_ready, plan.ready_timeout_s)

    redis_url = owned_url or str(plan.redis_url)  # str(RedisURL) hides the password
    ports = [plan.lb_port] if lb else [gw.port for gw in plan.gateways]
    connect = [f"nc {plan.shown_host} {port}" for port in ports]
    ca = f" -CAfile {tls_files[0]}" if tls_files and plan.tls and plan.tls.cert is None else ""
    connect_tls = [
        f"openssl s_client -connect {plan.shown_host}:{gw.tls_port} -quiet{ca}"
        for gw in plan.gateways if tls_files and gw.tls_port is not None
    ]
    if out.fmt == "json":
        out.event(
            "cluster.ready",
            connect=connect,
            connect_tls=connect_tls,
            haproxy=None if lb is None else {"port": plan.lb_port, "pid": lb.pid},
            no_haproxy_reason=plan.no_haproxy_reason or None,
            gateways=[
                {
                    "name": gw.name,
                    "listen": f"{plan.host}:{gw.port}",
                    "http": f"{plan.host}:{gw.http_port}",
                    "pid": child.pid,
                }
                for gw, child in gateways
            ],
            redis={"url": redis_url, "owned": owned_url is not None,
                   "data": None if plan.redis_data is None else str(plan.redis_data)},
            pids={c.name: c.pid for c in sup.children},
        )
        return
    out.say("")
    if lb:
        out.say(f"ready: {len(gateways)} gateway(s) behind HAProxy")
    else:
        out.say(f"ready: {len(gateways)} gateway(s), no load balancer ({plan.no_haproxy_reason})")
    for line in connect:
        out.say(f"  connect:   {line}")
    for line in connect_tls:
        out.say(f"  tls:       {line}")
    for gw, _ in gateways:
        http = f"http://{plan.shown_host}:{gw.http_port}/metrics"
        out.say(f"  {gw.name + ':':<10} chat {plan.host}:{gw.port}, {http}")
    owned = "external"
    if owned_url:
        owned = ("started here, emptied on exit" if plan.redis_data is None
                 else f"started here, data kept in {plan.redis_data}")
    out.say(f"  redis:     {redis_url} ({owned})")
    out.say("  stop:      Ctrl-C")
    out.say("")


async def _tls_files(plan: Plan, workdir: Path) -> tuple[Path, Path] | None:
    """The certificate and key the gateways serve TLS with: the given ones, or a
    self-signed pair (for localhost, 127.0.0.1 and ::1, valid 7 days) made with
    openssl in ``workdir``, which is removed when the cluster stops."""
    if plan.tls is None:
        return None
    if plan.tls.cert is not None and plan.tls.key is not None:
        return plan.tls.cert, plan.tls.key
    assert plan.tls.openssl_bin is not None
    cert, key = workdir / "tls-cert.pem", workdir / "tls-key.pem"
    command = [
        plan.tls.openssl_bin, "req", "-x509", "-newkey", "ec", "-pkeyopt",
        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "7", "-subj", "/CN=localhost",
        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1",
        "-keyout", str(key), "-out", str(cert),
    ]
    result = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip().splitlines()[-1:]
        raise ClusterError(f"openssl could not make a certificate: {' '.join(detail)}")
    return cert, key


async def run_cluster(plan: Plan, out: Output, environ: dict[str, str]) -> int:
    """Start everything, wait for Ctrl-C/SIGTERM/SIGHUP or a fatal exit, stop everything.

    Returns the exit status: 0 after a requested stop, 1 when start-up failed or
    Redis or HAProxy died.
    """
    sup = Supervisor(plan, out)
    status = 0
    with (
        tempfile.TemporaryDirectory(prefix="chat-cluster-") as tmp,
        # SIGHUP too: a closed terminal must not orphan the children.
        trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals,
    ):
        async with trio.open_nursery() as nursery:
            requested = trio.Event()

            async def watch_signals() -> None:
                async for signum in signals:
                    if requested.is_set():
                        out.event("cluster.hurry", signal=signal.Signals(signum).name)
                        sup.hurry.set()
                    else:
                        out.event("cluster.signal", signal=signal.Signals(signum).name)
                        requested.set()

            nursery.start_soon(watch_signals)
            running = trio.CancelScope()

            async def cancel_on(event: trio.Event) -> None:
                await event.wait()
                running.cancel()

            nursery.start_soon(cancel_on, requested)
            nursery.start_soon(cancel_on, sup.fatal)
            try:
                with running:
                    await _start(sup, nursery, Path(tmp), environ)
                    await trio.sleep_forever()
            except* ClusterError as group:
                for exc in _leaves(group):
                    out.event("cluster.failed", level="error", reason=str(exc))
                status = 1
            finally:
                with trio.CancelScope(shield=True):
                    if sup.fatal.is_set() and status == 0:
                        out.event("cluster.failed", level="error", reason=sup.fatal_reason)
                        status = 1
                    await sup.stop_all()
                    out.event(
                        "cluster.stopped",
                        left_running=[c.name for c in sup.children if c.running],
                    )
            nursery.cancel_scope.cancel()
    return status


def _leaves(group: BaseExceptionGroup[ClusterError]) -> list[ClusterError]:
    found: list[ClusterError] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found += _leaves(exc)
        else:
            found.append(exc)
    return found
