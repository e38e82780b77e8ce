"""Summarise ``py-spy record --format raw`` output: where a gateway spends its time.

``python -m bench.profile FILE...`` prints the functions with the most samples
on top of the stack (self time) and in the stack at all (inclusive time), as
shares of all samples, so the hot path of the fan-out can be read in a terminal.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path


def load(paths: list[Path]) -> Counter[str]:
    """Collapsed stacks (``frame;frame;... count``) summed over ``paths``."""
    stacks: Counter[str] = Counter()
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                stacks[stack] += int(count)
    return stacks


def _short(frame: str) -> str:
    # py-spy frames look like "function (path/to/file.py:123)"; keep file name and function.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit("/", 1)[-1].split(":", 1)[0] if where else ""
    return f"{name} ({file})" if file else name


def summarise(stacks: Counter[str], top: int = 25) -> str:
    """Text table of the top self and inclusive frames."""
    total = sum(stacks.values()) or 1
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for stack, n in stacks.items():
        frames = [_short(f) for f in stack.split(";")]
        self_time[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    out = [f"{total} samples", "", "self time:"]
    out += [f"  {n / total:6.1%}  {f}" for f, n in self_time.most_common(top)]
    out += ["", "inclusive time:"]
    out += [f"  {n / total:6.1%}  {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m bench.profile COLLAPSED.txt...", file=sys.stderr)
        return 2
    print(summarise(load([Path(a) for a in argv])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
