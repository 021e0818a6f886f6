"""The console's reads and writes on both store backends: accounts and sessions, the
overview's counts and the indicator search, each narrowed by the role's scope."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.console import queries, totp
from collector.console.accounts import AccountError, Accounts
from collector.query.scope import OutsideScope, Scope
from collector.store import AlertFilter, Origin, Store, open_store
from tests.stores import pg_schema_url
from vigie.v1 import alert_pb2

PASSWORD = "correct horse battery staple"
SITES = [
    Origin("agt-a1", "111000001", "GHT-A1", "11"),
    Origin("agt-a2", "111000002", "GHT-A2", "11"),
    Origin("agt-b1", "844000001", "GHT-B1", "84"),
    Origin("agt-b2", "844000002", "GHT-B2", "84"),
]


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s = open_store(f"sqlite:///{tmp_path / 'vigie.db'}")
        yield s
        s.close()
    else:
        for url in pg_schema_url():
            s = open_store(url)
            yield s
            s.close()


def _alert(aid: str, value: str, t: float, detector: str = "net.portscan") -> alert_pb2.Alert:
    a = alert_pb2.Alert(
        id=aid, revision=1, detector=detector, severity=4, summary="s", occurrences=1
    )
    for f in (a.first_seen, a.last_seen, a.observed_at):
        f.FromSeconds(int(t))
    a.entities.add(role=1, kind=alert_pb2.KIND_IP, value=value, pseudonymised=False)
    return a


def test_accounts_sign_in_lock_and_sessions(store: Store) -> None:
    acc = Accounts(store, account_failures=3, lock_seconds=60)
    secret = acc.add_user("ars-11", "regional:11", PASSWORD)
    with pytest.raises(AccountError):
        acc.add_user("ars-11", "national", PASSWORD)  # one account per name
    with pytest.raises(AccountError):
        acc.add_user("weak", "national", "short")
    now = time.time()
    assert acc.sign_in("ars-11", PASSWORD, totp.code(secret, now), now).outcome == "ok"
    # The same code again: refused (a code is good once).
    again = acc.sign_in("ars-11", PASSWORD, totp.code(secret, now), now)
    assert again.outcome == "totp_replayed"
    assert acc.sign_in("nobody", PASSWORD, "000000", now).outcome == "unknown_user"
    # The replayed code was the first failure in a row; two wrong passwords make three.
    for _ in range(2):
        assert acc.sign_in("ars-11", "wrong password!", "", now).outcome == "bad_password"
    locked = acc.sign_in("ars-11", PASSWORD, totp.code(secret, now + 30), now)
    assert locked.outcome == "account_locked" and locked.retry_after > 0
    later = now + 61 * 2  # the lock doubled past the limit; past it, the right code works
    ok = acc.sign_in("ars-11", PASSWORD, totp.code(secret, later), later)
    assert ok.outcome == "ok" and ok.role == "regional:11"

    sid, s = acc.open_session("ars-11", "regional:11", "Europe/Paris", "fr")
    got = acc.session(sid)
    assert got is not None and (got.name, got.role, got.csrf) == ("ars-11", "regional:11", s.csrf)
    assert acc.session(sid + "x") is None
    acc.update_session(sid, lang="en", tz="Indian/Reunion")
    assert (acc.session(sid).lang, acc.session(sid).tz) == ("en", "Indian/Reunion")
    assert acc.session(sid, now=time.time() + 2 * 3600) is None  # idle past the hour
    sid, _ = acc.open_session("ars-11", "regional:11", "UTC", "fr")
    assert acc.disable("ars-11") and acc.session(sid) is None
    assert acc.sign_in("ars-11", PASSWORD, totp.code(secret, later + 60), later + 60).outcome in (
        "disabled",
        "account_locked",
    )


def test_overview_counts_and_indicator_search_follow_the_scope(store: Store) -> None:
    now = time.time()
    for i, origin in enumerate(SITES):
        own = "198.51.100.11" if origin.region == "11" else "198.51.100.84"
        store.ingest(
            origin,
            [
                _alert(f"own{i}", own, now - 7200),
                _alert(f"both{i}", "203.0.113.66", now - 60, "net.bruteforce"),
            ],
        )
    national, regional = Scope("national"), Scope("regional:11")
    hourly = queries.alerts_by_hour(store, national, now - 86400)
    assert sum(hourly.values()) == 8
    assert sum(c for (_h, d), c in hourly.items() if d == "net.bruteforce") == 4
    assert sum(queries.alerts_by_hour(store, regional, now - 86400).values()) == 4
    sites = queries.active_sites(store, regional, now - 86400)
    assert {g for g, _r, _c in sites} == {"GHT-A1", "GHT-A2"}

    def opened(scope: Scope) -> list[int]:  # per age bucket, every severity
        counts = queries.open_incidents(store, scope, now).values()
        return [sum(c[i] for c in counts) for i in range(len(queries.AGE_BUCKETS))]

    assert opened(national) == [1, 2, 0, 0]  # the shared indicator's is under an hour old
    assert opened(regional) == [1, 1, 0, 0]

    def search(value: str, scope: Scope) -> set[str]:
        flt = AlertFilter(region=scope.region_for(""), indicator=(("ip",), value))
        page, _ = store.list_alerts(flt, 50)
        return {a.id for _o, a, _t in page}

    assert search("203.0.113.66", national) == {"both0", "both1", "both2", "both3"}
    assert search("203.0.113.66", regional) == {"both0", "both1"}
    assert search("198.51.100.84", regional) == set()
    assert search("192.0.2.1", national) == set()
    with pytest.raises(OutsideScope):
        regional.region_for("84")
    # The incident spanning both regions: a regional reader sees it, with its own sites.
    key = next(r["key"] for r in store.list_incidents() if "203.0.113.66" in r["subject"])
    row, alerts = regional.incident(store, key)
    assert {s["region"] for s in regional.sites(row["sites"])} == {"11"}
    assert {o.region for o, _a, _t in alerts} == {"11"}
    foreign = next(r["key"] for r in store.list_incidents() if "198.51.100.84" in r["subject"])
    assert regional.incident(store, foreign) is None
