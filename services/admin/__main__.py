"""Entry point of ``python -m services.admin`` and ``chat-admin``; see :mod:`services.admin`."""

from __future__ import annotations

from services.admin.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
