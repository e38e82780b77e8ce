"""Entry point of ``python -m services.cluster``; see :mod:`services.cluster`."""

from __future__ import annotations

from services.cluster.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
