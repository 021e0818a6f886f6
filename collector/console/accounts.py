"""The console's analyst accounts and sessions, kept in the collector's store.

Passwords are hashed with Argon2id (argon2-cffi, the reference implementation's binding:
memory-hard, so a stolen table is slow to crack on GPUs). The second factor is TOTP, on by
default. A session is a random 256-bit id in a cookie; the store keeps only its SHA-256,
so a copy of the database opens no session.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from collector.console import totp
from collector.store import Store
from common import identity as rules

# OWASP's first Argon2id choice (19 MiB, 2 passes): about 30 ms here, which also paces a
# brute force from one connection.
HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
# Checked against when the account does not exist, so that both paths cost the same.
_DUMMY = HASHER.hash(secrets.token_urlsafe(16))
MIN_PASSWORD = 12


class AccountError(ValueError):
    pass


@dataclass(frozen=True)
class Session:
    name: str
    role: str
    csrf: str
    tz: str
    lang: str
    expires_at: float


@dataclass(frozen=True)
class SignIn:
    """What a sign-in attempt came to: `outcome` is "ok" or why not (for the audit log;
    the person is told only "wrong name, password or code")."""

    outcome: str
    role: str = ""
    retry_after: float = 0.0


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class Throttle:
    """Failed sign-ins per client address in a sliding window: past `limit`, the address
    waits (doubling each further failure, up to `max_wait`). Accounts are paced in the
    store (several replicas share them); addresses here, per process."""

    def __init__(self, limit: int, window: float, max_wait: float = 900.0) -> None:
        self.limit, self.window, self.max_wait = limit, window, max_wait
        self._fails: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def wait(self, key: str, now: float | None = None) -> float:
        """Seconds `key` must still wait before its next try (0: go ahead)."""
        now = time.time() if now is None else now
        with self._lock:
            q = self._fails.get(key)
            if not q:
                return 0.0
            while q and q[0] < now - self.window:
                q.popleft()
            over = len(q) - self.limit + 1
            if over <= 0:
                return 0.0
            return max(0.0, q[-1] + min(self.max_wait, 2.0 ** min(over, 20)) - now)

    def failed(self, key: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._lock:
            if len(self._fails) > 100_000:  # a flood of addresses: forget the oldest
                self._fails.pop(next(iter(self._fails)))
            self._fails.setdefault(key, deque(maxlen=1000)).append(now)

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._fails.pop(key, None)


class Accounts:
    def __init__(
        self,
        store: Store,
        *,
        totp_required: bool = True,
        session_seconds: float = 8 * 3600,
        idle_seconds: float = 3600,
        account_failures: int = 5,
        lock_seconds: float = 300,
    ) -> None:
        self.store = store
        self.totp_required = totp_required
        self.session_seconds = session_seconds
        self.idle_seconds = idle_seconds
        self.account_failures = account_failures
        self.lock_seconds = lock_seconds

    # Accounts -------------------------------------------------------------------------

    def add_user(self, name: str, role: str, password: str) -> str:
        """Create an account; returns its TOTP secret (shown once to the operator)."""
        try:
            rules.check_analyst_name(name)
            rules.check_role(role)
        except rules.InvalidValue as exc:
            raise AccountError(str(exc)) from None
        if len(password) < MIN_PASSWORD:
            raise AccountError(f"a password has at least {MIN_PASSWORD} characters")
        secret = totp.new_secret()
        with self.store.backend.tx() as tx:
            if tx.fetch("SELECT name FROM console_users WHERE name = ?", (name,)):
                raise AccountError(f"an account {name!r} already exists")
            tx.execute(
                "INSERT INTO console_users (name, role, password_hash, totp_secret, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (name, role, HASHER.hash(password), secret, time.time()),
            )
        return secret

    def users(self) -> list[dict]:
        with self.store.backend.tx() as tx:
            return tx.fetch(
                "SELECT name, role, disabled, failures, locked_until, created_at "
                "FROM console_users ORDER BY name"
            )

    def disable(self, name: str) -> bool:
        """Refuse the account from now on and end its sessions."""
        with self.store.backend.tx() as tx:
            found = tx.fetch("SELECT name FROM console_users WHERE name = ?", (name,))
            tx.execute("UPDATE console_users SET disabled = 1 WHERE name = ?", (name,))
            tx.execute("DELETE FROM console_sessions WHERE name = ?", (name,))
        return bool(found)

    def sign_in(self, name: str, password: str, code: str, now: float | None = None) -> SignIn:
        now = time.time() if now is None else now
        with self.store.backend.tx() as tx:
            rows = tx.fetch("SELECT * FROM console_users WHERE name = ?", (name[:64],))
        user = rows[0] if rows else None
        if user is not None and user["locked_until"] > now:
            return SignIn("account_locked", retry_after=user["locked_until"] - now)
        try:
            HASHER.verify(user["password_hash"] if user else _DUMMY, password)
            good = user is not None
        except (VerificationError, InvalidHashError):
            good = False
        if not good:
            self._failed(name, now)
            return SignIn("bad_password" if user else "unknown_user")
        if user["disabled"]:
            return SignIn("disabled")
        if self.totp_required:
            used = totp.matching_step(user["totp_secret"], code, now)
            if used is None or used <= user["totp_last_step"]:
                self._failed(name, now)
                return SignIn("bad_totp" if used is None else "totp_replayed")
        with self.store.backend.tx() as tx:
            tx.execute(
                "UPDATE console_users SET failures = 0, locked_until = 0, totp_last_step = ? "
                "WHERE name = ?",
                (used if self.totp_required else user["totp_last_step"], name),
            )
            if HASHER.check_needs_rehash(user["password_hash"]):
                tx.execute(
                    "UPDATE console_users SET password_hash = ? WHERE name = ?",
                    (HASHER.hash(password), name),
                )
        return SignIn("ok", role=user["role"])

    def _failed(self, name: str, now: float) -> None:
        """Past `account_failures` in a row, the account waits `lock_seconds`, doubled at
        each further failure: a password guessed from many addresses is slowed too."""
        with self.store.backend.tx() as tx:
            rows = tx.fetch("SELECT failures FROM console_users WHERE name = ?", (name,))
            if not rows:
                return
            n = rows[0]["failures"] + 1
            over = n - self.account_failures
            until = now + self.lock_seconds * 2 ** min(over, 10) if over >= 0 else 0
            tx.execute(
                "UPDATE console_users SET failures = ?, locked_until = ? WHERE name = ?",
                (n, until, name),
            )

    # Sessions -------------------------------------------------------------------------

    def open_session(
        self, name: str, role: str, tz: str, lang: str, now: float | None = None
    ) -> tuple[str, Session]:
        """A new session (its id goes in the cookie, never stored)."""
        now = time.time() if now is None else now
        sid = secrets.token_urlsafe(32)
        s = Session(name, role, secrets.token_urlsafe(32), tz, lang, now + self.session_seconds)
        with self.store.backend.tx() as tx:
            tx.execute("DELETE FROM console_sessions WHERE expires_at < ?", (now,))
            tx.execute(
                "INSERT INTO console_sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (_digest(sid), name, role, s.csrf, tz, lang, now, now, s.expires_at),
            )
        return sid, s

    def session(self, sid: str, now: float | None = None) -> Session | None:
        """The live session of this id; an expired or idle one is ended. A certificate
        session's account may not exist; a password account disabled since ends it."""
        if not sid or len(sid) > 100:
            return None
        now = time.time() if now is None else now
        with self.store.backend.tx() as tx:
            rows = tx.fetch("SELECT * FROM console_sessions WHERE id_hash = ?", (_digest(sid),))
            if not rows:
                return None
            r = rows[0]
            if r["expires_at"] < now or r["seen_at"] + self.idle_seconds < now:
                tx.execute("DELETE FROM console_sessions WHERE id_hash = ?", (_digest(sid),))
                return None
            if now - r["seen_at"] > 30:  # not a write per request
                tx.execute(
                    "UPDATE console_sessions SET seen_at = ? WHERE id_hash = ?",
                    (now, _digest(sid)),
                )
        return Session(r["name"], r["role"], r["csrf"], r["tz"], r["lang"], r["expires_at"])

    def update_session(self, sid: str, *, tz: str | None = None, lang: str | None = None) -> None:
        with self.store.backend.tx() as tx:
            if tz is not None:
                tx.execute(
                    "UPDATE console_sessions SET tz = ? WHERE id_hash = ?", (tz, _digest(sid))
                )
            if lang is not None:
                tx.execute(
                    "UPDATE console_sessions SET lang = ? WHERE id_hash = ?", (lang, _digest(sid))
                )

    def close_session(self, sid: str) -> None:
        with self.store.backend.tx() as tx:
            tx.execute("DELETE FROM console_sessions WHERE id_hash = ?", (_digest(sid),))
