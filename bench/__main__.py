"""Command line: ``python -m bench {list,run,sweep}``; see ``docs/BENCHMARKS.md``.

Every run starts its own servers on free 127.0.0.1 ports, is bounded in time,
and stops every process it started, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bench.loadgen import LoadGenError, raise_nofile_limit
from bench.report import machine, plot_sweep, save, table
from bench.runner import SYSTEMS, run_system
from bench.scenarios import SCENARIOS, Scenario
from bench.servers import ServerError

DEFAULT_SWEEP_RATES = "50,100,200,300,400,600"
DEFAULT_PLOT = Path(__file__).resolve().parent.parent / "docs" / "bench-sweep.png"


def _systems(raw: str) -> list[str]:
    systems = [s.strip() for s in raw.split(",") if s.strip()]
    for s in systems:
        if s not in SYSTEMS:
            raise argparse.ArgumentTypeError(f"unknown system {s!r} (choose from {SYSTEMS})")
    return systems


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--systems",
        type=_systems,
        default=list(SYSTEMS),
        help="comma-separated: ours, ngircd (default: both)",
    )
    p.add_argument("--clients", type=int, help="number of client connections")
    p.add_argument("--gateways", type=int, help="gateway processes (ours only)")
    p.add_argument("--senders", type=int, help="clients that send")
    p.add_argument("--rate", type=float, help="messages per second, all senders together")
    p.add_argument("--duration", type=float, dest="duration_s", help="seconds of sending")
    p.add_argument(
        "--drain", type=float, dest="drain_s", help="seconds to wait for late deliveries after sending"
    )
    p.add_argument("--workers", type=int, help="load-generator processes")
    p.add_argument("--payload", type=int, dest="payload_bytes", help="message text bytes")
    p.add_argument("--inflight", type=int, help="handshakes in progress per load-generator worker")
    p.add_argument("--connect-timeout", type=float, dest="connect_timeout_s", help="seconds to connect all")
    p.add_argument("--keep-logs", action="store_true", help="keep the servers' logs")
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy every gateway during the window; collapsed stacks to DIR",
    )


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    keys = ["clients", "gateways", "senders", "rate", "duration_s", "drain_s", "workers", "payload_bytes"]
    keys += ["inflight", "connect_timeout_s"]
    return {k: getattr(args, k) for k in keys}


def _log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def cmd_list(_: argparse.Namespace) -> int:
    for s in SCENARIOS.values():
        print(f"{s.name:9s} {s.description}")
        print(
            f"{'':9s} clients={s.clients} gateways={s.gateways} senders={s.senders} "
            f"rate={s.rate:g}/s duration={s.duration_s:g}s"
        )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    command = " ".join(shlex.quote(a) for a in ["python", "-m", "bench", *sys.argv[1:]])
    everything: dict[str, Any] = {"command": command, "machine": machine(), "scenarios": {}}
    path = args.out
    for name in args.scenarios:
        scn = SCENARIOS[name].with_overrides(**_overrides(args))
        _log(f"== scenario {name}: {scn}")
        results: dict[str, Any] = {}
        everything["scenarios"][name] = results
        for system in args.systems:
            results[system] = run_system(system, scn, _log, args.keep_logs, args.profile)
            # Saved after every system, so a long run interrupted later keeps what it measured.
            path = save("run-" + "-".join(args.scenarios), everything, path)
        print()
        print(f"### {name}: {scn.description}")
        print()
        print(table(results))
    _log(f"results saved to {path}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    command = " ".join(shlex.quote(a) for a in ["python", "-m", "bench", *sys.argv[1:]])
    base: Scenario = SCENARIOS[args.scenario].with_overrides(**_overrides(args))
    if args.duration_s is None:
        base = base.with_overrides(duration_s=6.0)
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    points: dict[str, list[dict[str, Any]]] = {s: [] for s in args.systems}
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in args.systems}
    for rate in rates:
        for system in args.systems:
            scn = base.with_overrides(rate=rate)
            _log(f"== sweep {system} at {rate:g} msgs/s")
            r = run_system(system, scn, _log, args.keep_logs, args.profile)
            runs[system].append(r)
            m = r["measure"]
            points[system].append(
                {
                    "offered_msgs_per_s": rate,
                    "offered_deliveries_per_s": m["offered_deliveries_per_s"],
                    "achieved_deliveries_per_s": m["achieved_deliveries_per_s"],
                    "lost": m["lost"],
                    "latency": m["latency"],
                    "cpu": m["cpu"],
                }
            )
    title = (
        f"{base.clients} clients, {base.senders} senders, ours: {base.gateways} gateways + Redis; "
        f"{base.duration_s:g}s per point; {machine()['cpus']} CPUs; `{command}`"
    )
    plot = plot_sweep(points, args.plot, title)
    _log(f"plot saved to {plot}")
    print()
    print("| offered msgs/s | system | offered deliveries/s | achieved | lost | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for rate_i, rate in enumerate(rates):
        for system in args.systems:
            p = points[system][rate_i]
            print(
                f"| {rate:g} | {system} | {p['offered_deliveries_per_s']:,.0f} | "
                f"{p['achieved_deliveries_per_s']:,.0f} | {p['lost']:,} | "
                f"{p['latency']['p50_ms']} | {p['latency']['p99_ms']} |"
            )
    path = save(
        "sweep",
        {"command": command, "machine": machine(), "scenario": base.name, "points": points, "runs": runs},
        args.out,
    )
    _log(f"results saved to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Chat gateway benchmark: our gateways + Redis against ngircd, same workload.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="list the scenarios")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("run", help="run scenarios against ours and ngircd")
    p.add_argument(
        "scenarios",
        nargs="+",
        choices=sorted(SCENARIOS),
        metavar="SCENARIO",
        help=f"one or more of: {', '.join(SCENARIOS)}",
    )
    _add_overrides(p)
    p.add_argument("--out", type=Path, help="JSON file (default: bench/results/<time>-run-*.json)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("sweep", help="sweep the offered rate; draws docs/bench-sweep.png")
    p.add_argument(
        "--scenario",
        default="heavy",
        choices=sorted(SCENARIOS),
        help="scenario whose rate is swept (default: heavy)",
    )
    p.add_argument(
        "--rates",
        default=DEFAULT_SWEEP_RATES,
        help=f"messages/s to try, comma-separated (default: {DEFAULT_SWEEP_RATES})",
    )
    _add_overrides(p)
    p.add_argument("--plot", type=Path, default=DEFAULT_PLOT, help="PNG to write")
    p.add_argument("--out", type=Path, help="JSON file (default: bench/results/<time>-sweep.json)")
    p.set_defaults(func=cmd_sweep)
    return parser


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwind, so every started process is stopped


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    raise_nofile_limit()  # inherited by the servers we start (ngircd, redis, gateways)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        _log("interrupted; every process started has been stopped")
        return 130
    except (ServerError, LoadGenError, RuntimeError) as exc:
        _log(f"benchmark failed: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
