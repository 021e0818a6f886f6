"""Correlation rules on both backends: each fires once, with the right sites, not below
its threshold; replicas racing on the same indicator open one incident."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.correlate.rules import longest_ordered_stages
from collector.store import Origin, Store, open_store
from tests.stores import pg_schema_url
from vigie.v1 import alert_pb2, ingest_pb2

T0 = 1_750_000_000.0


def site(n: int, ght: str | None = None, region: str = "11") -> Origin:
    return Origin(f"agt-{n}", f"{n:09d}", ght or f"GHT-{n}", region)


def alert(
    aid: str, detector: str = "net.portscan", t: float = T0, indicator: str | None = "203.0.113.9"
) -> alert_pb2.Alert:
    a = alert_pb2.Alert(
        id=aid,
        revision=1,
        detector=detector,
        severity=3,
        technique="T1046",
        summary="x",
        occurrences=1,
    )
    for f in (a.first_seen, a.last_seen, a.observed_at):
        f.FromNanoseconds(int(t * 1e9))
    a.entities.add(
        role=alert_pb2.ROLE_SOURCE, kind=alert_pb2.KIND_IP, value="p:abcdef", pseudonymised=True
    )
    if indicator:
        a.entities.add(
            role=alert_pb2.ROLE_SOURCE, kind=alert_pb2.KIND_IP, value=indicator, pseudonymised=False
        )
    return a


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'vigie.db'}"
    else:
        yield from pg_schema_url()


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    s = open_store(url)
    yield s
    s.close()


def incidents(store: Store, rule: str) -> list[dict]:
    return [r for r in store.list_incidents(limit=1000) if r["rule"] == rule]


def test_multi_site_indicator_fires_once_across_two_ghts(store: Store) -> None:
    store.ingest(site(1), [alert("a1")])
    store.ingest(site(2, ght="GHT-1"), [alert("a2")])  # same GHT, other establishment
    assert incidents(store, "multi_site_indicator") == []
    store.ingest(site(3), [alert("a3")])
    store.ingest(site(4), [alert("a4")])  # a third GHT updates, does not reopen
    (inc,) = incidents(store, "multi_site_indicator")
    assert inc["subject"] == "ip:203.0.113.9"
    assert inc["alert_count"] == 4
    assert {s["ght"] for s in inc["sites"]} == {"GHT-1", "GHT-3", "GHT-4"}
    assert len(inc["sites"]) == 4
    # Live traffic, all in the same minute: the summary says when, and no retro-hunt.
    assert inc["summary"] == (
        "ip 203.0.113.9 contacted from 3 GHTs (4 establishments) on 2025-06-15 at 15:06 UTC"
    )
    assert (inc["traffic_first"], inc["traffic_last"], inc["traffic_retro"]) == (T0, T0, 0)


def test_live_traffic_within_a_day_is_told_in_hours(store: Store) -> None:
    store.ingest(site(1), [alert("a1", t=T0)])
    store.ingest(site(2), [alert("a2", t=T0 + 3 * 3600)])
    (inc,) = incidents(store, "multi_site_indicator")
    assert inc["summary"] == (
        "ip 203.0.113.9 contacted from 2 GHTs (2 establishments) "
        "on 2025-06-15 between 15:06 and 18:06 UTC"
    )
    store.ingest(site(1), [alert("a3", t=T0 + 10 * 3600)])  # past midnight, same site
    (inc,) = incidents(store, "multi_site_indicator")
    assert inc["summary"].endswith("between 2025-06-15 15:06 and 2025-06-16 01:06 UTC")
    assert inc["traffic_last"] == T0 + 10 * 3600


DOMAIN = "evil.example"
PUBLISHED = 1_795_165_200.0  # 2026-11-20 09:00 UTC: a publication with a look-back


def utc(when: str) -> float:
    return dt.datetime.fromisoformat(when).replace(tzinfo=dt.UTC).timestamp()


def retro_alert(aid: str, first: str, last: str) -> alert_pb2.Alert:
    """A retro-hunt match (agent/hunt/retro.py) of DOMAIN, about traffic from `first` to
    `last` (UTC)."""
    a = alert(aid, "net.ioc", utc(first), indicator=None)
    a.last_seen.FromNanoseconds(int(utc(last) * 1e9))
    a.entities.add(role=alert_pb2.ROLE_TARGET, kind=alert_pb2.KIND_DOMAIN, value=DOMAIN)
    a.metrics["retro"] = 1
    return a


def hunted(store: Store, n: int, aid: str, first: str, last: str, minutes: int) -> None:
    """Site n's search reports a match `minutes` after the publication."""
    store.ingest(site(n), [retro_alert(aid, first, last)], received_at=PUBLISHED + 60 * minutes)


def test_retro_matches_in_three_ghts_name_the_days_of_their_traffic(store: Store) -> None:
    hunted(store, 1, "r1", "2026-11-03 08:00", "2026-11-03 08:20", 1)
    assert incidents(store, "multi_site_indicator") == []
    hunted(store, 2, "r2", "2026-11-10 14:00", "2026-11-10 14:05", 2)
    hunted(store, 3, "r3", "2026-11-17 22:10", "2026-11-17 23:00", 3)
    (inc,) = incidents(store, "multi_site_indicator")
    assert inc["summary"] == (
        "domain evil.example contacted from 3 GHTs (3 establishments) "
        "between 2026-11-03 and 2026-11-17, found by retro-hunt"
    )
    assert inc["alert_count"] == 3
    assert (inc["traffic_first"], inc["traffic_last"], inc["traffic_retro"]) == (
        utc("2026-11-03 08:00"),
        utc("2026-11-17 23:00"),
        1,
    )
    # Sinks and watchers hear of the third GHT with the span it brought.
    (last,) = [c for c in store.list_changes(0) if c["seq"] == inc["seq"]]
    assert last["summary"] == inc["summary"]


def test_older_traffic_reported_later_widens_the_span(store: Store) -> None:
    hunted(store, 1, "r1", "2026-11-10 08:00", "2026-11-10 09:00", 0)
    hunted(store, 2, "r2", "2026-11-12 08:00", "2026-11-12 09:00", 1)
    (inc,) = incidents(store, "multi_site_indicator")
    assert inc["summary"].endswith("between 2026-11-10 and 2026-11-12, found by retro-hunt")
    # A third site, whose agent kept a longer journal, reports older traffic later.
    hunted(store, 3, "r3", "2026-10-28 17:00", "2026-10-28 17:30", 15)
    (inc,) = incidents(store, "multi_site_indicator")
    assert inc["summary"] == (
        "domain evil.example contacted from 3 GHTs (3 establishments) "
        "between 2026-10-28 and 2026-11-12, found by retro-hunt"
    )
    # So does a site already counted, with older traffic of its own: worded again.
    hunted(store, 1, "r4", "2026-10-20 06:00", "2026-10-20 06:01", 16)
    (inc,) = incidents(store, "multi_site_indicator")
    assert inc["summary"].endswith("between 2026-10-20 and 2026-11-12, found by retro-hunt")
    assert inc["traffic_first"] == utc("2026-10-20 06:00") and inc["alert_count"] == 4


def test_live_sightings_joining_retro_ones_keep_both_in_the_span(store: Store) -> None:
    hunted(store, 1, "r1", "2026-11-03 08:00", "2026-11-03 08:20", 0)
    live = alert("l1", "net.dns", PUBLISHED + 30, indicator=None)
    live.entities.add(role=alert_pb2.ROLE_TARGET, kind=alert_pb2.KIND_DOMAIN, value=DOMAIN)
    store.ingest(site(2), [live], received_at=PUBLISHED + 40)
    (inc,) = incidents(store, "multi_site_indicator")
    assert inc["summary"].endswith("between 2026-11-03 and 2026-11-20, found by retro-hunt")


def test_pseudonymised_entities_never_correlate(store: Store) -> None:
    for n in range(1, 4):
        store.ingest(site(n), [alert(f"a{n}", indicator=None)])
    assert incidents(store, "multi_site_indicator") == []


def test_indicator_outside_the_window_does_not_count(store: Store) -> None:
    store.ingest(site(1), [alert("a1", t=T0)])
    store.ingest(site(2), [alert("a2", t=T0 + 3 * 86400)])
    assert incidents(store, "multi_site_indicator") == []


def test_wave_needs_five_establishments(store: Store) -> None:
    for n in range(1, 5):
        store.ingest(site(n, ght="GHT-X"), [alert(f"w{n}", "host.mass_write", indicator=None)])
    assert incidents(store, "wave") == []
    store.ingest(site(5, ght="GHT-Y"), [alert("w5", "host.mass_write", indicator=None)])
    (inc,) = incidents(store, "wave")
    assert inc["subject"] == "host.mass_write" and len(inc["sites"]) == 5
    assert inc["severity"] == alert_pb2.SEVERITY_HIGH


def test_kill_chain_in_order_inside_one_establishment(store: Store) -> None:
    s = site(7)
    store.ingest(s, [alert("k1", "net.portscan", T0, None)])
    store.ingest(s, [alert("k2", "net.bruteforce", T0 + 60, None)])
    assert incidents(store, "kill_chain") == []
    store.ingest(s, [alert("k3", "net.lateral", T0 + 120, None)])
    (inc,) = incidents(store, "kill_chain")
    assert inc["subject"] == s.finess and inc["severity"] == alert_pb2.SEVERITY_CRITICAL
    assert "scan -> credential -> lateral" in inc["summary"]
    assert inc["alert_count"] == 3


def test_kill_chain_out_of_order_or_across_sites_does_not_fire(store: Store) -> None:
    store.ingest(site(8), [alert("o1", "net.lateral", T0, None)])
    store.ingest(site(8), [alert("o2", "net.bruteforce", T0 + 60, None)])
    store.ingest(site(8), [alert("o3", "net.portscan", T0 + 120, None)])
    store.ingest(site(9), [alert("o4", "net.portscan", T0, None)])
    store.ingest(site(10), [alert("o5", "net.bruteforce", T0 + 60, None)])
    store.ingest(site(11), [alert("o6", "net.lateral", T0 + 120, None)])
    assert incidents(store, "kill_chain") == []


def test_longest_ordered_stages() -> None:
    assert longest_ordered_stages([(1, 0), (2, 1), (3, 2)]) == [0, 1, 2]
    assert longest_ordered_stages([(1, 2), (2, 1), (3, 0)]) in ([2], [1], [0])
    assert longest_ordered_stages([(1, 0), (2, 2), (3, 1), (4, 3)]) in ([0, 2, 3], [0, 1, 3])


def test_dark_site_once_across_replicas(url: str) -> None:
    replicas = [open_store(url) for _ in range(3)]
    hb = ingest_pb2.Heartbeat(agent_version="1")
    now = T0 + 100_000
    replicas[0].heartbeat(site(20), hb, received_at=now - 2000)  # silent for 2000 s
    replicas[0].heartbeat(
        Origin("agt-20b", site(20).finess, "GHT-20", "11"), hb, received_at=now - 1500
    )  # its second agent too
    replicas[0].heartbeat(site(21), hb, received_at=now - 10)  # healthy
    replicas[0].heartbeat(site(22), hb, received_at=now - 10 * 86400)  # long gone before
    ran = []

    def job(s: Store) -> None:
        ran.append(s.run_job("dark_site", 60, lambda tx: s.dark_sites(tx, now), now=now))

    threads = [threading.Thread(target=job, args=(s,)) for s in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(ran) == 1  # the job ran on exactly one replica
    (inc,) = incidents(replicas[0], "dark_site")
    assert inc["subject"] == site(20).finess
    for s in replicas:
        s.close()


def test_replicas_racing_on_one_indicator_open_one_incident(url: str) -> None:
    replicas = [open_store(url) for _ in range(3)]
    barrier = threading.Barrier(3)

    def go(i: int) -> None:
        barrier.wait()
        replicas[i].ingest(site(30 + i), [alert(f"r{i}", indicator="198.51.100.77")])

    threads = [threading.Thread(target=go, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (inc,) = incidents(replicas[0], "multi_site_indicator")
    assert inc["alert_count"] == 3 and len(inc["sites"]) == 3
    for s in replicas:
        s.close()


def test_acknowledge_close_and_reopen(store: Store) -> None:
    store.ingest(site(1), [alert("a1")])
    store.ingest(site(2), [alert("a2")])
    (inc,) = incidents(store, "multi_site_indicator")
    seq0 = inc["seq"]
    got = store.update_incident(inc["key"], 2, "analyst-1", "looking", now=T0 + 10)
    assert (got["status"], got["status_by"], got["status_comment"]) == (2, "analyst-1", "looking")
    assert got["seq"] > seq0  # watchers see the change
    store.update_incident(inc["key"], 3, "analyst-1", "blocked at the border")
    store.ingest(site(3), [alert("a3")])  # new evidence after closing: the incident reopens
    (again,) = incidents(store, "multi_site_indicator")
    assert again["key"] == inc["key"] and again["status"] == 1


def test_retention_purges_old_alerts_and_closed_incidents(store: Store) -> None:
    store.ingest(site(1), [alert("old", t=T0)], received_at=T0)
    store.ingest(site(2), [alert("old2", t=T0)], received_at=T0)
    store.ingest(
        site(3), [alert("new", t=T0 + 40 * 86400, indicator=None)], received_at=T0 + 40 * 86400
    )
    # An old capture replayed today is today's data: kept, whatever its event time.
    store.ingest(
        site(4),
        [alert("replayed", t=T0 - 400 * 86400, indicator=None)],
        received_at=T0 + 40 * 86400,
    )
    (inc,) = incidents(store, "multi_site_indicator")
    store.update_incident(inc["key"], 3, "a", "done", now=T0 + 60)
    with store.backend.tx() as tx:
        assert store.purge(tx, T0 + 30 * 86400) == 2
    assert store.count_alerts() == 2
    assert incidents(store, "multi_site_indicator") == []


def _summary(store: Store) -> list[tuple]:
    return sorted(
        (r["rule"], r["subject"], r["alert_count"], r["summary"], len(r["sites"]))
        for r in store.list_incidents(limit=1000)
    )


def test_one_group_commit_correlates_as_batches_one_by_one(tmp_path: Path) -> None:
    """The writer stores many agents' batches in one transaction and runs the rules once
    over all of them: the incidents (counts, sites, summaries) are those that batches
    stored one at a time give."""
    steps = []
    for n in range(1, 13):  # 12 sites over 4 GHTs, a wave and one indicator
        o = site(n, ght=f"GHT-{n % 4}")
        steps.append((o, [alert(f"a{n}"), alert(f"w{n}", "host.mass_write", indicator=None)]))
    steps.append((site(3, ght="GHT-3"), [alert("again3")]))  # a site already counted
    one = open_store(f"sqlite:///{tmp_path / 'one.db'}")
    grouped = open_store(f"sqlite:///{tmp_path / 'group.db'}")
    try:
        expected = [one.ingest(o, a, received_at=T0) for o, a in steps]
        got = grouped.ingest_many(steps[:5], received_at=T0)
        got += grouped.ingest_many(steps[5:], received_at=T0)
        assert got == expected
        assert _summary(grouped) == _summary(one)
        rules = {r[0] for r in _summary(grouped)}
        assert {"multi_site_indicator", "wave"} <= rules
        (msi,) = incidents(grouped, "multi_site_indicator")
        assert msi["alert_count"] == 13 and len(msi["sites"]) == 12
        assert "4 GHTs (12 establishments)" in msi["summary"]
    finally:
        one.close()
        grouped.close()


def test_retro_matches_grouped_or_one_by_one_give_the_same_span(tmp_path: Path) -> None:
    """The writer's group commit sees every batch's summary rows before the rules run: the
    span and its wording are still those of the batches stored one at a time."""
    steps = [
        (site(1), [retro_alert("r1", "2026-11-10 08:00", "2026-11-10 09:00")]),
        (site(2), [retro_alert("r2", "2026-11-12 08:00", "2026-11-12 09:00")]),
        (site(1), [retro_alert("r3", "2026-11-01 08:00", "2026-11-01 09:00")]),
        (site(3), [retro_alert("r4", "2026-11-15 08:00", "2026-11-15 09:00")]),
        (site(2), [retro_alert("r5", "2026-10-30 08:00", "2026-10-30 09:00")]),
    ]
    one = open_store(f"sqlite:///{tmp_path / 'one.db'}")
    grouped = open_store(f"sqlite:///{tmp_path / 'group.db'}")
    try:
        for o, a in steps:
            one.ingest(o, a, received_at=PUBLISHED)
        grouped.ingest_many(steps, received_at=PUBLISHED)
        assert _summary(grouped) == _summary(one)
        (inc,) = incidents(grouped, "multi_site_indicator")
        assert inc["summary"].endswith("between 2026-10-30 and 2026-11-15, found by retro-hunt")
    finally:
        one.close()
        grouped.close()
