"""Turn run results into a Markdown table, a JSON file, and the sweep plot."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def revision() -> str:
    """The commit the gateway code was run at, ``+dirty`` when ``services/`` had local changes."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "services"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def machine() -> dict[str, Any]:
    """What the figures were measured on (and at which commit of the gateway)."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "revision": revision(),
    }


def save(kind: str, payload: dict[str, Any], out: Path | None = None) -> Path:
    """Write ``payload`` as JSON under ``bench/results/`` (or to ``out``); returns the path."""
    if out is None:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        out = RESULTS_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return out


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}{unit}"
        if abs(v) >= 10:
            return f"{v:.1f}{unit}"
        return f"{v:.2f}{unit}"
    if isinstance(v, int):
        return f"{v:,}{unit}"
    return f"{v}{unit}"


def _get(d: dict[str, Any], *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def _kib(v: Any) -> str:
    return "-" if v is None else f"{v / 1024:.1f} KiB"


def table(results: dict[str, dict[str, Any]]) -> str:
    """A Markdown table with one column per system (``ours``, ``ngircd``) of one scenario."""
    systems = list(results)
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, fn: Any) -> None:
        cells = []
        for s in systems:
            try:
                cells.append(fn(results[s]))
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append("-")
        rows.append((label, cells))

    row("clients ready / failed", lambda r: f"{r['connect']['ready']:,} / {r['connect']['failed']:,}")
    row("handshake retries (join failed, asked again)", lambda r: _fmt(r["connect"].get("retries", 0)))
    row("connect + join time", lambda r: _fmt(r["connect"]["seconds"], " s"))
    row("join announcements settled after", lambda r: _fmt(r.get("settle_s"), " s"))
    row("deliveries per message", lambda r: _fmt(r["broadcast"]["fanout"]))
    has_measure = any("measure" in results[s] for s in systems)
    if has_measure:
        m = "measure"
        row("offered msgs/s (senders)", lambda r: f"{_fmt(r[m]['offered_msgs_per_s'])} ({r[m]['senders']})")
        row("offered deliveries/s", lambda r: _fmt(r[m]["offered_deliveries_per_s"]))
        row("achieved deliveries/s", lambda r: _fmt(r[m]["achieved_deliveries_per_s"]))
        row("lost deliveries (of expected)", lambda r: f"{r[m]['lost']:,} of {r[m]['expected']:,}")
        row(
            "dup/reordered, gaps (verified clients)",
            lambda r: (
                f"{r[m]['verified_dups_or_reordered']}, {r[m]['verified_gaps']} ({r[m]['verified_clients']})"
            ),
        )
        row("clients disconnected", lambda r: _fmt(r[m]["closed_during"]))
        row("latency p50", lambda r: _fmt(r[m]["latency"]["p50_ms"], " ms"))
        row("latency p99", lambda r: _fmt(r[m]["latency"]["p99_ms"], " ms"))
        row("latency max", lambda r: _fmt(r[m]["latency"]["max_ms"], " ms"))
        row("latency samples", lambda r: _fmt(r[m]["latency"]["samples"]))
        for role, label in (("gateway", "gateways"), ("redis", "Redis"), ("ngircd", "ngircd")):
            row(
                f"CPU {label}: us/delivery (cores)",
                lambda r, role=role: (
                    f"{_fmt(r[m]['cpu'][role]['us_per_delivery'])} ({_fmt(r[m]['cpu'][role]['cores'])})"
                ),
            )
        row(
            "CPU in the kernel (share): gateways / Redis / ngircd",
            lambda r: " / ".join(
                _fmt(r[m]["cpu"][role].get("kernel_share")) if role in r[m]["cpu"] else "-"
                for role in ("gateway", "redis", "ngircd")
            ),
        )
        row(
            "CPU load generator: us/delivery (cores)",
            lambda r: (
                f"{_fmt(r[m]['cpu']['loadgen']['us_per_delivery'])} ({_fmt(r[m]['cpu']['loadgen']['cores'])})"
            ),
        )
        row("load generator lines per read", lambda r: _fmt(r[m]["lines_per_read"]))
        row("load generator read delay p99", lambda r: _fmt(r[m]["read_delay"]["p99_ms"], " ms"))
    row(
        "broadcast to all: p50 / p99 / max",
        lambda r: (
            f"{_fmt(r['broadcast']['latency']['p50_ms'])} / "
            f"{_fmt(r['broadcast']['latency']['p99_ms'])} / "
            f"{_fmt(r['broadcast']['latency']['max_ms'])} ms"
        ),
    )
    for role, label in (("gateway", "gateways"), ("redis", "Redis"), ("ngircd", "ngircd")):
        row(
            f"RSS per connection, {label}",
            lambda r, role=role: _kib(r["memory"][role]["per_connection_bytes"]),
        )
    row("errors seen by clients", lambda r: _fmt(_get(r, "measure", "n_errors") or 0))

    header = "| | " + " | ".join(systems) + " |\n|---|" + "---|" * len(systems) + "\n"
    return header + "".join(f"| {label} | " + " | ".join(c) + " |\n" for label, c in rows)


def plot_sweep(points: dict[str, list[dict[str, Any]]], out: Path, title: str) -> Path:
    """Draw delivered rate and latency against offered rate, one line per system; save PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rate, ax_lat, ax_cpu) = plt.subplots(1, 3, figsize=(17, 4.8))
    colours = {"ours": "tab:blue", "ngircd": "tab:orange"}
    top = 0.0
    for system, pts in points.items():
        pts = sorted(pts, key=lambda p: p["offered_deliveries_per_s"])
        x = [p["offered_deliveries_per_s"] / 1000 for p in pts]
        top = max(top, *x) if x else top
        colour = colours.get(system)
        ax_rate.plot(
            x, [p["achieved_deliveries_per_s"] / 1000 for p in pts], "o-", color=colour, label=system
        )
        ax_lat.plot(x, [p["latency"]["p50_ms"] for p in pts], "o-", color=colour, label=f"{system} p50")
        ax_lat.plot(x, [p["latency"]["p99_ms"] for p in pts], "s--", color=colour, label=f"{system} p99")
        server = [sum(v["us_per_delivery"] or 0 for k, v in p["cpu"].items() if k != "loadgen") for p in pts]
        ax_cpu.plot(x, server, "o-", color=colour, label=f"{system}: servers")
        loadgen = [p["cpu"]["loadgen"]["us_per_delivery"] for p in pts]
        ax_cpu.plot(x, loadgen, "^:", color=colour, label=f"{system}: load generator")
    ax_rate.plot([0, top], [0, top], ":", color="grey", label="delivered = offered")
    ax_rate.set_xlabel("offered deliveries/s (thousands)")
    ax_rate.set_ylabel("delivered deliveries/s (thousands)")
    ax_rate.set_title("throughput")
    ax_rate.legend()
    ax_rate.grid(alpha=0.3)
    ax_lat.set_xlabel("offered deliveries/s (thousands)")
    ax_lat.set_ylabel("latency (ms, log scale)")
    ax_lat.set_yscale("log")
    ax_lat.set_title("latency, send to receiving socket")
    ax_lat.legend()
    ax_lat.grid(alpha=0.3, which="both")
    ax_cpu.set_xlabel("offered deliveries/s (thousands)")
    ax_cpu.set_ylabel("CPU microseconds per delivery (log scale)")
    ax_cpu.set_yscale("log")
    ax_cpu.set_title("CPU cost (ours: gateways + Redis)")
    ax_cpu.legend()
    ax_cpu.grid(alpha=0.3, which="both")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
