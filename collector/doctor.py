"""`vigie-collector doctor`: what an operator on call checks first, one line each.

`OK`, `WARN` or `FAIL` per check, with the remedy after a non-OK result; exit status 1 when
something failed. It reads the store and the PKI the service uses (same configuration),
without starting a server, so it can run beside the service.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from pathlib import Path
from typing import Any, TextIO

from collector import server
from collector.pki import ca as pki
from collector.store import Store, StoreError
from collector.store.sql import MIGRATIONS
from common import ownership
from common.checks import FAIL, OK, WARN, Result

EXPIRY_WARN_DAYS = 30
DISK_WARN_PERCENT = 90.0
SINK_LAG_WARN = 100  # incident changes not yet delivered to a sink


def check_disk(cfg: dict[str, Any]) -> Result:
    d = Path(cfg["state_dir"])
    if not d.exists():
        return Result(FAIL, "state dir", f"{d} does not exist", "start the collector once")
    usage = shutil.disk_usage(d)
    used = 100.0 * (usage.total - usage.free) / usage.total
    text = f"{d}: {usage.free / 2**30:.1f} GiB free ({used:.0f} % used)"
    if used >= DISK_WARN_PERCENT:
        return Result(
            WARN, "state dir", text, "free space: the store stops taking alerts when full"
        )
    return Result(OK, "state dir", text)


def check_pki(cfg: dict[str, Any], now: float | None = None) -> Result:
    d = server.pki_dir(cfg)
    crt = d / "server.crt"
    if not crt.exists():
        return Result(
            FAIL, "certificate", f"no server certificate in {d}", "vigie-collector pki init"
        )
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(crt.read_bytes())
    left = (cert.not_valid_after_utc.timestamp() - (now or time.time())) / 86400
    until = cert.not_valid_after_utc.strftime("%Y-%m-%d")
    if left <= 0:
        return Result(
            FAIL, "certificate", f"expired on {until}", "vigie-collector pki reissue-server"
        )
    if left < EXPIRY_WARN_DAYS:
        return Result(
            WARN, "certificate", f"expires in {left:.0f} days ({until})", "pki reissue-server"
        )
    fp = pki.server_ca_fingerprint(d)[:16]
    return Result(OK, "certificate", f"valid until {until}, CA {fp}...")


def check_store(store: Store) -> Result:
    with store.backend.tx() as tx:
        done = {r["version"] for r in tx.fetch("SELECT version FROM schema_migrations")}
    want = {v for v, _ in MIGRATIONS}
    if want - done:
        return Result(FAIL, "store", f"migrations missing: {sorted(want - done)}", "restart")
    if done - want:
        return Result(
            FAIL, "store", f"schema {max(done)} is newer than this collector", "upgrade it"
        )
    return Result(
        OK, "store", f"{store.dialect}, schema {max(done)}, {store.count_alerts()} alerts"
    )


def check_dead_letters(store: Store) -> Result:
    counts = store.dead_letter_counts()
    held = sum(counts.values())
    if not held:
        return Result(OK, "dead letters", "none")
    newest = store.dead_letters(1)[0]
    return Result(
        FAIL,
        "dead letters",
        f"{held} alert(s) held from {len(counts)} agent(s); latest: {newest['reason'][:120]}",
        "see 'vigie-collector dead-letter list', fix the cause, then 'dead-letter retry'",
    )


def check_agents(store: Store, silent_after: float, now: float | None = None) -> Result:
    now = now or time.time()
    agents = store.list_agents()
    silent = [a for a in agents if now - a["last_seen"] > silent_after]
    if not agents:
        return Result(WARN, "agents", "no agent has connected yet", "enroll one (token create)")
    text = f"{len(agents)} known, {len(silent)} silent for more than {silent_after:.0f} s"
    if silent:
        return Result(WARN, "agents", text, "vigie agents (the SILENT ones)")
    return Result(OK, "agents", text)


def check_sinks(store: Store, cfg: dict[str, Any]) -> list[Result]:
    out = []
    last = store.last_change_seq()
    for name, section in cfg["sinks"].items():
        if not section.get("enabled"):
            continue
        with store.backend.tx() as tx:
            rows = tx.fetch("SELECT cursor, last_run FROM jobs WHERE name = ?", (f"sink:{name}",))
        cursor = rows[0]["cursor"] if rows else 0
        lag = last - cursor
        text = f"{lag} incident change(s) not yet delivered"
        if lag > SINK_LAG_WARN:
            out.append(Result(WARN, f"sink {name}", text, "the collector log: sink_failed"))
        else:
            out.append(Result(OK, f"sink {name}", text))
    return out


def run(cfg: dict[str, Any], out: TextIO) -> int:
    # Ownership before the store is opened: opening it (as root, often) creates files.
    results = [
        check_disk(cfg),
        *ownership.check(cfg["state_dir"], ownership.COLLECTOR_USER),
        check_pki(cfg),
    ]
    url = server.store_url(cfg)
    db = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
    store = None
    if db is not None and not db.exists():
        # Opening it would create it, as whoever runs doctor (often root): the service
        # would then find a database it cannot write.
        results.append(
            Result(WARN, "store", f"{db} does not exist yet", "start the collector once")
        )
    else:
        try:
            store = server.open_store(cfg)
        except (server.StartError, StoreError) as exc:
            results.append(Result(FAIL, "store", str(exc), "check [storage] and the database"))
    if store is not None:
        try:
            results += [
                check_store(store),
                check_dead_letters(store),
                check_agents(store, cfg["silent_after_seconds"]),
                *check_sinks(store, cfg),
            ]
        finally:
            store.close()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"vigie-collector doctor, {stamp}", file=out)
    for r in results:
        print(r.line(), file=out)
    return 1 if any(r.status == FAIL for r in results) else 0
