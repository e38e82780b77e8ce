"""The one process supervisor (services/common/processes.py) on real child processes."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.processes import Process, ProcessExited, wait_until

# Prints two lines and a log event, then waits to be stopped.
CHATTY = """
import json, sys, time
print("hello", flush=True)
print(json.dumps({"event": "demo.started", "n": 1}), flush=True)
print("to stderr", file=sys.stderr, flush=True)
time.sleep(60)
"""

# Ignores SIGTERM and starts a grandchild in its own process group that ignores it too.
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
print(child.pid, flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.fixture(params=["pipe", "log_path"])
def chatty(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Process]:
    log_path = tmp_path / "chatty.log" if request.param == "log_path" else None
    with Process("chatty", [sys.executable, "-c", CHATTY], log_path=log_path) as proc:
        yield proc


def test_lines_events_and_records(chatty: Process) -> None:
    assert chatty.wait_for_line(lambda line: line == "to stderr", 10, "the stderr line") == "to stderr"
    assert chatty.wait_for_event("demo.started", 10, n=1) == {"event": "demo.started", "n": 1}
    assert chatty.records() == [{"event": "demo.started", "n": 1}]
    assert chatty.lines[0] == "hello"
    assert "chatty| hello" in chatty.tail()
    with pytest.raises(TimeoutError, match=r"demo\.started n=2"):
        chatty.wait_for_event("demo.started", 0.3, n=2)
    assert chatty.running()
    assert chatty.stop() == -signal.SIGTERM
    assert not chatty.killed


@pytest.mark.parametrize("mode", ["pipe", "log_path"])
def test_waiting_for_a_line_that_never_comes_ends_with_the_process(mode: str, tmp_path: Path) -> None:
    log_path = tmp_path / "x.log" if mode == "log_path" else None
    argv = [sys.executable, "-c", "print('bye')"]
    with Process("short", argv, log_path=log_path) as proc, pytest.raises(ProcessExited, match="bye"):
        proc.wait_for_line(lambda line: line == "never", 10, "a line that never comes")


def test_stop_kills_what_ignores_sigterm_and_its_whole_group() -> None:
    with Process("stubborn", [sys.executable, "-c", STUBBORN]) as proc:
        grandchild = int(proc.wait_for_line(str.isdigit, 10, "the grandchild's pid"))
        started = time.monotonic()
        assert proc.stop(timeout_s=0.5) == -signal.SIGKILL
        assert time.monotonic() - started < 5
        assert proc.killed
        wait_until(lambda: not _alive(grandchild), 5, "the grandchild gone")


def test_an_interrupt_cuts_the_grace_period_short() -> None:
    hurry = threading.Event()
    with Process("stubborn", [sys.executable, "-c", STUBBORN]) as proc:
        proc.wait_for_line(str.isdigit, 10, "the grandchild's pid")
        threading.Timer(0.2, hurry.set).start()
        started = time.monotonic()
        proc.stop(timeout_s=60, interrupt=hurry)
        assert time.monotonic() - started < 5
        assert proc.killed


def test_on_line_gets_every_line_and_keep_lines_false_keeps_none() -> None:
    got: list[str] = []
    argv = [sys.executable, "-c", "print('a'); print('b' * 70000)"]
    with Process("cb", argv, on_line=got.append, keep_lines=False) as proc:
        assert proc.output_done.wait(10)
        assert proc.lines == []
    assert got[0] == "a"
    assert "".join(got[1:]) == "b" * 70000 and len(got) == 3  # cut at 64 KiB


def test_kill_is_immediate() -> None:
    with Process("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"]) as proc:
        assert proc.kill() == -signal.SIGKILL
        assert proc.stop() == -signal.SIGKILL  # only the first stop signals


def test_wait_until() -> None:
    values = iter([0, None, "", "found"])
    assert wait_until(lambda: next(values), 5, "a value", interval_s=0.01) == "found"
    with pytest.raises(TimeoutError, match="waiting for nothing"):
        wait_until(lambda: False, 0.1, "nothing", interval_s=0.01)
    with (
        Process("short", [sys.executable, "-c", "print('done')"]) as proc,
        pytest.raises(ProcessExited, match="short exited with status 0 before nothing"),
    ):
        wait_until(lambda: False, 30, "nothing", interval_s=0.01, process=proc)
