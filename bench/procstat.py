"""CPU time and resident memory of a process, read from ``/proc`` (Linux only).

CPU is ``utime + stime`` from ``/proc/PID/stat`` (all threads of the process,
children not included), in seconds.  Memory is ``VmRSS`` from
``/proc/PID/status``, in bytes.  A process that has exited reads as ``None``.
"""

from __future__ import annotations

import os

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds used so far by ``pid``, or ``None`` if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / _TICKS


def cpu_split(pid: int) -> tuple[float, float] | None:
    """``(user, system)`` CPU seconds used so far by ``pid``, or ``None`` if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()
    return int(fields[11]) / _TICKS, int(fields[12]) / _TICKS


def total_system(pids: list[int]) -> float:
    """Sum of the system (kernel) part of :func:`cpu_split` over ``pids``."""
    return sum((cpu_split(p) or (0.0, 0.0))[1] for p in pids)


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid`` in bytes (``VmRSS``), or ``None`` if it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def total_cpu(pids: list[int]) -> float:
    """Sum of :func:`cpu_seconds` over ``pids`` (a vanished process counts 0)."""
    return sum(cpu_seconds(p) or 0.0 for p in pids)


def total_rss(pids: list[int]) -> int:
    """Sum of :func:`rss_bytes` over ``pids`` (a vanished process counts 0)."""
    return sum(rss_bytes(p) or 0 for p in pids)
