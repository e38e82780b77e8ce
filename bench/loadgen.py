"""The load generator: many raw TCP clients per OS process, driven by a controller.

:class:`LoadGen` (in the controller process) owns ``W`` worker processes.  Each
worker owns every ``W``-th client, one non-blocking socket each, on ``epoll``;
it never runs a task per client.  Client ``i`` connects to
``targets[i % len(targets)]`` and is called ``<prefix><i>``.

A *window* is one measurement: its senders send at a fixed total rate for a
duration (or once each, for a broadcast), and every client counts what it
receives.  Each message text is ``<token> <sender>.<seq>.<send time>`` plus
padding (send time in microseconds of ``CLOCK_REALTIME``); ``token`` is new for
every window, so lines of an earlier window never count in a later one.

What it promises:

* **Exact loss.** Every client counts the window's lines in each read with
  ``bytes.count`` (C speed, no per-line Python).  Once the senders are done, the
  controller tells every worker how many messages each sender sent; a client's
  expected count is that total (minus its own messages where the server does not
  echo), and the worker waits until every client has its count or the drain
  deadline passes.  ``lost`` is the sum of the shortfalls.
* **Latency from a verified sample.** On a *verified* subset of clients (all of
  them at low rates, see ``verify_fraction``) every line is parsed: per-sender
  sequence numbers tell gaps from duplicates/reordering, and each line's latency
  is the kernel's receive timestamp (``SO_TIMESTAMPNS``, when the bytes reached
  the client's socket) minus the send time in the line.  The load generator's own
  reading delay is therefore *not* in the latency; it is reported separately
  (``read_delay``).  Verified sockets are polled at once.
* **Cheap bulk reading.** The other sockets are polled in batches every
  ``bulk_interval_s`` (several lines per ``recv``), because on a small VM each
  ``recv`` costs ~10 us of kernel time whatever its size.
"""

from __future__ import annotations

import array
import contextlib
import errno
import os
import re
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from bench.protocols import Dialect, HandshakeError, dialect_for
from services.common.processes import die_with_parent

_REPO = Path(__file__).resolve().parent.parent
_WORKER_BOOT = "import bench.loadgen as m; m.worker_entry()"

READ_SIZE = 65536
BULK_INTERVAL_S = 0.1
_HUGE = 1 << 62
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_CMSG_SPACE = socket.CMSG_SPACE(16)
_TIMESPEC = struct.Struct("qq")
_MAX_RECORDED_ERRORS = 20
_EPOLLIN = select.EPOLLIN
_EPOLLOUT = select.EPOLLOUT
_EPOLL_READ_EVENTS = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP

# Client states.
_NEW, _CONNECTING, _HANDSHAKE, _READY, _CLOSED = range(5)


class LoadGenError(Exception):
    """A worker failed or did not answer in time; the message says which and why."""


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What one worker process owns: its clients (global indices) and where they connect."""

    worker_id: int
    dialect: str
    clients: tuple[int, ...]
    targets: tuple[tuple[str, int], ...]
    nick_prefix: str
    max_inflight: int
    bulk_interval_s: float = BULK_INTERVAL_S


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """One measurement window, the same for every worker.

    The start time ``t0`` (``CLOCK_MONOTONIC`` ns) is given once every worker
    has armed the window, so no worker can miss the first lines.
    ``duration_s == 0`` means a broadcast: each sender sends exactly one message
    at ``t0``.  Otherwise message ``k`` of the window is sent at ``t0 + k / rate``
    by sender ``senders[k % S]``, while that is before the end: the total rate is
    ``rate`` and the senders take turns evenly.
    """

    token: str
    duration_s: float
    rate: float
    senders: tuple[int, ...]
    verify_fraction: float
    drain_s: float
    payload_bytes: int = 64


def is_verified(index: int, fraction: float) -> bool:
    """Whether client ``index`` parses every line (a hash spreads them over gateways)."""
    if fraction >= 1.0:
        return True
    return ((index * 2654435761) & 0xFFFFFFFF) < fraction * 0x100000000


def schedule(spec: WindowSpec, t0_ns: int) -> list[tuple[int, int]]:
    """``(send time ns, sender rank)`` of every message of the window, in time order."""
    n = len(spec.senders)
    if n == 0:
        return []
    if spec.duration_s <= 0:
        return [(t0_ns, r) for r in range(n)]
    out: list[tuple[int, int]] = []
    end = t0_ns + int(spec.duration_s * 1e9)
    step = 1e9 / spec.rate
    k = 0
    while True:
        t = t0_ns + int(k * step)
        if t >= end:
            break
        out.append((t, k % n))
        k += 1
    return out


def message_text(mark: bytes, sender: int, seq: int, sent_us: int, payload_bytes: int) -> bytes:
    """The text of one bench message, padded with ``x`` to about ``payload_bytes``."""
    head = mark + b"%d.%d.%d" % (sender, seq, sent_us)
    pad = payload_bytes - len(head) - 1
    return head + b" " + b"x" * pad if pad > 0 else head


class _Client:
    __slots__ = (
        "count",
        "done",
        "dups",
        "exp",
        "expected",
        "fd",
        "gaps",
        "hs_state",
        "in_bulk",
        "in_window",
        "index",
        "nick",
        "out",
        "pending",
        "reason",
        "sock",
        "state",
        "target",
        "verified",
        "wmask",
    )

    def __init__(self, index: int, nick: str, target: tuple[str, int]) -> None:
        self.index = index
        self.nick = nick
        self.target = target
        self.sock: socket.socket | None = None
        self.fd = -1
        self.state = _NEW
        self.hs_state = 0
        self.pending = b""
        self.out = b""
        self.wmask = False
        self.in_bulk = False
        self.reason: str | None = None
        self.verified = False
        self.in_window = False
        self.count = 0
        self.expected = _HUGE
        self.done = False
        self.exp: dict[bytes, int] = {}
        self.gaps = 0
        self.dups = 0


class _Window:
    """A worker's state for the current window."""

    def __init__(self, spec: WindowSpec, mine: set[int]) -> None:
        self.spec = spec
        self.mine = mine
        self.mark = spec.token.encode("ascii") + b" "
        self.pat = re.compile(re.escape(self.mark) + rb"(\d+)\.(\d+)\.(\d+)")
        self.end_ns = _HUGE
        self.lat = array.array("q")  # per verified line: kernel receive time - send time, us
        self.read_delay = array.array("q")  # per verified read: our recv time - kernel time, us
        self.last_rx_ns = 0
        self.received_in_window: int | None = None
        self.sent: dict[int, int] = dict.fromkeys(mine, 0)
        self.send_lag_max_us = 0
        self.n_done = 0
        self.phase = "armed"
        self.queue: list[tuple[int, int]] = []
        self.cpu0 = _cpu_self()
        self.alive = 0
        self.deadline_ns = 0
        self.reads = 0


def _cpu_self() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def raise_nofile_limit() -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Worker:
    """One worker process's event loop; see the module docstring for what it promises."""

    def __init__(self, ctrl: Connection, spec: WorkerSpec) -> None:
        self.ctrl = ctrl
        self.spec = spec
        self.dialect: Dialect = dialect_for(spec.dialect)
        self.ep = select.epoll()  # control pipe, handshakes, verified clients
        self.ep_bulk = select.epoll()  # every other ready client, polled in batches
        self.by_fd: dict[int, _Client] = {}
        self.clients = [
            _Client(i, f"{spec.nick_prefix}{i}", spec.targets[i % len(spec.targets)]) for i in spec.clients
        ]
        self.by_index = {c.index: c for c in self.clients}
        self.markers = self.dialect.control_markers
        self.buf = bytearray(READ_SIZE)
        self.errors: list[str] = []
        self.n_errors = 0
        self.stopping = False
        # connect phase
        self.connect_queue: list[_Client] = []
        self.inflight = 0
        self.n_ready = 0
        self.n_failed = 0
        self.n_retries = 0
        self.connect_deadline_ns = 0
        self.connecting = False
        self.connect_cpu0 = 0.0
        # window
        self.win: _Window | None = None
        self.total = 0

    # -- the loop -------------------------------------------------------------------

    def run(self) -> None:
        ctrl_fd = self.ctrl.fileno()
        self.ep.register(ctrl_fd, _EPOLLIN)
        poll = self.ep.poll
        poll_bulk = self.ep_bulk.poll
        interval_ns = int(self.spec.bulk_interval_s * 1e9)
        next_bulk = time.monotonic_ns() + interval_ns
        while not self.stopping:
            timeout = min(self._timeout(), max(0.0, (next_bulk - time.monotonic_ns()) / 1e9))
            for fd, ev in poll(timeout, 4096):
                if fd == ctrl_fd:
                    self._on_command()
                else:
                    self._on_event(fd, ev)
            now = time.monotonic_ns()
            if now >= next_bulk:
                next_bulk = now + interval_ns
                for i, (fd, ev) in enumerate(poll_bulk(0, 65536)):
                    self._on_event(fd, ev)
                    if i & 63 == 63:
                        self._send_due()  # keep the send schedule during a long batch
            self._tick()
        for c in self.clients:
            self._close(c, "bench finished", quiet=True)
        self.ep.close()
        self.ep_bulk.close()

    def _on_event(self, fd: int, ev: int) -> None:
        c = self.by_fd.get(fd)
        if c is None:
            return
        if ev & _EPOLLOUT:
            self._on_writable(c)
            if c.state == _CLOSED:
                return
        if ev & _EPOLL_READ_EVENTS:
            state = c.state
            if state == _READY:
                if c.verified:
                    self._read_verified(c)
                else:
                    self._read_bulk(c)
            elif state == _HANDSHAKE:
                self._read_handshake(c)
            elif state == _CONNECTING:
                self._on_writable(c)

    def _timeout(self) -> float:
        w = self.win
        if self.connecting and self.connect_queue and self.inflight < self.spec.max_inflight:
            return 0.0
        if w is not None and w.phase == "send":
            nxt = w.queue[-1][0] if w.queue else w.end_ns
            return max(0.0, min(0.05, (nxt - time.monotonic_ns()) / 1e9))
        return 0.05

    # -- control -------------------------------------------------------------------

    def _reply(self, kind: str, payload: Any) -> None:
        self.ctrl.send((kind, payload))

    def _on_command(self) -> None:
        try:
            msg = self.ctrl.recv()
        except (EOFError, OSError):
            self.stopping = True
            return
        kind = msg[0]
        if kind == "stop":
            self.stopping = True
        elif kind == "connect":
            self._begin_connect(msg[1])
        elif kind == "window":
            self._begin_window(msg[1])
        elif kind == "go":
            self._go(msg[1])
        elif kind == "expect":
            self._begin_drain(msg[1])
        else:
            raise ValueError(f"unknown command {kind!r}")

    def _record_error(self, text: str) -> None:
        self.n_errors += 1
        if len(self.errors) < _MAX_RECORDED_ERRORS:
            self.errors.append(text)

    # -- sockets -----------------------------------------------------------------

    def _epoll_of(self, c: _Client) -> select.epoll:
        return self.ep_bulk if c.in_bulk else self.ep

    def _events(self, c: _Client) -> int:
        return _EPOLLIN | (_EPOLLOUT if c.wmask else 0)

    def _place(self, c: _Client) -> None:
        """Put a ready client in the bulk set unless it is verified (then: polled at once)."""
        if c.state != _READY:
            return
        bulk = not c.verified
        if bulk != c.in_bulk:
            self._epoll_of(c).unregister(c.fd)
            c.in_bulk = bulk
            self._epoll_of(c).register(c.fd, self._events(c))

    def _set_wmask(self, c: _Client, want: bool) -> None:
        if c.wmask != want and c.state != _CLOSED:
            c.wmask = want
            self._epoll_of(c).modify(c.fd, self._events(c))

    def _send(self, c: _Client, data: bytes) -> None:
        if c.state == _CLOSED:
            return
        if c.out:
            c.out += data
            return
        assert c.sock is not None
        try:
            n = c.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self._close(c, f"send: {exc}")
            return
        if n < len(data):
            c.out = data[n:]
            self._set_wmask(c, True)

    def _on_writable(self, c: _Client) -> None:
        sock = c.sock
        assert sock is not None
        if c.state == _CONNECTING:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._fail(c, f"connect: {os.strerror(err)}")
                return
            c.state = _HANDSHAKE
            self._set_wmask(c, False)
            hello = self.dialect.on_connect(c.nick)
            if hello:
                self._send(c, hello)
            return
        if c.out:
            try:
                n = sock.send(c.out)
            except BlockingIOError:
                return
            except OSError as exc:
                self._close(c, f"send: {exc}")
                return
            c.out = c.out[n:]
        if not c.out:
            self._set_wmask(c, False)

    def _close(self, c: _Client, reason: str, quiet: bool = False) -> None:
        if c.state == _CLOSED:
            return
        was = c.state
        c.state = _CLOSED
        if c.sock is None:
            return
        if c.reason is None:
            c.reason = reason
        self.by_fd.pop(c.fd, None)
        with contextlib.suppress(OSError, ValueError):
            self._epoll_of(c).unregister(c.fd)
        c.sock.close()
        if was in (_CONNECTING, _HANDSHAKE):
            self.inflight -= 1
            self.n_failed += 1
        elif not quiet:
            self._record_error(f"{c.nick}: disconnected: {c.reason}")
        w = self.win
        if w is not None and w.phase == "drain" and c.in_window and not c.done:
            c.done = True
            w.n_done += 1

    # -- connecting ----------------------------------------------------------------

    def _begin_connect(self, timeout_s: float) -> None:
        self.connect_queue = [c for c in reversed(self.clients) if c.state == _NEW]
        self.connect_deadline_ns = time.monotonic_ns() + int(timeout_s * 1e9)
        self.connecting = True
        self.connect_cpu0 = _cpu_self()
        self._tick()

    def _start_connect(self, c: _Client) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.sock = s
        c.fd = s.fileno()
        c.state = _CONNECTING
        self.inflight += 1
        err = s.connect_ex(c.target)
        if err not in (0, errno.EINPROGRESS):
            self._fail(c, f"connect: {os.strerror(err)}")
            return
        self.by_fd[c.fd] = c
        c.wmask = True
        self.ep.register(c.fd, _EPOLLIN | _EPOLLOUT)

    def _fail(self, c: _Client, reason: str) -> None:
        """A client that never became ready: counted as failed, socket closed."""
        self._record_error(f"{c.nick}: {reason}")
        self._close(c, reason, quiet=True)

    def _read_handshake(self, c: _Client) -> None:
        assert c.sock is not None
        try:
            data = c.sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(c, f"recv: {exc}")
            return
        if not data:
            self._fail(c, "closed by server during handshake")
            return
        lines = (c.pending + data).split(b"\n")
        c.pending = lines.pop()
        for i, raw in enumerate(lines):
            line = raw[:-1] if raw.endswith(b"\r") else raw
            try:
                c.hs_state, step = self.dialect.handshake_line(c.nick, c.hs_state, line)
            except HandshakeError as exc:
                self._fail(c, str(exc))
                return
            if step.retry:
                self.n_retries += 1
                self._record_error(f"{c.nick}: retried after: {line.decode('utf-8', 'replace')}")
            if step.send:
                self._send(c, step.send)
            if step.ready:
                c.state = _READY
                self.inflight -= 1
                self.n_ready += 1
                for rest in lines[i + 1 :]:
                    if rest.startswith(self.markers):
                        self._control_line(c, rest.rstrip(b"\r"))
                self._place(c)
                return

    def _tick_connect(self, now: int) -> None:
        while self.connect_queue and self.inflight < self.spec.max_inflight:
            self._start_connect(self.connect_queue.pop())
        if now >= self.connect_deadline_ns:
            for c in self.clients:
                if c.state in (_CONNECTING, _HANDSHAKE):
                    self._fail(c, "handshake timed out")
            for c in self.connect_queue:
                c.state = _CLOSED
                self.n_failed += 1
                self._record_error(f"{c.nick}: not started before the deadline")
            self.connect_queue = []
        if not self.connect_queue and self.inflight == 0:
            self.connecting = False
            self._reply(
                "connected",
                {
                    "ready": self.n_ready,
                    "failed": self.n_failed,
                    "retries": self.n_retries,
                    "errors": self.errors[:],
                    "n_errors": self.n_errors,
                    "cpu_s": _cpu_self() - self.connect_cpu0,
                },
            )

    # -- reading ready clients --------------------------------------------------------

    def _take_lines(self, c: _Client, k: int) -> tuple[bytes | bytearray, int]:
        """Join ``buf[:k]`` to the client's unfinished line; return data and end of its last line."""
        data: bytes | bytearray
        if c.pending:
            data = c.pending + self.buf[:k]
            k = len(data)
        else:
            data = self.buf
        if data[k - 1] == 10:
            c.pending = b""
            return data, k
        cut = data.rfind(b"\n", 0, k) + 1
        c.pending = bytes(data[cut:k])
        return data, cut

    def _read_bulk(self, c: _Client) -> None:
        """The hot path: count this window's lines, look at anything else."""
        try:
            k = c.sock.recv_into(self.buf)  # type: ignore[union-attr]
        except BlockingIOError:
            return
        except OSError as exc:
            self._close(c, f"recv: {exc}")
            return
        if k == 0:
            self._close(c, "connection closed by server")
            return
        data, cut = self._take_lines(c, k)
        if cut == 0:
            return
        w = self.win
        if w is None:
            self._scan_markers(c, data, cut)
            return
        w.reads += 1
        n = data.count(w.mark, 0, cut)
        if n:
            w.last_rx_ns = time.monotonic_ns()
            c.count += n
            self.total += n
            if c.count >= c.expected and not c.done:
                c.done = True
                w.n_done += 1
        if n != data.count(b"\n", 0, cut):
            self._scan_control(c, bytes(data[:cut]))

    def _read_verified(self, c: _Client) -> None:
        """Like :meth:`_read_bulk`, and parse every line against the kernel's receive time."""
        try:
            k, anc, _flags, _addr = c.sock.recvmsg_into([self.buf], _CMSG_SPACE)  # type: ignore[union-attr]
        except BlockingIOError:
            return
        except OSError as exc:
            self._close(c, f"recv: {exc}")
            return
        if k == 0:
            self._close(c, "connection closed by server")
            return
        now_us = time.time_ns() // 1000
        rx_us = now_us
        for level, kind, raw in anc:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
                sec, nsec = _TIMESPEC.unpack_from(raw)
                rx_us = sec * 1_000_000 + nsec // 1000
        data, cut = self._take_lines(c, k)
        if cut == 0:
            return
        w = self.win
        if w is None:
            self._scan_markers(c, data, cut)
            return
        w.reads += 1
        n = data.count(w.mark, 0, cut)
        if n:
            w.last_rx_ns = time.monotonic_ns()
            w.read_delay.append(now_us - rx_us)
            c.count += n
            self.total += n
            exp = c.exp
            append = w.lat.append
            for sid, seq, ts in w.pat.findall(data, 0, cut):
                q = int(seq)
                e = exp.get(sid, 0)
                if q == e:
                    exp[sid] = q + 1
                elif q > e:
                    c.gaps += q - e
                    exp[sid] = q + 1
                else:
                    c.dups += 1
                append(rx_us - int(ts))
            if c.count >= c.expected and not c.done:
                c.done = True
                w.n_done += 1
        if n != data.count(b"\n", 0, cut):
            self._scan_control(c, bytes(data[:cut]))

    def _scan_markers(self, c: _Client, data: bytes | bytearray, cut: int) -> None:
        for marker in self.markers:
            if data.find(marker, 0, cut) >= 0:
                self._scan_control(c, bytes(data[:cut]))
                return

    def _scan_control(self, c: _Client, data: bytes) -> None:
        markers = self.markers
        for raw in data.split(b"\n"):
            if raw.startswith(markers):
                self._control_line(c, raw.rstrip(b"\r"))

    def _control_line(self, c: _Client, line: bytes) -> None:
        reply, error = self.dialect.control_line(line)
        if reply:
            self._send(c, reply)
        if error is not None:
            c.reason = error
            self._record_error(f"{c.nick}: {error}")

    # -- windows -------------------------------------------------------------------

    def _begin_window(self, spec: WindowSpec) -> None:
        mine = {idx for idx in spec.senders if idx in self.by_index}
        w = _Window(spec, mine)
        for c in self.clients:
            c.count = 0
            c.expected = _HUGE
            c.in_window = c.state == _READY
            c.done = False
            c.exp = {}
            c.gaps = 0
            c.dups = 0
            c.verified = is_verified(c.index, spec.verify_fraction)
            if c.in_window:
                w.alive += 1
                if c.verified:
                    assert c.sock is not None
                    c.sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
                self._place(c)
        self.total = 0
        self.errors = []
        self.n_errors = 0
        self.win = w
        self._reply("armed", None)

    def _go(self, t0_ns: int) -> None:
        w = self.win
        assert w is not None and w.phase == "armed"
        spec = w.spec
        w.end_ns = t0_ns + int(spec.duration_s * 1e9)
        # Pending sends, latest first, so pop() takes the next one.
        w.queue = [(t, r) for t, r in schedule(spec, t0_ns) if spec.senders[r] in w.mine]
        w.queue.reverse()
        w.phase = "send"
        self._tick()

    def _send_due(self) -> None:
        w = self.win
        if w is None or w.phase != "send":
            return
        queue = w.queue
        if not queue:
            return
        now_ns = time.monotonic_ns()
        spec = w.spec
        frame = self.dialect.frame
        while queue and queue[-1][0] <= now_ns:
            t, r = queue.pop()
            sid = spec.senders[r]
            c = self.by_index[sid]
            if c.state != _READY:
                continue
            seq = w.sent[sid]
            lag = (time.monotonic_ns() - t) // 1000
            if lag > w.send_lag_max_us:
                w.send_lag_max_us = lag
            sent_us = time.time_ns() // 1000
            self._send(c, frame(message_text(w.mark, sid, seq, sent_us, spec.payload_bytes)))
            w.sent[sid] = seq + 1

    def _tick(self) -> None:
        now = time.monotonic_ns()
        if self.connecting:
            self._tick_connect(now)
        w = self.win
        if w is None:
            return
        if w.phase == "send":
            self._send_due()
            if now >= w.end_ns and not w.queue:
                w.phase = "await_expect"
                w.received_in_window = self.total
                unsent = sum(len(self.by_index[s].out) for s in w.sent)
                self._reply(
                    "sent",
                    {"sent": w.sent, "unsent_bytes": unsent, "send_lag_max_us": w.send_lag_max_us},
                )
        elif w.phase == "drain" and (w.n_done >= len(self.clients) or now >= w.deadline_ns):
            self._finish_window(w)

    def _begin_drain(self, sent: dict[int, int]) -> None:
        w = self.win
        assert w is not None
        total = sum(sent.values())
        echo = self.dialect.echo
        w.deadline_ns = time.monotonic_ns() + int(w.spec.drain_s * 1e9)
        w.phase = "drain"
        w.n_done = 0
        w.sent = sent
        for c in self.clients:
            if not c.in_window:
                c.done = True
                w.n_done += 1
                continue
            c.expected = total if echo else total - sent.get(c.index, 0)
            c.done = c.state != _READY or c.count >= c.expected
            if c.done:
                w.n_done += 1
        self._tick()

    def _finish_window(self, w: _Window) -> None:
        sent = w.sent
        echo = self.dialect.echo
        expected = shortfall = excess = short_conns = 0
        v_conns = v_gaps = v_dups = v_missing = 0
        closed = 0
        for c in self.clients:
            if not c.in_window:
                continue
            expected += c.expected
            if c.count < c.expected:
                shortfall += c.expected - c.count
                short_conns += 1
            else:
                excess += c.count - c.expected
            if c.state != _READY:
                closed += 1
            if c.verified:
                v_conns += 1
                v_gaps += c.gaps
                v_dups += c.dups
                for sid, n in sent.items():
                    if not echo and sid == c.index:
                        continue
                    v_missing += max(0, n - c.exp.get(b"%d" % sid, 0))
        self._reply(
            "window_done",
            {
                "alive_at_start": w.alive,
                "closed_during": closed,
                "expected": expected,
                "received": self.total,
                "received_in_window": w.received_in_window,
                "shortfall": shortfall,
                "excess": excess,
                "short_conns": short_conns,
                "verified_conns": v_conns,
                "verified_gaps": v_gaps,
                "verified_dups_or_reordered": v_dups,
                "verified_missing_tail": v_missing,
                "lat_us": w.lat.tobytes(),
                "read_delay_us": w.read_delay.tobytes(),
                "last_rx_ns": w.last_rx_ns,
                "reads": w.reads,
                "cpu_s": _cpu_self() - w.cpu0,
                "errors": self.errors[:],
                "n_errors": self.n_errors,
            },
        )
        self.win = None
        for c in self.clients:
            c.verified = False
            self._place(c)


def worker_entry() -> None:
    """``python -c`` entry point of a worker: argv[1] is the controller socket's fd."""
    ctrl = Connection(int(sys.argv[1]))
    worker_main(ctrl, ctrl.recv())


def worker_main(ctrl: Connection, spec: WorkerSpec) -> None:
    """Serve the controller until ``stop`` or EOF (always closes ``ctrl``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the controller handles Ctrl-C and stops us
    die_with_parent()
    raise_nofile_limit()
    try:
        Worker(ctrl, spec).run()
    except Exception:  # noqa: BLE001 - reported to the controller, which raises it
        with contextlib.suppress(OSError):
            ctrl.send(("error", traceback.format_exc()))
    finally:
        ctrl.close()


# -- the controller side ------------------------------------------------------------------


def _percentile(sorted_values: list[int], p: float) -> int | None:
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, round(p / 100 * (len(sorted_values) - 1)))
    return sorted_values[i]


def summarize_us(values: array.array[int]) -> dict[str, float | int | None]:
    """Count, p50, p99 and max of microsecond samples, in milliseconds."""
    s = sorted(values)
    out: dict[str, float | int | None] = {"samples": len(s)}
    for name, p in (("p50_ms", 50.0), ("p99_ms", 99.0), ("max_ms", 100.0)):
        v = _percentile(s, p)
        out[name] = None if v is None else round(v / 1000, 3)
    return out


class LoadGen:
    """Owns the worker processes; use as a context manager so they always stop.

    Methods block until every worker has answered or their timeout passes,
    then raise :class:`LoadGenError`.
    """

    def __init__(
        self,
        dialect: str,
        targets: list[tuple[str, int]],
        n_clients: int,
        workers: int,
        nick_prefix: str = "b",
        max_inflight: int = 64,
        bulk_interval_s: float = BULK_INTERVAL_S,
    ) -> None:
        self.dialect = dialect
        self.targets = tuple(targets)
        self.n_clients = n_clients
        self.n_workers = max(1, min(workers, n_clients))
        self.nick_prefix = nick_prefix
        self.max_inflight = max_inflight
        self.bulk_interval_s = bulk_interval_s
        self.procs: list[subprocess.Popen[bytes]] = []
        self.conns: list[Connection] = []
        self.t0_ns = 0
        self.echo = dialect_for(dialect).echo

    def __enter__(self) -> LoadGen:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO), env.get("PYTHONPATH", "")) if p)
        try:
            for w in range(self.n_workers):
                spec = WorkerSpec(
                    worker_id=w,
                    dialect=self.dialect,
                    clients=tuple(range(w, self.n_clients, self.n_workers)),
                    targets=self.targets,
                    nick_prefix=self.nick_prefix,
                    max_inflight=self.max_inflight,
                    bulk_interval_s=self.bulk_interval_s,
                )
                ours, theirs = socket.socketpair()
                with ours, theirs:
                    proc = subprocess.Popen(
                        [sys.executable, "-c", _WORKER_BOOT, str(theirs.fileno())],
                        pass_fds=(theirs.fileno(),),
                        stdin=subprocess.DEVNULL,
                        env=env,
                        preexec_fn=die_with_parent,
                    )
                    self.procs.append(proc)
                    conn = Connection(ours.detach())
                self.conns.append(conn)
                conn.send(spec)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every worker: ask, then terminate, then kill; never leaves one running."""
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("stop",))
        deadline = time.monotonic() + 5.0
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(2.0)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(2.0)
        for conn in self.conns:
            conn.close()
        self.procs = []
        self.conns = []

    def worker_pids(self) -> list[int]:
        """Process ids of the workers (for CPU accounting)."""
        return [p.pid for p in self.procs]

    def _broadcast(self, msg: tuple[Any, ...]) -> None:
        for conn in self.conns:
            conn.send(msg)

    def _gather(self, kind: str, timeout_s: float) -> list[Any]:
        replies: dict[int, Any] = {}
        deadline = time.monotonic() + timeout_s
        index = {id(c): i for i, c in enumerate(self.conns)}
        while len(replies) < len(self.conns):
            left = deadline - time.monotonic()
            waiting = [c for i, c in enumerate(self.conns) if i not in replies]
            if left <= 0:
                raise LoadGenError(f"{len(waiting)} worker(s) gave no {kind!r} in {timeout_s:.0f}s")
            for conn in wait(waiting, left):
                assert isinstance(conn, Connection)
                i = index[id(conn)]
                try:
                    got, payload = conn.recv()
                except (EOFError, OSError):
                    raise LoadGenError(f"worker {i} exited unexpectedly") from None
                if got == "error":
                    raise LoadGenError(f"worker {i} failed:\n{payload}")
                if got != kind:
                    raise LoadGenError(f"worker {i} answered {got!r}, expected {kind!r}")
                replies[i] = payload
        return [replies[i] for i in range(len(self.conns))]

    def connect(self, timeout_s: float) -> dict[str, Any]:
        """Connect and register every client; returns counts of ready and failed clients."""
        self._broadcast(("connect", timeout_s))
        replies = self._gather("connected", timeout_s + 30)
        return {
            "ready": sum(r["ready"] for r in replies),
            "failed": sum(r["failed"] for r in replies),
            "retries": sum(r["retries"] for r in replies),
            "n_errors": sum(r["n_errors"] for r in replies),
            "errors": [e for r in replies for e in r["errors"]][:_MAX_RECORDED_ERRORS],
            "loadgen_cpu_s": sum(r["cpu_s"] for r in replies),
        }

    def begin_window(self, spec: WindowSpec, lead_s: float) -> int:
        """Arm the window on every worker, then start it ``lead_s`` from now; returns ``t0``."""
        self._broadcast(("window", spec))
        self._gather("armed", 60)
        t0_ns = time.monotonic_ns() + int(lead_s * 1e9)
        self._broadcast(("go", t0_ns))
        self.t0_ns = t0_ns
        return t0_ns

    def end_window(self, spec: WindowSpec) -> dict[str, Any]:
        """Wait for the senders, hand out the sent counts, wait for the drain; aggregate.

        Counts are deliveries (one message received by one client).  ``latency``
        and ``read_delay`` are summaries in milliseconds (see the module docstring).
        """
        wait_s = max(0.0, (self.t0_ns - time.monotonic_ns()) / 1e9) + spec.duration_s + 30
        sent_replies = self._gather("sent", wait_s)
        sent: dict[int, int] = {}
        for r in sent_replies:
            sent.update(r["sent"])
        self._broadcast(("expect", sent))
        done = self._gather("window_done", spec.drain_s + 30)
        lat: array.array[int] = array.array("q")
        delay: array.array[int] = array.array("q")
        for r in done:
            lat.frombytes(r["lat_us"])
            delay.frombytes(r["read_delay_us"])
        received = sum(r["received"] for r in done)
        reads = sum(r["reads"] for r in done)
        return {
            "messages_sent": sum(sent.values()),
            "senders_that_sent": sum(1 for n in sent.values() if n),
            "unsent_bytes_at_end": sum(r["unsent_bytes"] for r in sent_replies),
            "send_lag_max_ms": max(r["send_lag_max_us"] for r in sent_replies) / 1000,
            "clients_alive": sum(r["alive_at_start"] for r in done),
            "closed_during": sum(r["closed_during"] for r in done),
            "expected": sum(r["expected"] for r in done),
            "received": received,
            "received_in_window": sum(r["received_in_window"] or 0 for r in done),
            "lost": sum(r["shortfall"] for r in done),
            "excess": sum(r["excess"] for r in done),
            "short_clients": sum(r["short_conns"] for r in done),
            "verified_clients": sum(r["verified_conns"] for r in done),
            "verified_gaps": sum(r["verified_gaps"] for r in done),
            "verified_dups_or_reordered": sum(r["verified_dups_or_reordered"] for r in done),
            "verified_missing_tail": sum(r["verified_missing_tail"] for r in done),
            "latency": summarize_us(lat),
            "read_delay": summarize_us(delay),
            "last_rx_ns": max(r["last_rx_ns"] for r in done),
            "reads": reads,
            "lines_per_read": round(received / reads, 2) if reads else None,
            "loadgen_cpu_s": sum(r["cpu_s"] for r in done),
            "n_errors": sum(r["n_errors"] for r in done),
            "errors": [e for r in done for e in r["errors"]][:_MAX_RECORDED_ERRORS],
        }
