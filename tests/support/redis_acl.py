"""The Redis ACL that docs/OPERATIONS.md documents, as the tests and the deploy
files use it: one source, so the documented lines are the tested ones."""

from __future__ import annotations

import re

from tests.support.processes import REPO

OPERATIONS = REPO / "docs" / "OPERATIONS.md"
DOCUMENTED_PREFIX = "chat:"


def documented_acl_lines() -> list[str]:
    """The ``ACL SETUSER`` lines between the ``acl-begin``/``acl-end`` markers."""
    text = OPERATIONS.read_text()
    block = re.search(r"<!-- acl-begin -->\s*```\n(.*?)```\s*<!-- acl-end -->", text, re.S)
    assert block is not None, "docs/OPERATIONS.md has no <!-- acl-begin --> block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def aclfile_text(gateway_password: str, admin_password: str, prefix: str = DOCUMENTED_PREFIX,
                 *, extra_users: tuple[str, ...] = ()) -> str:
    """The documented lines as an aclfile (``user ...``), with these passwords and
    this key prefix, plus ``extra_users`` lines (the test's own superuser)."""
    lines = []
    for line in documented_acl_lines():
        line = line.replace("ACL SETUSER ", "user ", 1)
        line = line.replace(">GATEWAY_PASSWORD", f">{gateway_password}")
        line = line.replace(">ADMIN_PASSWORD", f">{admin_password}")
        line = line.replace(f"~{DOCUMENTED_PREFIX}*", f"~{prefix}*")
        line = line.replace(f"&{DOCUMENTED_PREFIX}*", f"&{prefix}*")
        lines.append(line.replace(" reset ", " ", 1))  # aclfiles start every user afresh
    return "\n".join([*lines, *extra_users]) + "\n"
