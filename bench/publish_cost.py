"""Redis CPU per chat line, measured: ``python -m bench.publish_cost [--compare TREE]``.

Runs the publish script of this tree (and, with ``--compare``, of another checkout
of the repository, e.g. one made with ``git worktree add /tmp/old <rev>``) on a
redis-server of its own each, in interleaved batches so both see the same machine
load, with the room's log and history at their entry caps, and prints Redis's
own ``usec_per_call`` for EVALSHA (INFO commandstats).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from services.cluster.redis_server import find_redis_server, redis_server_command
from services.common.probes import free_port, redis_ping

REPO = Path(__file__).resolve().parent.parent

# Run inside each tree's own interpreter state: prints the script and its KEYS and
# ARGV (as JSON) for a chat line in room #r under prefix m:.
_PROBE = """
import inspect, json
from services.common.bus import Bus, HISTORY_KEEP, REPLAY_WINDOW
from services.common.bus.scripts import script_source
from services.common.keys import Keys
k, room = Keys("m:"), "#r"
keys = [k.epoch, k.room_seq(room), k.room_log(room), k.room_history(room)]
args = [k.room_channel(room), room, "BODY", REPLAY_WINDOW, 0, HISTORY_KEEP]
if "log_bytes" in inspect.signature(Bus).parameters:  # byte caps: more KEYS and ARGV
    from services.common.bus import HISTORY_BYTES, LOG_BYTES, ROOM_RETENTION_S
    keys += [k.room_members(room), k.room_bytes(room)]
    args += [LOG_BYTES, HISTORY_BYTES, ROOM_RETENTION_S]
print(json.dumps({"source": script_source("publish"), "keys": keys, "args": args,
                  "members": k.room_members(room)}))
"""


def probe(tree: Path) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=tree, check=True,
                         capture_output=True, text=True).stdout
    return dict(json.loads(out))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.publish_cost", description=__doc__)
    parser.add_argument("--compare", type=Path, help="another checkout to measure beside this one")
    parser.add_argument("--rounds", type=int, default=40, help="batches of 500 calls each")
    args = parser.parse_args(argv)
    binary = find_redis_server()
    if binary is None:
        print("redis-server is not installed", file=sys.stderr)
        return 1
    trees = [REPO] + ([args.compare.resolve()] if args.compare else [])
    body = json.dumps({"k": "msg", "n": "alice", "x": "y" * 100, "g": "gw1~0123abcd",
                       "t": time.time(), "i": "1"}, separators=(",", ":"))
    procs, runs = [], []
    with tempfile.TemporaryDirectory(prefix="chat-publish-cost-") as workdir:
        try:
            for tree in trees:
                port = free_port()
                procs.append(subprocess.Popen(
                    redis_server_command(binary, port, workdir=workdir, loglevel="warning"),
                    stdout=subprocess.DEVNULL))
                deadline = time.monotonic() + 10
                while not redis_ping(port):
                    if time.monotonic() > deadline:
                        raise RuntimeError("redis-server did not answer")
                    time.sleep(0.05)
                spec = probe(tree)
                rc = redis.Redis(port=port)
                rc.hset(str(spec["members"]), "alice", "alice")
                sha = rc.script_load(str(spec["source"]))
                keys = list(spec["keys"])  # type: ignore[call-overload]
                call = [sha, len(keys), *keys,
                        *[body if a == "BODY" else a for a in spec["args"]]]  # type: ignore[attr-defined]
                for _ in range(2500):  # log and history past their entry caps
                    rc.evalsha(*call)
                rc.config_resetstat()
                runs.append((tree, rc, call))
            for _ in range(args.rounds):
                for _tree, rc, call in runs:
                    pipe = rc.pipeline(transaction=False)
                    for _ in range(500):
                        pipe.evalsha(*call)
                    pipe.execute()
            for tree, rc, _call in runs:
                stats = rc.info("commandstats")["cmdstat_evalsha"]
                print(f"{tree}: {stats['usec_per_call']} us of Redis CPU per chat line"
                      f" ({stats['calls']} calls)")
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
