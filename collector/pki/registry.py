"""What the PKI remembers: enrollment tokens, issued certificates, revocations, intel.

A small SQLite file of its own (state_dir/registry.db, WAL), behind a narrow interface, so
that it can move to another backend without touching its callers. The collector process
and the operator's commands (`token create/list/revoke`, `agent list/revoke/retire`,
`intel load`) open it at the same time; `changed()` tells a long-running reader that
another connection committed.

Tokens are stored as a SHA-256 of their secret only: the token itself is printed once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from common import identity as rules

SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id          TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    finess      TEXT NOT NULL,
    ght         TEXT NOT NULL,
    region      TEXT NOT NULL,
    created_at  REAL NOT NULL,
    expires_at  REAL NOT NULL,
    used_at     REAL,
    agent_id    TEXT
);
CREATE TABLE IF NOT EXISTS certificates (
    serial      TEXT PRIMARY KEY,
    agent_id    TEXT NOT NULL,
    finess      TEXT NOT NULL,
    ght         TEXT NOT NULL,
    region      TEXT NOT NULL,
    issued_at   REAL NOT NULL,
    not_after   REAL NOT NULL,
    how         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS certificates_agent ON certificates (agent_id);
CREATE TABLE IF NOT EXISTS revoked (
    agent_id    TEXT PRIMARY KEY,
    revoked_at  REAL NOT NULL,
    reason      TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS retired (
    agent_id    TEXT PRIMARY KEY,
    retired_at  REAL NOT NULL,
    reason      TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS agent_names (
    agent_id    TEXT PRIMARY KEY,
    name        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS revoked_tokens (
    id          TEXT PRIMARY KEY,
    revoked_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS intel (
    version     INTEGER PRIMARY KEY,
    bundle      TEXT NOT NULL,
    loaded_at   REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS intel_retro (
    version       INTEGER PRIMARY KEY,
    since         REAL NOT NULL,
    published_at  REAL NOT NULL,
    indicators    TEXT NOT NULL
);
"""

TOKEN_PREFIX = "vgt1"


class TokenRefused(Exception):
    """The token is unknown, malformed, already used, revoked or expired (the caller is not
    told which; the collector's log is)."""


@dataclass(frozen=True)
class Binding:
    token_id: str
    finess: str
    ght: str
    region: str


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def format_token(token_id: str, secret: str, ca_fingerprint: str) -> str:
    return f"{TOKEN_PREFIX}.{token_id}.{secret}.{ca_fingerprint}"


def parse_token(token: str) -> tuple[str, str, str]:
    """(id, secret, CA fingerprint or ''). Raises TokenRefused on a malformed token."""
    parts = token.strip().split(".")
    if len(parts) not in (3, 4) or parts[0] != TOKEN_PREFIX or not parts[1] or not parts[2]:
        raise TokenRefused("malformed token")
    return parts[1], parts[2], parts[3] if len(parts) == 4 else ""


class Registry:
    def __init__(self, path: str | Path) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = p
        self._db = sqlite3.connect(str(p), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(SCHEMA)
        self._seen: dict[str, int] = {}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _data_version(self) -> int:
        return self._db.execute("PRAGMA data_version").fetchone()[0]

    def changed(self, reader: str) -> bool:
        """True when another connection committed since `reader` last asked (cheap: no table
        read). The first call of each reader answers True."""
        with self._lock:
            v = self._data_version()
            if self._seen.get(reader) != v:
                self._seen[reader] = v
                return True
            return False

    # Enrollment tokens -------------------------------------------------------------------
    def create_token(
        self, finess: str, ght: str, region: str, ttl_seconds: float
    ) -> tuple[str, str, float]:
        """Make a token; return (id, secret, expires_at). Only the secret's hash is kept.
        Raises common.identity.InvalidValue (a ValueError) for a FINESS, GHT or region that
        the CA would refuse to write in the certificate."""
        rules.check_site(finess, ght, region)
        token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(24).replace(".", "_")
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO tokens (id, secret_hash, finess, ght, region, created_at, "
                "expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (token_id, _hash(secret), finess, ght, region, now, now + ttl_seconds),
            )
        return token_id, secret, now + ttl_seconds

    def peek_token(self, token_id: str, secret: str) -> Binding:
        """Check a token without using it up. Raises TokenRefused."""
        with self._lock:
            row = self._db.execute(
                "SELECT secret_hash, finess, ght, region, expires_at, used_at FROM tokens "
                "WHERE id = ?",
                (token_id,),
            ).fetchone()
            revoked = self._db.execute(
                "SELECT 1 FROM revoked_tokens WHERE id = ?", (token_id,)
            ).fetchone()
        if row is None or not hmac.compare_digest(row[0], _hash(secret)):
            raise TokenRefused("unknown token")
        if revoked is not None:
            raise TokenRefused("token revoked")
        if row[5] is not None:
            raise TokenRefused("token already used")
        if row[4] < time.time():
            raise TokenRefused("token expired")
        return Binding(token_id, row[1], row[2], row[3])

    def use_token(self, token_id: str, secret: str, agent_id: str) -> Binding:
        """Use a token up, atomically: of two concurrent enrollments only one wins."""
        binding = self.peek_token(token_id, secret)
        with self._lock:
            cur = self._db.execute(
                "UPDATE tokens SET used_at = ?, agent_id = ? "
                "WHERE id = ? AND used_at IS NULL AND expires_at >= ? "
                # In the same statement: a revoke racing this enrollment wins or loses whole.
                "AND id NOT IN (SELECT id FROM revoked_tokens)",
                (time.time(), agent_id, token_id, time.time()),
            )
        if cur.rowcount != 1:
            raise TokenRefused("token already used or revoked")
        return binding

    def tokens(self) -> list[dict]:
        """Every token, oldest first: id, site, created_at, expires_at, used_at, agent_id,
        revoked_at. Never the secret, nor its hash."""
        with self._lock:
            cur = self._db.execute(
                "SELECT t.id, t.finess, t.ght, t.region, t.created_at, t.expires_at, "
                "t.used_at, t.agent_id, r.revoked_at FROM tokens t "
                "LEFT JOIN revoked_tokens r ON r.id = t.id ORDER BY t.created_at, t.id"
            )
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def revoke_token(self, token_id: str) -> dict:
        """Refuse a token from now on; return it as tokens() shows it (revoked_at set).
        Raises KeyError for an unknown id, ValueError for a token already used (revoking it
        would change nothing: the agent it enrolled is what to revoke or retire)."""
        with self._lock:
            row = self._db.execute(
                "SELECT used_at, agent_id FROM tokens WHERE id = ?", (token_id,)
            ).fetchone()
            if row is None:
                raise KeyError(token_id)
            if row[0] is not None:
                raise ValueError(f"token {token_id} was already used, by agent {row[1]}")
            self._db.execute(
                "INSERT OR IGNORE INTO revoked_tokens VALUES (?, ?)", (token_id, time.time())
            )
        return next(t for t in self.tokens() if t["id"] == token_id)

    # Certificates and revocation -----------------------------------------------------------
    def record_certificate(
        self,
        serial: int,
        agent_id: str,
        finess: str,
        ght: str,
        region: str,
        not_after: float,
        how: str,
    ) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO certificates VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (f"{serial:x}", agent_id, finess, ght, region, time.time(), not_after, how),
            )

    def certificates(self, agent_id: str) -> list[dict]:
        with self._lock:
            cur = self._db.execute(
                "SELECT * FROM certificates WHERE agent_id = ? ORDER BY issued_at", (agent_id,)
            )
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def not_renewed_since(self, t: float, now: float | None = None) -> list[str]:
        """Agents, not revoked and holding a certificate still valid, whose newest one was
        issued before `t`: after a rollover at `t`, those that do not know the new CA."""
        now = time.time() if now is None else now
        with self._lock:
            rows = self._db.execute(
                "SELECT agent_id FROM certificates WHERE agent_id NOT IN "
                "(SELECT agent_id FROM revoked) GROUP BY agent_id "
                "HAVING MAX(issued_at) < ? AND MAX(not_after) > ? ORDER BY agent_id",
                (t, now),
            ).fetchall()
        return [r[0] for r in rows]

    def known_agent(self, agent_id: str) -> bool:
        with self._lock:
            return (
                self._db.execute(
                    "SELECT 1 FROM certificates WHERE agent_id = ? LIMIT 1", (agent_id,)
                ).fetchone()
                is not None
            )

    def revoke(self, agent_id: str, reason: str = "") -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO revoked VALUES (?, ?, ?)", (agent_id, time.time(), reason)
            )

    def revoked(self) -> frozenset[str]:
        with self._lock:
            return frozenset(r[0] for r in self._db.execute("SELECT agent_id FROM revoked"))

    def retire(self, agent_id: str, reason: str = "") -> None:
        """Revoke the agent and remember that it was retired on purpose (a decommissioned or
        reinstalled host), not cut for misbehaving: `agent list` tells the two apart."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT OR IGNORE INTO revoked VALUES (?, ?, ?)",
                    (agent_id, now, reason or "retired"),
                )
                self._db.execute(
                    "INSERT OR IGNORE INTO retired VALUES (?, ?, ?)", (agent_id, now, reason)
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def rename(self, agent_id: str, name: str) -> None:
        """The operator's name for an agent ("PACS server, building B"); "" forgets it."""
        with self._lock:
            if name:
                self._db.execute(
                    "INSERT INTO agent_names VALUES (?, ?) ON CONFLICT (agent_id) "
                    "DO UPDATE SET name = excluded.name",
                    (agent_id, name),
                )
            else:
                self._db.execute("DELETE FROM agent_names WHERE agent_id = ?", (agent_id,))

    def names(self) -> dict[str, str]:
        with self._lock:
            return dict(self._db.execute("SELECT agent_id, name FROM agent_names").fetchall())

    def agents(self) -> list[dict]:
        """Every agent the CA issued a certificate to, by agent id: site (of its newest
        certificate), enrolled_at (first issued), renewed_at (newest issued, None if never
        renewed), not_after (of the newest), revoked_at, retired_at."""
        with self._lock:
            cur = self._db.execute(
                "SELECT c.agent_id, c.finess, c.ght, c.region, c.enrolled_at, c.renewed_at, "
                "c.not_after, r.revoked_at, r.reason, t.retired_at FROM ("
                "  SELECT agent_id, finess, ght, region, not_after, "
                "    MIN(issued_at) OVER w AS enrolled_at, "
                "    CASE WHEN COUNT(*) OVER w > 1 THEN MAX(issued_at) OVER w END AS renewed_at, "
                "    ROW_NUMBER() OVER (PARTITION BY agent_id ORDER BY issued_at DESC) AS k "
                "  FROM certificates WINDOW w AS (PARTITION BY agent_id)"
                ") c LEFT JOIN revoked r ON r.agent_id = c.agent_id "
                "LEFT JOIN retired t ON t.agent_id = c.agent_id WHERE c.k = 1 "
                "ORDER BY c.finess, c.agent_id"
            )
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def agent_states(self) -> dict[str, tuple[float, str, float | None]]:
        """agent id -> (revoked_at, reason, retired_at or None), for every revoked agent,
        those issued nowhere else too (development certificates, `pki issue-agent`)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT r.agent_id, r.revoked_at, r.reason, t.retired_at FROM revoked r "
                "LEFT JOIN retired t ON t.agent_id = r.agent_id"
            ).fetchall()
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    # Intel bundle ----------------------------------------------------------------------------
    def load_intel(self, bundle: dict, retro: dict | None = None) -> int:
        """Store a validated bundle as the next version; return that version. `retro`
        ({"since": epoch, "ips": [...], "domains": [...], "ja3": [...], "ja4": [...]}):
        the look-back this publication asks of every agent, stored with its version."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                (last,) = self._db.execute("SELECT COALESCE(MAX(version), 0) FROM intel").fetchone()
                now = time.time()
                self._db.execute(
                    "INSERT INTO intel VALUES (?, ?, ?)",
                    (last + 1, json.dumps(bundle, sort_keys=True), now),
                )
                if retro is not None:
                    found = {k: retro.get(k, []) for k in ("ips", "domains", "ja3", "ja4")}
                    self._db.execute(
                        "INSERT INTO intel_retro VALUES (?, ?, ?, ?)",
                        (last + 1, float(retro["since"]), now, json.dumps(found, sort_keys=True)),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return last + 1

    def retro_requests(self, published_after: float = 0.0) -> list[dict]:
        """The look-backs published after that time, oldest first: version, since,
        published_at and the indicators."""
        with self._lock:
            rows = self._db.execute(
                "SELECT version, since, published_at, indicators FROM intel_retro "
                "WHERE published_at >= ? ORDER BY version",
                (published_after,),
            ).fetchall()
        return [
            {"version": v, "since": s, "published_at": p, **json.loads(ind)}
            for v, s, p, ind in rows
        ]

    def current_intel(self) -> tuple[int, dict]:
        """(version, bundle); (0, {}) before any load."""
        with self._lock:
            row = self._db.execute(
                "SELECT version, bundle FROM intel ORDER BY version DESC LIMIT 1"
            ).fetchone()
        return (row[0], json.loads(row[1])) if row else (0, {})


class RevocationCache:
    """Revoked agent ids, re-read only when the registry changed, looked at most every
    `recheck` seconds: the interceptor asks on every call, a revoke is seen within that."""

    RECHECK = 0.5

    def __init__(self, registry: Registry, recheck: float = RECHECK) -> None:
        self.registry = registry
        self.recheck = recheck
        registry.changed("revocations")
        self._ids = registry.revoked()
        self._next = time.monotonic() + recheck
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        with self._lock:
            self._ids = self.registry.revoked()
            self._next = time.monotonic() + self.recheck

    def __call__(self, agent_id: str) -> bool:
        now = time.monotonic()
        if now >= self._next:
            with self._lock:
                if now >= self._next:
                    if self.registry.changed("revocations"):
                        self._ids = self.registry.revoked()
                    self._next = now + self.recheck
        return agent_id in self._ids
