"""The local cluster's output: JSON lines tagged with their source, or a console rendering."""

from __future__ import annotations

import io
import json

from services.cluster.logs import Output

GATEWAY_EVENT = {
    "timestamp": "2024-05-01T12:34:56.789Z",
    "level": "error",
    "event": "http.error",
    "gateway": "gw1",
    "path": "/readyz",
    "exception": "Traceback (most recent call last):\n  ...\nValueError: boom",
}


def test_json_mode_tags_every_line_with_its_source() -> None:
    stream = io.StringIO()
    out = Output("json", stream)
    out.line("gw1", json.dumps(GATEWAY_EVENT), structured=True)
    out.line("redis", "Ready to accept connections", structured=False)
    out.line("gw2", "{not json", structured=True)
    out.event("cluster.signal", signal="SIGINT")
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert records[0] == {**GATEWAY_EVENT, "source": "gw1"}
    assert records[1]["event"] == "process.output" and records[1]["source"] == "redis"
    assert records[1]["line"] == "Ready to accept connections"
    assert records[2]["event"] == "process.output" and records[2]["line"] == "{not json"
    assert records[3]["event"] == "cluster.signal" and records[3]["source"] == "cluster"


def test_console_mode_prefixes_every_line_with_its_source() -> None:
    stream = io.StringIO()
    out = Output("console", stream)
    out.line("gw1", json.dumps(GATEWAY_EVENT), structured=True)
    out.say("ready")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("gw1     | 12:34:56 [error")
    assert "http.error" in lines[0] and "path=/readyz" in lines[0]
    assert "gateway=" not in lines[0] and "2024-05-01" not in lines[0]
    assert lines[1:4] == ["gw1     |   Traceback (most recent call last):", "gw1     |     ...",
                          "gw1     |   ValueError: boom"]
    assert lines[4] == "cluster | ready"


def test_a_reader_that_went_away_does_not_stop_the_supervisor() -> None:
    stream = io.StringIO()
    stream.close()
    Output("json", stream).event("cluster.stopped", left_running=[])
