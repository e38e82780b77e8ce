"""Registered nicknames: password hashing, checking, and failed-attempt limits.

An account is a nickname with an argon2id hash of its password in Redis
(:mod:`services.common.keys`).  The password itself is never stored, logged or
bound to a logger: it lives only in the local variables of the command that
received it.  Hashing is memory-hard on purpose, so it runs in a worker thread
behind a :class:`trio.CapacityLimiter` (``CHAT_PASSWORD_HASH_THREADS``): the
event loop never computes a hash, and the memory of the hashes in progress is
bounded (threads x ``HASH_MEMORY_KIB``).

Wrong passwords are counted in Redis, per account and per client address, for
the whole cluster (``auth_attempt.lua``): each attempt is counted before its
password is checked, and taken back when it proves right, so concurrent
attempts cannot get past the limit.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import structlog
import trio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from services.common.bus import AuthLock, Bus, RegisterResult
from services.common.config import Settings

log = structlog.get_logger()

# OWASP's first argon2id choice (m=19 MiB, t=2, p=1); docs/OPERATIONS.md has the
# measured time and memory per hash.  The parameters travel inside each stored
# hash, so changing them here leaves existing accounts verifiable; each one is
# re-hashed with the new parameters at its next successful login.
HASH_TIME_COST = 2
HASH_MEMORY_KIB = 19456
HASH_PARALLELISM = 1

# Flood budget a password command costs (a line costs 1): each one keeps a
# hashing thread busy for tens of milliseconds.
AUTH_COST = 5.0

# CHAT_REGISTRATIONS_PER_IP counts registrations in this window.
REGISTRATION_WINDOW_S = 3600.0


def password_problem(password: str, settings: Settings) -> str | None:
    """Why ``password`` cannot be used (``None``: it can).  Never echoes it."""
    if any(c.isspace() for c in password):
        return "a password cannot contain spaces"
    if password.startswith("/"):
        return "a password cannot start with /"
    if len(password) < settings.password_min_length:
        return f"a password needs at least {settings.password_min_length} characters"
    if len(password) > settings.password_max_length:
        return f"a password can have at most {settings.password_max_length} characters"
    return None


class Check(enum.Enum):
    """The outcome of :meth:`Accounts.check`."""

    OK = "ok"
    WRONG = "wrong"
    NOT_REGISTERED = "not registered"
    LOCKED = "locked"


@dataclass(frozen=True, slots=True)
class Checked:
    outcome: Check
    password_hash: str = ""  # with OK: the hash the password matched
    lock: AuthLock = AuthLock.NONE  # with LOCKED: what is locked
    retry_after_s: float = 0.0  # with LOCKED: for how much longer


class Accounts:
    """Hashing and checking passwords for one gateway.  Methods touching Redis
    raise :class:`~services.common.redis.RedisError`."""

    def __init__(self, settings: Settings, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus
        self.hasher = PasswordHasher(
            time_cost=HASH_TIME_COST, memory_cost=HASH_MEMORY_KIB, parallelism=HASH_PARALLELISM
        )
        self.limiter = trio.CapacityLimiter(settings.password_hash_threads)

    async def hash(self, password: str) -> str:
        """The argon2id hash of ``password`` (computed in a worker thread)."""
        return await trio.to_thread.run_sync(self.hasher.hash, password, limiter=self.limiter)

    async def _matches(self, password_hash: str, password: str) -> bool:
        def verify() -> bool:
            try:
                return self.hasher.verify(password_hash, password)
            except InvalidHashError:
                log.error("account.bad_hash")
                return False
            except VerificationError:  # VerifyMismatchError included
                return False

        return await trio.to_thread.run_sync(verify, limiter=self.limiter)

    async def check(self, folded: str, address: str, password: str) -> Checked:
        """Check ``password`` for the account ``folded``, counting a wrong one
        against the account and ``address``; refused without checking while
        either is locked."""
        if await self.bus.account_hash(folded) is None:
            return Checked(Check.NOT_REGISTERED)
        s = self.settings
        lock, retry_s = await self.bus.auth_attempt(
            folded, address, per_account=s.auth_failures_per_account,
            per_address=s.auth_failures_per_ip, window_s=s.auth_failure_window_s,
        )
        if lock is not AuthLock.NONE:
            return Checked(Check.LOCKED, lock=lock, retry_after_s=retry_s)
        # Read again after counting: the hash checked is the one now stored.
        stored = await self.bus.account_hash(folded)
        if stored is None:
            await self.bus.auth_undo(folded, address)
            return Checked(Check.NOT_REGISTERED)
        if not await self._matches(stored, password):
            return Checked(Check.WRONG)
        await self.bus.auth_undo(folded, address)
        if self.hasher.check_needs_rehash(stored):
            # Hashed with older parameters: store it with today's, now that we can.
            rehashed = await self.hash(password)
            if await self.bus.set_password(folded, stored, rehashed):
                log.info("account.rehashed", account=folded)
                stored = rehashed
        return Checked(Check.OK, password_hash=stored)

    async def register(
        self, folded: str, nick: str, password: str, address: str
    ) -> tuple[RegisterResult, str, float]:
        """Register the caller's nickname: the result, the stored hash, and with
        ``ADDRESS_LIMITED`` the seconds until ``address`` may register again."""
        password_hash = await self.hash(password)
        result, retry_s = await self.bus.register(
            folded, nick, password_hash, address=address,
            per_address=self.settings.registrations_per_ip, window_s=REGISTRATION_WINDOW_S,
        )
        return result, password_hash, retry_s

    async def change(self, folded: str, old_hash: str, new_password: str) -> str | None:
        """Store ``new_password``'s hash if the account still has ``old_hash``; the
        new hash, or ``None`` when the account is gone or changed meanwhile."""
        new_hash = await self.hash(new_password)
        if await self.bus.set_password(folded, old_hash, new_hash):
            return new_hash
        return None


def locked_line_text(checked: Checked, nick: str) -> str:
    """The error text for a locked attempt (whole seconds, rounded up)."""
    seconds = max(1, int(checked.retry_after_s + 0.999))
    whom = f"for {nick}" if checked.lock is AuthLock.ACCOUNT else "from your address"
    return f"too many wrong passwords {whom}; try again in {seconds}s"
