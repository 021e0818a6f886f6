"""The schema: versioned migrations, applied once each, in order, whatever the number of
replicas starting at the same moment (they wait on one lock the database holds)."""

from __future__ import annotations

import time

from collector.store.backends import Postgres, Sqlite

# Versioned migrations, applied once each, in order. Never edit one that has shipped.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
CREATE TABLE alerts (
    n            {ID},
    agent_id     TEXT NOT NULL,
    alert_id     TEXT NOT NULL,
    revision     {INT} NOT NULL,
    finess       TEXT NOT NULL,
    ght          TEXT NOT NULL,
    region       TEXT NOT NULL,
    detector     TEXT NOT NULL,
    severity     {INT} NOT NULL,
    technique    TEXT NOT NULL,
    summary      TEXT NOT NULL,
    first_seen   {REAL} NOT NULL,
    last_seen    {REAL} NOT NULL,
    observed_at  {REAL} NOT NULL,
    occurrences  {INT} NOT NULL,
    key_epoch    {INT} NOT NULL,
    entities     TEXT NOT NULL,
    metrics      TEXT NOT NULL,
    received_at  {REAL} NOT NULL,
    UNIQUE (agent_id, alert_id)
);
CREATE INDEX alerts_last_seen ON alerts (last_seen);
CREATE INDEX alerts_ght ON alerts (ght, last_seen);
CREATE INDEX alerts_region ON alerts (region, n);
CREATE TABLE agents (
    agent_id         TEXT PRIMARY KEY,
    finess           TEXT NOT NULL,
    ght              TEXT NOT NULL,
    region           TEXT NOT NULL,
    first_seen       {REAL} NOT NULL,
    last_seen        {REAL} NOT NULL,
    agent_version    TEXT NOT NULL DEFAULT '',
    packets_dropped  {INT} NOT NULL DEFAULT 0,
    outbox_depth     {INT} NOT NULL DEFAULT 0,
    outbox_shed      {INT} NOT NULL DEFAULT 0,
    host             TEXT NOT NULL DEFAULT '{{}}'
);
""",
    ),
    (
        2,
        """
CREATE TABLE alert_indicators (
    agent_id  TEXT NOT NULL,
    alert_id  TEXT NOT NULL,
    kind      {INT} NOT NULL,
    value     TEXT NOT NULL,
    finess    TEXT NOT NULL,
    ght       TEXT NOT NULL,
    region    TEXT NOT NULL,
    seen      {REAL} NOT NULL,
    PRIMARY KEY (agent_id, alert_id, kind, value)
);
CREATE INDEX alert_indicators_value ON alert_indicators (kind, value, seen);
CREATE INDEX alerts_detector ON alerts (detector, last_seen);
CREATE INDEX alerts_finess ON alerts (finess, last_seen);
CREATE TABLE incidents (
    key             TEXT PRIMARY KEY,
    rule            TEXT NOT NULL,
    subject         TEXT NOT NULL,
    severity        {INT} NOT NULL,
    status          {INT} NOT NULL,
    status_by       TEXT NOT NULL DEFAULT '',
    status_at       {REAL} NOT NULL DEFAULT 0,
    status_comment  TEXT NOT NULL DEFAULT '',
    first_seen      {REAL} NOT NULL,
    last_seen       {REAL} NOT NULL,
    summary         TEXT NOT NULL,
    alert_count     {INT} NOT NULL DEFAULT 0,
    seq             {INT} NOT NULL,
    created_at      {REAL} NOT NULL,
    updated_at      {REAL} NOT NULL
);
CREATE INDEX incidents_seq ON incidents (seq);
CREATE INDEX incidents_rule_subject ON incidents (rule, subject, status);
CREATE TABLE incident_sites (
    incident_key  TEXT NOT NULL,
    finess        TEXT NOT NULL,
    ght           TEXT NOT NULL,
    region        TEXT NOT NULL,
    PRIMARY KEY (incident_key, finess)
);
CREATE INDEX incident_sites_region ON incident_sites (region, incident_key);
CREATE TABLE incident_alerts (
    incident_key  TEXT NOT NULL,
    agent_id      TEXT NOT NULL,
    alert_id      TEXT NOT NULL,
    PRIMARY KEY (incident_key, agent_id, alert_id)
);
CREATE TABLE counters (name TEXT PRIMARY KEY, value {INT} NOT NULL);
INSERT INTO counters VALUES ('incident_seq', 0);
CREATE TABLE jobs (name TEXT PRIMARY KEY, last_run {REAL} NOT NULL, cursor {INT} NOT NULL)
""",
    ),
    (
        3,
        """
CREATE TABLE audit (
    n       {ID},
    at      {REAL} NOT NULL,
    who     TEXT NOT NULL,
    role    TEXT NOT NULL,
    action  TEXT NOT NULL,
    detail  TEXT NOT NULL,
    outcome TEXT NOT NULL
);
CREATE INDEX audit_at ON audit (at)
""",
    ),
    (
        4,
        """
CREATE TABLE indicator_sites (
    kind      {INT} NOT NULL,
    value     TEXT NOT NULL,
    finess    TEXT NOT NULL,
    ght       TEXT NOT NULL,
    region    TEXT NOT NULL,
    last_seen {REAL} NOT NULL,
    PRIMARY KEY (kind, value, finess)
);
CREATE TABLE detector_sites (
    detector  TEXT NOT NULL,
    finess    TEXT NOT NULL,
    ght       TEXT NOT NULL,
    region    TEXT NOT NULL,
    last_seen {REAL} NOT NULL,
    PRIMARY KEY (detector, finess)
);
CREATE TABLE site_stages (
    finess    TEXT NOT NULL,
    stage     {INT} NOT NULL,
    first_min {REAL} NOT NULL,
    first_max {REAL} NOT NULL,
    PRIMARY KEY (finess, stage)
)
""",
    ),
    (
        5,
        # The multi-site rule asks "how many GHTs saw this indicator lately?" on every batch
        # that carries it. Counting distinct GHTs in indicator_sites reads one row per
        # establishment (a scanner hitting every hospital of a region: hundreds); this
        # table holds one row per GHT.
        """
CREATE TABLE indicator_ghts (
    kind      {INT} NOT NULL,
    value     TEXT NOT NULL,
    ght       TEXT NOT NULL,
    last_seen {REAL} NOT NULL,
    PRIMARY KEY (kind, value, ght)
);
INSERT INTO indicator_ghts
    SELECT kind, value, ght, MAX(last_seen) FROM indicator_sites GROUP BY kind, value, ght;
CREATE INDEX incident_sites_ght ON incident_sites (incident_key, ght)
""",
    ),
    (
        6,
        # Every incident change as it stood (the sinks and watchers read this feed, not the
        # incidents table, where an ack followed by a close leaves only the close); and the
        # alerts or rule runs the store could not take, held with their reason until a fix.
        # Incidents changed before this migration enter the feed as they stand now.
        """
CREATE TABLE incident_changes (
    seq           {INT} PRIMARY KEY,
    incident_key  TEXT NOT NULL,
    change        TEXT NOT NULL,
    at            {REAL} NOT NULL,
    snapshot      TEXT NOT NULL
);
CREATE INDEX incident_changes_at ON incident_changes (at);
INSERT INTO incident_changes
    SELECT seq, key, 'updated', updated_at, '' FROM incidents WHERE seq > 0;
CREATE TABLE dead_letters (
    n            {ID},
    kind         TEXT NOT NULL,
    rule         TEXT NOT NULL,
    agent_id     TEXT NOT NULL,
    finess       TEXT NOT NULL,
    ght          TEXT NOT NULL,
    region       TEXT NOT NULL,
    alert_id     TEXT NOT NULL,
    alert        {BLOB} NOT NULL,
    reason       TEXT NOT NULL,
    received_at  {REAL} NOT NULL,
    attempts     {INT} NOT NULL DEFAULT 1,
    last_try     {REAL} NOT NULL,
    UNIQUE (kind, rule, agent_id, alert_id)
);
CREATE INDEX dead_letters_agent ON dead_letters (agent_id)
""",
    ),
    (
        7,
        # The web console's analyst accounts (argon2 password hash, TOTP secret) and their
        # sessions (kept here, not in one process, so any replica serves any session; only
        # a hash of the session id is stored). Failed sign-ins are counted per account.
        # Alert pages are keyset-paged on n: (detector, n) and (ght, n) read a detector's
        # or a GHT's newest alerts in order (with the (.., last_seen) indexes, SQLite
        # sorted all of them: 1.3 s for a detector at a million alerts); (last_seen,
        # detector, region, ght) counts a week of alerts by hour and detector, and a day's
        # by GHT and region, from the index alone (the console's overview).
        """
CREATE TABLE console_users (
    name           TEXT PRIMARY KEY,
    role           TEXT NOT NULL,
    password_hash  TEXT NOT NULL,
    totp_secret    TEXT NOT NULL,
    totp_last_step {INT} NOT NULL DEFAULT 0,
    failures       {INT} NOT NULL DEFAULT 0,
    locked_until   {REAL} NOT NULL DEFAULT 0,
    disabled       {INT} NOT NULL DEFAULT 0,
    created_at     {REAL} NOT NULL
);
CREATE TABLE console_sessions (
    id_hash     TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    csrf        TEXT NOT NULL,
    tz          TEXT NOT NULL,
    lang        TEXT NOT NULL,
    created_at  {REAL} NOT NULL,
    seen_at     {REAL} NOT NULL,
    expires_at  {REAL} NOT NULL
);
CREATE INDEX console_sessions_name ON console_sessions (name);
CREATE INDEX alerts_detector_n ON alerts (detector, n);
CREATE INDEX alerts_ght_n ON alerts (ght, n);
CREATE INDEX alerts_seen_cover ON alerts (last_seen, detector, region, ght)
""",
    ),
    (
        8,
        # Where each agent is with each retro-hunt (Heartbeat.retro): `vigie intel status`.
        """
CREATE TABLE retro_progress (
    agent_id    TEXT NOT NULL,
    version     {INT} NOT NULL,
    state       TEXT NOT NULL,
    matches     {INT} NOT NULL DEFAULT 0,
    updated_at  {REAL} NOT NULL,
    PRIMARY KEY (agent_id, version)
)
""",
    ),
    (
        9,
        # When the traffic behind an incident happened (multi_site_indicator): a retro-hunt
        # match is reported now about traffic of weeks ago, and the analyst needs that span,
        # not the reporting times of first_seen/last_seen. NULL: the rule keeps none.
        """
ALTER TABLE incidents ADD COLUMN traffic_first {REAL};
ALTER TABLE incidents ADD COLUMN traffic_last {REAL};
ALTER TABLE incidents ADD COLUMN traffic_retro {INT} NOT NULL DEFAULT 0
""",
    ),
]


class Schema:
    backend: Sqlite | Postgres

    def migrate(self) -> list[int]:
        """Apply the missing migrations once, whatever the number of replicas starting."""
        applied_now = []
        dialect = self.backend.dialect
        with self.backend.tx() as tx:
            dialect.lock(tx, "schema_migrations")
            tx.execute(
                f"CREATE TABLE IF NOT EXISTS schema_migrations (version "
                f"{dialect.types['INT']} PRIMARY KEY, applied_at "
                f"{dialect.types['REAL']} NOT NULL)"
            )
            done = {r["version"] for r in tx.fetch("SELECT version FROM schema_migrations")}
            for version, script in MIGRATIONS:
                if version in done:
                    continue
                for statement in script.format(**dialect.types).split(";"):
                    if statement.strip():
                        tx.execute(statement)
                tx.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, time.time()))
                applied_now.append(version)
        return applied_now

    def close(self) -> None:
        self.backend.close()
