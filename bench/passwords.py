"""What one account password costs the gateway: ``python -m bench.passwords``.

Hashes and verifies with the gateway's own argon2id parameters
(:mod:`services.gateway.accounts`), one at a time and then ``--threads`` at once
through ``trio.to_thread.run_sync`` with a ``CapacityLimiter`` as the gateway
does, and prints wall time per hash and the peak resident memory the hashes
added (``ru_maxrss``, from a fresh process so the figure is the hashes' own).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import trio

from services.gateway.accounts import HASH_MEMORY_KIB, HASH_PARALLELISM, HASH_TIME_COST


def _maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def _main(count: int, threads: int) -> None:
    from argon2 import PasswordHasher

    hasher = PasswordHasher(
        time_cost=HASH_TIME_COST, memory_cost=HASH_MEMORY_KIB, parallelism=HASH_PARALLELISM
    )
    before = _maxrss_kib()
    hashes, verifies = [], []
    stored = ""
    for i in range(count):
        started = time.perf_counter()
        stored = hasher.hash(f"password-{i}")
        hashes.append(time.perf_counter() - started)
        started = time.perf_counter()
        hasher.verify(stored, f"password-{i}")
        verifies.append(time.perf_counter() - started)
    one_at_a_time = _maxrss_kib()

    limiter = trio.CapacityLimiter(threads)
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(
                lambda i=i: trio.to_thread.run_sync(hasher.hash, f"pw-{i}", limiter=limiter)
            )
    concurrent_s = time.perf_counter() - started
    after = _maxrss_kib()

    print(f"argon2id m={HASH_MEMORY_KIB} KiB, t={HASH_TIME_COST}, p={HASH_PARALLELISM}; {stored[:30]}...")
    print(f"hash:   median {statistics.median(hashes) * 1000:.1f} ms, max {max(hashes) * 1000:.1f} ms")
    print(f"verify: median {statistics.median(verifies) * 1000:.1f} ms, max {max(verifies) * 1000:.1f} ms")
    print(f"{count} hashes through a CapacityLimiter({threads}): {concurrent_s:.2f} s "
          f"({count / concurrent_s:.1f} hashes/s)")
    print(f"peak RSS added: one at a time {(one_at_a_time - before) / 1024:.1f} MiB, "
          f"{threads} at once {(after - before) / 1024:.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.passwords", description=__doc__)
    parser.add_argument("--count", type=int, default=20, help="hashes in each run")
    parser.add_argument("--threads", type=int, default=2, help="CHAT_PASSWORD_HASH_THREADS")
    args = parser.parse_args()
    trio.run(_main, args.count, args.threads)


if __name__ == "__main__":
    main()
