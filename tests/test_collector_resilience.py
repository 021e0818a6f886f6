"""The collector under the faults an operator meets at night: a batch that can never be
stored, a correlation rule that fails, the store gone for a while. No batch blocks an
agent, nothing is lost silently, the agent never reads our internals."""

from __future__ import annotations

import sqlite3
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.store import Origin, Store, open_store
from common import metrics
from tests._delivery_kit import agent_config, outbox_depth, replay, stop, wait_for
from tests.conftest import DATA, Collector, free_port, start_collector, tool
from tests.stores import pg_schema_url
from vigie.v1 import alert_pb2

T2010, T2015 = 1_276_000_000.0, 1_430_000_000.0
SITE = Origin("agt-1", "750000001", "GHT-A", "11")


def _alert(aid: str, detector: str, t: float, summary: str = "x") -> alert_pb2.Alert:
    a = alert_pb2.Alert(
        id=aid, revision=1, detector=detector, severity=3, summary=summary, occurrences=1
    )
    for f in (a.first_seen, a.last_seen, a.observed_at):
        f.FromNanoseconds(int(t * 1e9))
    a.entities.add(role=alert_pb2.ROLE_SOURCE, kind=alert_pb2.KIND_IP, value="198.51.100.4")
    return a


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


def test_a_stage_that_left_the_window_blocks_nothing(store: Store) -> None:
    """The reported poison: a scan stored in 2010, then a credential attack in 2015 for the
    same establishment; every retry of the second batch failed in the kill-chain rule."""
    assert store.ingest(SITE, [_alert("scan", "net.portscan", T2010)]) == (1, 0, 0)
    assert store.ingest(SITE, [_alert("guess", "net.bruteforce", T2015)]) == (1, 0, 0)
    assert store.events.take() == {}
    assert store.dead_letters() == []


def test_a_rule_that_fails_loses_no_alert_and_stops_no_other_rule(store: Store) -> None:
    """A bug in one rule: the alerts are stored, the other rules run, the failure is
    counted and the alerts wait in the dead letters; after the fix a retry correlates them."""
    wave = store.correlator.rules["wave"]

    def broken(tx, parts, now):
        raise ZeroDivisionError("a bug in the wave rule")

    wave.on_ingest = broken  # an instance attribute hides the rule's method
    for n in range(1, 4):  # one external address seen in three GHTs: multi_site_indicator
        origin = Origin(f"agt-{n}", f"75000000{n}", f"GHT-{n}", "11")
        stored = store.ingest(origin, [_alert(f"a{n}", "net.portscan", T2015 + n)])
        assert stored == (1, 0, 0)
    events = store.events.take()
    assert events[("correlation_error", "wave")] == 3
    assert store.count_alerts() == 3
    rules = {r["rule"] for r in store.list_incidents()}
    assert rules == {"multi_site_indicator"}
    held = store.dead_letters()
    assert {(d["kind"], d["rule"]) for d in held} == {("correlation", "wave")}
    assert "ZeroDivisionError" in held[0]["reason"]
    assert store.dead_letter_counts() == {"agt-1": 1, "agt-2": 1, "agt-3": 1}

    assert store.retry_dead_letters() == (0, 3)  # still broken: still held, attempts counted
    assert {d["attempts"] for d in store.dead_letters()} == {2}
    del wave.on_ingest
    store.correlator.s["wave"]["min_establishments"] = 3
    assert store.retry_dead_letters() == (3, 0)
    assert store.dead_letters() == []
    assert {r["rule"] for r in store.list_incidents()} == {"multi_site_indicator", "wave"}


def test_an_alert_the_store_refuses_is_held_and_the_rest_acknowledged(store: Store) -> None:
    """PostgreSQL refuses a NUL character in text (SQLite takes it): a real value one
    store refuses. On SQLite the operator's own constraint plays that part. The batch is
    acknowledged with the refused alert counted as dead-lettered, never retried forever."""
    if store.dialect == "sqlite":
        with store.backend.tx() as tx:
            tx.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON alerts WHEN NEW.summary LIKE 'bad%' "
                "BEGIN SELECT RAISE(ABORT, 'refused by a local constraint'); END"
            )
    batch = [
        _alert("ok1", "net.portscan", T2015),
        _alert("bad", "net.portscan", T2015, summary="bad\x00summary"),
        _alert("ok2", "net.portscan", T2015),
    ]
    assert store.ingest(SITE, batch) == (2, 0, 1)
    assert store.count_alerts() == 2
    (held,) = store.dead_letters()
    assert (held["kind"], held["alert_id"], held["agent_id"]) == ("store", "bad", "agt-1")
    assert store.events.take()[("dead_letter", "store")] == 1
    # The same batch sent again (the agent never saw the ack): duplicates and the same letter.
    assert store.ingest(SITE, batch) == (0, 2, 1)
    assert len(store.dead_letters()) == 1
    if store.dialect == "sqlite":  # the operator lifts the constraint, then replays
        with store.backend.tx() as tx:
            tx.execute("DROP TRIGGER refuse")
        assert store.retry_dead_letters() == (1, 0)
        assert store.count_alerts() == 3
    else:
        assert store.retry_dead_letters() == (0, 1)


# End to end: real agents replaying real captures into a real collector ------------------


def _replay_to(c: Collector, pcap: Path, state: Path, timeout: float = 120) -> str:
    cfg = agent_config(state.parent / f"{state.name}.toml", collector={"drain_timeout_seconds": 20})
    proc = replay(pcap, state, c.address, config=cfg)
    proc.wait(timeout)
    return (state.parent / f"{state.name}.log").read_text()


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


@pytest.fixture
def national(tmp_path: Path) -> Iterator[tuple[Collector, int]]:
    port = free_port()
    cfg = tmp_path / "collector.toml"
    cfg.write_text(f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    c = start_collector(tmp_path / "collector", config=cfg)
    c.issue_agent(tmp_path / "agent" / "tls")
    try:
        yield c, port
    finally:
        stop(c)


def test_captures_years_apart_from_one_site_are_all_delivered(national, tmp_path: Path) -> None:
    """The reported sequence: nmap (2010) then SSH password guessing (2015) from one agent
    to a collector with default settings. Every alert of both reaches the store."""
    c, _ = national
    state = tmp_path / "agent"
    _replay_to(c, DATA / "nmap_syn_scan_1000ports.pcap", state)
    _replay_to(c, DATA / "ssh_password_guessing.pcap", state)
    assert outbox_depth(state) == 0
    with sqlite3.connect(c.db()) as db:
        detectors = {r[0] for r in db.execute("SELECT detector FROM alerts")}
        assert db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0] == 0
    assert {"net.portscan", "net.bruteforce"} <= detectors
    log = c.log.read_text()
    assert "correlation_failed" not in log and "batch_failed" not in log


def test_refused_alerts_are_held_shown_and_replayed_after_a_fix(national, tmp_path: Path) -> None:
    """The store refuses every portscan alert (an operator's constraint): the agent's queue
    drains all the same, the collector says so in its log, metrics, doctor and `vigie
    agents`, and `dead-letter retry` stores them once the constraint is lifted."""
    c, port = national
    with sqlite3.connect(c.db()) as db:
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON alerts WHEN NEW.detector = 'net.portscan' "
            "BEGIN SELECT RAISE(ABORT, 'portscan refused here'); END"
        )
    state = tmp_path / "agent"
    log = _replay_to(c, DATA / "nmap_syn_scan_1000ports.pcap", state)
    assert outbox_depth(state) == 0, log
    assert "alerts_held_by_collector" in log
    assert "portscan refused here" not in log and "IntegrityError" not in log
    with sqlite3.connect(c.db()) as db:
        held = db.execute("SELECT COUNT(*), MIN(reason) FROM dead_letters").fetchone()
    assert held[0] >= 1 and "portscan refused here" in held[1]
    assert "dead_letter" in c.log.read_text()
    s = metrics.parse(_scrape(port))
    assert s['vigie_collector_dead_letters_total{kind="store"}'] == held[0]
    assert s["vigie_collector_dead_letters_held"] == held[0]
    assert s['vigie_collector_batches_failed_total{reason="refused"}'] >= 1

    env = {"VIGIE_CLI_CONFIG": "/nonexistent"}
    args = ["--state-dir", str(c.state_dir)]
    doctor = subprocess.run(
        [tool("vigie-collector"), "doctor", *args], capture_output=True, text=True, env=env
    )
    assert doctor.returncode == 1 and f"{held[0]} alert(s) held" in doctor.stdout
    listed = subprocess.run(
        [tool("vigie-collector"), "dead-letter", "list", *args], capture_output=True, text=True
    )
    assert listed.returncode == 0 and "portscan refused here" in listed.stdout

    creds = c.issue_analyst(tmp_path / "analyst")
    agents = subprocess.run(
        [tool("vigie"), "agents"], capture_output=True, text=True, env=c.analyst_env(creds)
    )
    assert agents.returncode == 0 and "HELD" in agents.stdout, agents.stdout + agents.stderr
    assert agents.stdout.splitlines()[1].split()[-1] == str(held[0])

    with sqlite3.connect(c.db()) as db:
        db.execute("DROP TRIGGER refuse")
    retried = subprocess.run(
        [tool("vigie-collector"), "dead-letter", "retry", *args], capture_output=True, text=True
    )
    assert retried.returncode == 0 and f"{held[0]} stored" in retried.stdout, retried.stdout
    with sqlite3.connect(c.db()) as db:
        assert db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0] == 0
        assert (
            db.execute("SELECT COUNT(*) FROM alerts WHERE detector = 'net.portscan'").fetchone()[0]
            == held[0]
        )


def test_a_store_that_fails_for_a_while_keeps_the_batch_at_the_agent(
    national, tmp_path: Path
) -> None:
    """A failure retrying can mend (here the database cannot run the insert): the agent is
    told UNAVAILABLE with a reference, never the exception, keeps the batch, and delivers
    it once the store is back."""
    c, port = national
    with sqlite3.connect(c.db()) as db:
        db.execute("CREATE TRIGGER broken BEFORE INSERT ON alerts BEGIN SELECT no_such_fn(); END")
    state = tmp_path / "agent"
    cfg = agent_config(tmp_path / "agent.toml", collector={"drain_timeout_seconds": 60})
    proc = replay(DATA / "nmap_syn_scan_1000ports.pcap", state, c.address, config=cfg)
    agent_log = tmp_path / "agent.log"
    try:
        assert wait_for(lambda: "batch_not_stored" in c.log.read_text(), 60)
        assert outbox_depth(state) > 0
        with sqlite3.connect(c.db()) as db:
            db.execute("DROP TRIGGER broken")
        proc.wait(90)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = agent_log.read_text()
    assert "no_such_fn" not in text and "OperationalError" not in text
    assert "cannot store alerts now" in text
    assert outbox_depth(state) == 0
    assert (
        metrics.parse(_scrape(port))['vigie_collector_batches_failed_total{reason="unavailable"}']
        >= 1
    )


def test_a_call_that_fails_says_a_reference_never_our_internals(national, tmp_path: Path) -> None:
    """Any handler failing unexpectedly (here the store lost a table under a query) answers
    INTERNAL with a reference the operator finds in the collector's log."""
    c, _ = national
    creds = c.issue_analyst(tmp_path / "analyst")
    with sqlite3.connect(c.db()) as db:
        db.execute("ALTER TABLE agents RENAME TO agents_elsewhere")
    r = subprocess.run(
        [tool("vigie"), "agents"], capture_output=True, text=True, env=c.analyst_env(creds)
    )
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "no such table" not in out and "OperationalError" not in out, out
    ref = out.split("(ref ")[1].split(")")[0]
    assert f'"ref": "{ref}"' in c.log.read_text() and "no such table" in c.log.read_text()
