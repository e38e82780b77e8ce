"""``chat-admin``'s command line: arguments, settings, output format, exit status.

Exit status: 0 on success; 1 when the target does not exist, no gateway received
a command, or Redis cannot be reached; 2 for bad usage or configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields
from typing import Any, TextIO

import redis

from services.admin.commands import (
    AdminError,
    UsageError,
    accounts,
    announce,
    ban,
    bans,
    connect,
    drop_account,
    gateways,
    kick,
    unban,
    who,
)
from services.admin.render import render_accounts, render_bans, render_gateways, render_who
from services.common.config import ConfigError, Settings, given_settings
from services.common.keys import Keys

DEFAULT_KICK_REASON = "no reason given"
_DEFAULTS = {f.name: f.metadata["raw_default"] for f in fields(Settings)}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    parser = argparse.ArgumentParser(
        prog="chat-admin",
        description="Inspect and steer a running chat cluster through its Redis.",
        parents=[common],
    )
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        help=f"the cluster's Redis [env CHAT_REDIS_URL, default {_DEFAULTS['redis_url']}]",
    )
    parser.add_argument(
        "--key-prefix",
        metavar="PREFIX",
        help=f"prefix of every key [env CHAT_KEY_PREFIX, default {_DEFAULTS['key_prefix']}]",
    )
    parser.add_argument("--timeout-s", type=float, default=5.0, metavar="SECONDS", help="Redis deadline")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("who", parents=[common], help="every online nickname and its gateway")
    sub.add_parser("gateways", parents=[common], help="gateways, heartbeats, client counts")
    kick_p = sub.add_parser("kick", parents=[common], help="disconnect a user, with a reason")
    kick_p.add_argument("nick")
    kick_p.add_argument("reason", nargs="*", help=f"shown to the user (default: {DEFAULT_KICK_REASON})")
    announce_p = sub.add_parser("announce", parents=[common], help="a line to every client")
    announce_p.add_argument("text", nargs="+")
    sub.add_parser("accounts", parents=[common], help="every registered nickname")
    drop_p = sub.add_parser(
        "drop-account", parents=[common],
        help="free a registered nickname (its holder, if online, keeps it until it leaves)",
    )
    drop_p.add_argument("nick")
    ban_p = sub.add_parser(
        "ban", parents=[common],
        help="refuse an address or network (CIDR) everywhere and cut its clients",
    )
    ban_p.add_argument("target", metavar="ADDRESS|CIDR")
    ban_p.add_argument("--for", dest="duration", metavar="DURATION",
                       help="lift it after this long: 90s, 10m, 2h, 7d (default: never)")
    ban_p.add_argument("reason", nargs="*", help="shown to the banned clients")
    unban_p = sub.add_parser("unban", parents=[common], help="lift a ban (the exact ADDRESS|CIDR)")
    unban_p.add_argument("target", metavar="ADDRESS|CIDR")
    sub.add_parser("bans", parents=[common], help="bans in force, with expiry and reason")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; a ban's reason may follow ``--for`` (argparse alone would
    refuse the words after it)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command != "ban" or any(word.startswith("-") for word in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.reason = [*args.reason, *extra]
    return args


def read_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """The Redis URL and key prefix: flags, then ``CHAT_*`` variables, then defaults.

    Every ``CHAT_*`` variable's name is checked, as the gateway checks it; the
    values of settings the admin tool does not use are left to the gateway.
    Raises :class:`UsageError`.
    """
    flags = {"redis_url": args.redis_url, "key_prefix": args.key_prefix}
    # The topology and TLS settings come from the same CHAT_* variables as the gateway's.
    topology = ("redis_mode", "redis_sentinel_master", "redis_sentinel_password",
                "redis_tls_ca", "redis_tls_cert", "redis_tls_key")
    try:
        return Settings(**given_settings(environ, flags, only=[*flags, *topology]))
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def run(args: argparse.Namespace, out: TextIO, environ: Mapping[str, str]) -> int:
    """Carry out one command; raises :class:`AdminError`."""
    settings = read_settings(args, environ)
    url = settings.redis_url
    keys = Keys(settings.key_prefix)
    as_json = getattr(args, "json", False)
    client = connect(url, args.timeout_s, settings)
    try:
        result: Any
        if args.command == "who":
            online = who(client, keys)
            result = {"online": [asdict(o) for o in online], "count": len(online)}
            text = render_who(online)
        elif args.command == "gateways":
            states = gateways(client, keys)
            result = {"gateways": [asdict(s) for s in states]}
            text = render_gateways(states)
        elif args.command == "kick":
            result = kick(client, keys, args.nick, " ".join(args.reason) or DEFAULT_KICK_REASON)
            text = f"kicked {result['nick']} from {result['gateway']}: {result['reason']}"
        elif args.command == "accounts":
            found = accounts(client, keys)
            result = {"accounts": [asdict(a) for a in found], "count": len(found)}
            text = render_accounts(found)
        elif args.command == "drop-account":
            result = drop_account(client, keys, args.nick)
            text = f"dropped the account {result['nick']}" + (
                " (still online until it leaves; kick it to free the nickname now)"
                if result["online"] else ""
            )
        elif args.command == "announce":
            result = announce(client, keys, " ".join(args.text))
            text = f"announced to {result['gateways']} gateway(s): {result['text']}"
        elif args.command == "ban":
            result = ban(client, keys, args.target, " ".join(args.reason), args.duration)
            until = ("until lifted" if result["until"] is None
                     else f"for {result['expires_in_s']:g}s")
            text = (f"banned {result['network']} {until}: {result['reason'] or '-'} "
                    f"({result['gateways']} gateway(s) told)")
        elif args.command == "unban":
            result = unban(client, keys, args.target)
            text = f"lifted the ban on {result['network']} ({result['gateways']} gateway(s) told)"
        else:
            listed = bans(client, keys)
            result = {"bans": listed, "count": len(listed)}
            text = render_bans(listed)
    except redis.RedisError as exc:
        raise AdminError(f"cannot talk to Redis at {url}: {exc}") from None
    finally:
        client.close()
    out.write((json.dumps(result) if as_json else text) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args, sys.stdout, os.environ)
    except UsageError as exc:
        print(f"chat-admin: error: {exc}", file=sys.stderr)
        return 2
    except AdminError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"error": str(exc)}))
        print(f"chat-admin: {exc}", file=sys.stderr)
        return 1
