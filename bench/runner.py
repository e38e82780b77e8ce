"""Run a scenario against one system from start to finish and return its figures.

:func:`run_system` starts the servers (our Redis + gateways, or ngircd), connects
the clients, lets the join announcements settle, times one broadcast, measures
memory per connection, runs the measurement window, and stops everything, also
when interrupted.  Everything it returns is JSON-serialisable.
"""

from __future__ import annotations

import math
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.loadgen import LoadGen, WindowSpec
from bench.scenarios import Scenario
from bench.servers import Cluster, flood_limits, start_ngircd, start_ours

SYSTEMS = ("ours", "ngircd")
Log = Callable[[str], None]


def _token(kind: str) -> str:
    return kind + secrets.token_hex(3)


def _window(lg: LoadGen, cluster: Cluster, spec: WindowSpec, fanout: int, lead_s: float) -> dict[str, Any]:
    """Run one window; add rates and per-role CPU (from ``t0`` to the end of the drain)."""
    t0_ns = lg.begin_window(spec, lead_s)
    time.sleep(max(0.0, (t0_ns - time.monotonic_ns()) / 1e9))
    cpu0, sys0 = cluster.cpu(), cluster.system_cpu()
    wall0 = time.monotonic()
    res = lg.end_window(spec)
    wall = time.monotonic() - wall0
    cpu1, sys1 = cluster.cpu(), cluster.system_cpu()
    cluster.check_alive()
    delivered = res["received"]
    duration = spec.duration_s
    cpu: dict[str, dict[str, float | None]] = {}
    for role in cpu0:
        spent = cpu1[role] - cpu0[role]
        cpu[role] = {
            "seconds": round(spent, 3),
            "cores": round(spent / wall, 3) if wall > 0 else None,
            "us_per_delivery": round(spent / delivered * 1e6, 3) if delivered else None,
            "kernel_share": round((sys1[role] - sys0[role]) / spent, 3) if spent > 0 else None,
        }
    lg_spent = res["loadgen_cpu_s"]
    cpu["loadgen"] = {
        "seconds": round(lg_spent, 3),
        "cores": round(lg_spent / wall, 3) if wall > 0 else None,
        "us_per_delivery": round(lg_spent / delivered * 1e6, 3) if delivered else None,
    }
    out: dict[str, Any] = {
        "token": spec.token,
        "senders": len(spec.senders),
        "duration_s": duration,
        "fanout": fanout,
        "verify_fraction": round(spec.verify_fraction, 4),
        "wall_s": round(wall, 3),
    }
    if duration > 0:
        out.update(
            offered_msgs_per_s=spec.rate,
            offered_deliveries_per_s=round(spec.rate * fanout, 1),
            sent_deliveries_per_s=round(res["messages_sent"] * fanout / duration, 1),
            achieved_deliveries_per_s=round(res["received_in_window"] / duration, 1),
        )
    out.update(res)
    out["cpu"] = cpu
    return out


def _start_profilers(cluster: Cluster, out_dir: Path, seconds: float) -> list[subprocess.Popen[bytes]]:
    """``py-spy record`` (collapsed stacks) on every gateway process for ``seconds``."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for m in cluster.roles.get("gateway", []):
        out = out_dir / f"{m.name}.collapsed.txt"
        argv = [exe, "record", "--pid", str(m.pid), "--duration", str(math.ceil(seconds))]
        argv += ["--rate", "250", "--nonblocking", "--format", "raw", "-o", str(out)]
        procs.append(
            subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )
    return procs


def _stop_profilers(procs: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def run_system(
    system: str,
    scn: Scenario,
    log: Log = print,
    keep_logs: bool = False,
    profile_dir: Path | None = None,
) -> dict[str, Any]:
    """Run ``scn`` against ``system`` (``ours`` or ``ngircd``); every server is stopped after.

    With ``profile_dir``, every gateway is sampled by ``py-spy`` during the
    measurement window (collapsed stacks written there; ``python -m bench.profile``
    summarises them).

    Raises :class:`bench.servers.ServerError` or :class:`bench.loadgen.LoadGenError`
    when the run cannot be completed (a server died, a worker failed or hung).
    """
    if system not in SYSTEMS:
        raise ValueError(f"unknown system {system!r}; choose from {', '.join(SYSTEMS)}")
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{system}-"))
    result: dict[str, Any] = {"system": system, "scenario": asdict(scn)}
    try:
        if system == "ours":
            burst, rate = flood_limits(scn.per_sender_rate)
            per_gateway = math.ceil(scn.clients / scn.gateways)
            log(
                f"[{system}] starting redis + {scn.gateways} gateway(s); flood control "
                f"lifted to burst {burst}, {rate:g} lines/s per client"
            )
            cluster = start_ours(workdir, scn.gateways, per_gateway, burst, rate)
            dialect, inflight = "chat", scn.inflight or 64
            result["flood_control"] = {"burst": burst, "rate_per_s": rate}
        else:
            log(f"[{system}] starting ngircd (penalties off: MaxPenaltyTime = 0)")
            cluster = start_ngircd(workdir)
            # ngircd listens with a backlog of 10: more connects at once get SYNs dropped.
            dialect, inflight = "irc", scn.inflight or 4
        with cluster:
            result["servers"] = {"targets": [f"{h}:{p}" for h, p in cluster.targets]}
            result["servers"].update(cluster.settings)
            rss0 = cluster.rss()
            with LoadGen(dialect, cluster.targets, scn.clients, scn.workers, max_inflight=inflight) as lg:
                log(f"[{system}] connecting {scn.clients} clients with {lg.n_workers} workers")
                t = time.monotonic()
                conn = lg.connect(scn.connect_timeout_s)
                conn["seconds"] = round(time.monotonic() - t, 2)
                result["connect"] = conn
                ready = conn["ready"]
                log(f"[{system}] {ready} ready, {conn['failed']} failed in {conn['seconds']}s")
                cluster.check_alive()
                if ready == 0:
                    raise RuntimeError(f"no client connected: {conn['errors'][:3]}")
                fanout = ready if lg.echo else ready - 1
                first = tuple(range(min(len(cluster.targets), scn.clients)))
                drain = max(60.0, scn.clients / 20)
                # 1. Wait out the join announcements (every join goes to every member).
                t = time.monotonic()
                settle = WindowSpec(_token("Bs"), 0, 0, first, 0.0, drain)
                s = _window(lg, cluster, settle, fanout, 0.05)
                result["settle_s"] = round(time.monotonic() - t, 2)
                if s["lost"]:
                    log(f"[{system}] settle broadcast: {s['lost']} deliveries missing")
                # 2. Memory once everyone is connected and quiet.
                rss1 = cluster.rss()
                result["memory"] = {
                    role: {
                        "before_bytes": rss0.get(role, 0),
                        "after_bytes": rss1[role],
                        "per_connection_bytes": round((rss1[role] - rss0.get(role, 0)) / ready),
                    }
                    for role in rss1
                }
                # 3. One broadcast from one client to all, every delivery timed.
                bc = WindowSpec(_token("Bb"), 0, 0, first[:1], 1.0, drain)
                result["broadcast"] = _window(lg, cluster, bc, fanout, 0.1)
                lat = result["broadcast"]["latency"]
                log(
                    f"[{system}] broadcast to {ready}: p50 {lat['p50_ms']} ms, "
                    f"p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms"
                )
                # 4. The measurement window.
                if scn.senders and scn.rate:
                    senders = tuple(range(min(scn.senders, scn.clients)))
                    spec = WindowSpec(
                        token=_token("Bz"),
                        duration_s=scn.duration_s,
                        rate=scn.rate,
                        senders=senders,
                        verify_fraction=scn.verify_fraction(fanout),
                        drain_s=scn.drain_s,
                        payload_bytes=scn.payload_bytes,
                    )
                    log(
                        f"[{system}] measuring: {len(senders)} senders, {scn.rate:g} msgs/s, "
                        f"{scn.duration_s:g}s ({scn.rate * fanout:,.0f} deliveries/s offered)"
                    )
                    profilers = []
                    if profile_dir is not None:
                        profilers = _start_profilers(cluster, profile_dir, scn.duration_s)
                    try:
                        m = _window(lg, cluster, spec, fanout, 0.3)
                    finally:
                        _stop_profilers(profilers, 30)
                    result["measure"] = m
                    log(
                        f"[{system}] achieved {m['achieved_deliveries_per_s']:,.0f} deliveries/s, "
                        f"lost {m['lost']}, p50 {m['latency']['p50_ms']} ms, "
                        f"p99 {m['latency']['p99_ms']} ms"
                    )
        return result
    finally:
        if keep_logs:
            log(f"[{system}] logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
