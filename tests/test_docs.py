"""The documentation stays true to the code.

- every log event the services emit is described in docs/OPERATIONS.md;
- every ``CHAT_*`` setting is in README.md;
- every slash command is in docs/PROTOCOL.md and in the ``/help`` text;
- every folder and module README.md's layout table names exists.

Event names are found with :mod:`ast`, not by importing anything, so an event
added anywhere under ``services/`` fails this test until it is documented.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from services.common.config import Settings, env_name
from services.gateway import protocol
from services.gateway.commands import Commands

REPO = Path(__file__).resolve().parents[1]
SERVICES = REPO / "services"
OPERATIONS = REPO / "docs" / "OPERATIONS.md"
PROTOCOL = REPO / "docs" / "PROTOCOL.md"
README = REPO / "README.md"

LOG_METHODS = frozenset({"debug", "info", "warning", "error", "exception", "critical"})
# A stable dotted event name such as "client.left".  Calls like
# ``p.info("chat is back")`` (protocol lines, not log events) never match.
EVENT_NAME = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+")


def _string_constants(node: ast.expr) -> Iterator[str]:
    """The string constants an argument can evaluate to (both arms of ``a if c else b``)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, ast.IfExp):
        yield from _string_constants(node.body)
        yield from _string_constants(node.orelse)


def _sources() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(SERVICES.rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _first_arg_names(methods: frozenset[str]) -> dict[str, str]:
    """Event name -> ``file:line`` of calls ``<anything>.<method>("dotted.name", ...)``."""
    found: dict[str, str] = {}
    for path, tree in _sources():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in methods
                and node.args
            ):
                for value in _string_constants(node.args[0]):
                    if EVENT_NAME.fullmatch(value):
                        found.setdefault(value, f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def structlog_events() -> dict[str, str]:
    """Every event name passed to a structlog call (``log.info``, ``self.log.warning``...)."""
    return _first_arg_names(LOG_METHODS)


def supervisor_events() -> dict[str, str]:
    """Events of the local cluster supervisor: ``out.event("name", ...)`` calls and
    ``{"event": "name"}`` records it builds by hand."""
    found = _first_arg_names(frozenset({"event"}))
    for path, tree in _sources():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Dict):
                continue
            for key, value in zip(node.keys, node.values, strict=True):
                if (
                    isinstance(key, ast.Constant)
                    and key.value == "event"
                    and isinstance(value, ast.Constant)
                    and isinstance(value.value, str)
                    and EVENT_NAME.fullmatch(value.value)
                ):
                    found.setdefault(value.value, f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def _undocumented(events: dict[str, str], doc: str) -> list[str]:
    return sorted(f"{name} ({where})" for name, where in events.items() if f"`{name}`" not in doc)


def test_the_event_extractor_finds_the_known_events() -> None:
    # Guards the extractor itself: a regex or AST change that finds nothing would
    # make the real check below pass vacuously.
    events = structlog_events()
    for name in ("client.left", "gateway.reaped", "redis.connected", "redis.reconnected",
                 "client.slow_consumer", "http.error"):
        assert name in events, name
    assert not any(" " in name for name in events)
    assert "process.started" in supervisor_events()


def test_every_log_event_is_documented_in_operations() -> None:
    doc = OPERATIONS.read_text(encoding="utf-8")
    missing = _undocumented(structlog_events(), doc)
    assert not missing, f"log events missing from docs/OPERATIONS.md: {missing}"


def test_every_supervisor_event_is_documented_in_operations() -> None:
    doc = OPERATIONS.read_text(encoding="utf-8")
    missing = _undocumented(supervisor_events(), doc)
    assert not missing, f"cluster supervisor events missing from docs/OPERATIONS.md: {missing}"


def test_every_setting_is_in_the_readme() -> None:
    readme = README.read_text(encoding="utf-8")
    names = [env_name(f.name) for f in dataclasses.fields(Settings)]
    assert "CHAT_REDIS_URL" in names
    missing = [name for name in names if not re.search(rf"\b{re.escape(name)}\b", readme)]
    assert not missing, f"settings missing from README.md: {missing}"


def _command_names() -> list[str]:
    # The table is built in __init__ from bound methods; no gateway is needed to read it.
    return sorted(Commands(cast(Any, None)).table)


@pytest.mark.parametrize("name", _command_names())
def test_every_command_is_in_protocol_doc_and_help(name: str) -> None:
    mention = re.compile(rf"(?<![\w/])/{re.escape(name)}\b")
    assert mention.search(PROTOCOL.read_text(encoding="utf-8")), f"/{name} missing from docs/PROTOCOL.md"
    assert any(mention.search(line) for line in protocol.HELP_LINES), f"/{name} missing from HELP_LINES"


def _layout_rows() -> list[tuple[str, list[str]]]:
    """``(folder, [module.py, ...])`` for each row of README.md's layout table."""
    text = README.read_text(encoding="utf-8")
    table = text[text.index("## Layout") :]
    rows = []
    for line in table.splitlines():
        cells = line.split("|")
        if len(cells) < 3 or not cells[1].strip().startswith("`"):
            continue
        folder = cells[1].strip().split("`")[1]
        rows.append((folder, re.findall(r"`([a-z_]+\.py)`", cells[2])))
    return rows


def test_the_readme_layout_names_real_folders_and_modules() -> None:
    rows = _layout_rows()
    assert ("services/admin/", ["commands.py", "render.py", "cli.py"]) in rows  # guards the parser
    missing = [
        f"{folder}{module}"
        for folder, modules in rows
        for module in modules
        if folder.endswith("/") and not (REPO / folder / module).is_file()
    ]
    missing += [folder for folder, _ in rows if folder.endswith("/") and not (REPO / folder).is_dir()]
    assert not missing, f"README.md's layout table names what does not exist: {missing}"
