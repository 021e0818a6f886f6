"""Correlation rules under arbitrary traffic (hypothesis): batches from several sites, with
event times years apart, in the past and the future, in any order, with kill-chain stages
entering and leaving every window. The rules never raise (a failure would be counted as a
correlation error), and storing the same batches one transaction each or grouped (the
writer's group commit) gives the same incidents."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.correlate.rules import DEFAULT_STAGE_DETECTORS
from collector.store import Origin, Store, open_store
from tests.stores import pg_schema_url
from vigie.v1 import alert_pb2

T0 = 1_750_000_000.0
YEAR = 365 * 86400.0
# Offsets that straddle every rule's window (12 h, 24 h, 48 h) and years between captures.
OFFSETS = [-10 * YEAR, -YEAR, -3 * 86400, -86400 - 1, -3600, 0, 1, 3600, 86400, 2 * 86400, YEAR]
DETECTORS = [d for ds in DEFAULT_STAGE_DETECTORS.values() for d in ds] + ["net.dga", "net.beacon"]
INDICATORS = ["203.0.113.9", "198.51.100.7", None]
SITES = [
    Origin("agt-1", "750000001", "GHT-A", "11"),
    Origin("agt-2", "750000002", "GHT-A", "11"),
    Origin("agt-3", "690000003", "GHT-B", "84"),
    Origin("agt-4", "130000004", "GHT-C", "93"),
    Origin("agt-5", "130000005", "GHT-C", "93"),
]


def _alert(aid: str, detector: str, t: float, span: float, indicator: str | None, retro: bool):
    a = alert_pb2.Alert(
        id=aid, revision=1, detector=detector, severity=3, summary="x", occurrences=1
    )
    a.first_seen.FromNanoseconds(int(t * 1e9))
    a.last_seen.FromNanoseconds(int((t + span) * 1e9))
    a.observed_at.FromNanoseconds(int((t + span) * 1e9))
    a.entities.add(
        role=alert_pb2.ROLE_SOURCE, kind=alert_pb2.KIND_IP, value="p:abc", pseudonymised=True
    )
    if indicator:
        a.entities.add(role=alert_pb2.ROLE_TARGET, kind=alert_pb2.KIND_IP, value=indicator)
    if retro:  # a retro-hunt match: traffic of `t`, a sighting when received
        a.metrics["retro"] = 1
    return a


alert_spec = st.tuples(
    st.sampled_from(DETECTORS),
    st.sampled_from(OFFSETS),
    st.sampled_from([0.0, 30.0, 7200.0]),
    st.sampled_from(INDICATORS),
    st.booleans(),
)
batch_spec = st.tuples(st.integers(0, len(SITES) - 1), st.lists(alert_spec, min_size=1, max_size=4))
traffic = st.lists(batch_spec, min_size=1, max_size=14)


def _batches(spec) -> list[tuple[Origin, list]]:
    out, n = [], 0
    for site, alerts in spec:
        batch = []
        for detector, offset, span, indicator, retro in alerts:
            n += 1
            batch.append(_alert(f"a{n}", detector, T0 + offset, span, indicator, retro))
        out.append((SITES[site], batch))
    return out


def _incidents(store: Store) -> list[tuple]:
    out = []
    with store.backend.tx() as tx:
        for r in tx.fetch("SELECT * FROM incidents ORDER BY key"):
            sites = tx.values(
                "SELECT finess FROM incident_sites WHERE incident_key = ? ORDER BY finess",
                (r["key"],),
            )
            links = tx.values(
                "SELECT agent_id, alert_id FROM incident_alerts WHERE incident_key = ? "
                "ORDER BY agent_id, alert_id",
                (r["key"],),
            )
            out.append(
                (
                    r["key"],
                    r["status"],
                    r["severity"],
                    r["first_seen"],
                    r["last_seen"],
                    r["alert_count"],
                    r["summary"],
                    (r["traffic_first"], r["traffic_last"], r["traffic_retro"]),
                    [s[0] for s in sites],
                    [tuple(x) for x in links],
                )
            )
    return out


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(spec=traffic, cuts=st.lists(st.integers(1, 6), min_size=1, max_size=8))
def test_rules_never_fail_and_grouping_changes_nothing(spec, cuts) -> None:
    with tempfile.TemporaryDirectory() as d:
        one = open_store(f"sqlite:///{Path(d) / 'one.db'}")
        grouped = open_store(f"sqlite:///{Path(d) / 'group.db'}")
        try:
            _check(_batches(spec), cuts, one, grouped)
        finally:
            one.close()
            grouped.close()


def _check(batches: list, cuts: list[int], one: Store, grouped: Store) -> None:
    """Stored one batch per transaction, then in groups cut by `cuts`: no rule failed on
    either, and the incidents are the same."""
    for origin, alerts in batches:
        one.ingest(origin, alerts, received_at=T0)
    i = 0
    for size in cuts * len(batches):
        if i >= len(batches):
            break
        grouped.ingest_many(batches[i : i + size], received_at=T0)
        i += size
    for store in (one, grouped):
        events = store.events.take()
        assert not [k for k in events if k[0] in ("correlation_error", "dead_letter")], events
        assert store.dead_letters() == []
    assert _incidents(grouped) == _incidents(one)


TABLES = [
    "alerts",
    "agents",
    "alert_indicators",
    "incidents",
    "incident_sites",
    "incident_alerts",
    "indicator_sites",
    "detector_sites",
    "site_stages",
    "indicator_ghts",
    "incident_changes",
    "dead_letters",
]


@pytest.fixture
def pg_pair():
    """Two PostgreSQL stores, each in a schema of its own, emptied before each example."""
    one_url = pg_schema_url()
    group_url = pg_schema_url()
    one, grouped = open_store(next(one_url)), open_store(next(group_url))
    try:
        yield one, grouped
    finally:
        one.close()
        grouped.close()
        for gen in (one_url, group_url):
            with contextlib.suppress(StopIteration):
                next(gen)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(spec=traffic, cuts=st.lists(st.integers(1, 6), min_size=1, max_size=8))
def test_rules_never_fail_on_postgresql_either(pg_pair, spec, cuts) -> None:
    one, grouped = pg_pair
    for store in (one, grouped):
        with store.backend.tx() as tx:
            for table in TABLES:
                tx.execute(f"DELETE FROM {table}")
    _check(_batches(spec), cuts, one, grouped)
