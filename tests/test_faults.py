"""Delivery under real faults: kill -9 of either side, a long outage, a full outbox.

Real processes throughout: a collector, and `vigie-agent replay --output collector` on a
generated capture holding thousands of scanners (one alert each). The collector's flow
control slows the drain so that faults land while the outbox is non-empty and batches
are in flight. Exactly once in the store: as many rows as distinct alerts, each at its
last revision.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import psutil
import pytest

from tests import _delivery_kit as kit
from tests.conftest import free_port

SOURCES = 3000
HIGH = 20
RATE = 1000  # alerts per second the collector allows each agent


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    d = tmp_path_factory.mktemp("capture")
    pcap = kit.scanners_pcap(d / "scanners.pcap", SOURCES, arp_claims=HIGH)
    expected = kit.expected_alerts(pcap, d / "jsonl-agent")
    assert expected["ids"] >= SOURCES + HIGH and expected["high"] >= HIGH
    return pcap, expected


def _collector_cfg(tmp_path: Path) -> Path:
    cfg = tmp_path / "collector.toml"
    cfg.write_text(f"[ingest]\nmax_alerts_per_second = {RATE}\nmax_batches_in_flight = 4\n")
    return cfg


def _agent_cfg(tmp_path: Path, **outbox) -> Path:
    return kit.agent_config(
        tmp_path / "agent.toml",
        collector={"batch_size": 50, "drain_timeout_seconds": 120.0, "heartbeat_seconds": 1.0},
        **({"outbox": outbox} if outbox else {}),
    )


def _exactly_once(db: Path, expected: dict) -> None:
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT agent_id, alert_id, severity, revision FROM alerts").fetchall()
    ids = {(a, i) for a, i, _, _ in rows}
    assert len(rows) == len(ids) == expected["ids"], (len(rows), len(ids), expected)
    assert sum(1 for _, _, sev, _ in rows if sev >= 4) == expected["high"]
    # ... and each at its last revision: nothing lost, not even an update.
    assert sum(rev for *_, rev in rows) == expected["revisions"]


def _revisions(db: Path) -> int:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT COALESCE(SUM(revision), 0) FROM alerts").fetchone()[0]


def _log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def test_kill9_collector_mid_stream(tmp_path: Path, capture) -> None:
    pcap, expected = capture
    port = free_port()
    cfg = _collector_cfg(tmp_path)
    c = kit.start(tmp_path / "collector", port, cfg)
    state = tmp_path / "agent"
    c.issue_agent(state / "tls")
    agent = kit.replay(pcap, state, c.address, _agent_cfg(tmp_path))
    try:
        # Some batches committed, many still queued, a window of batches in flight.
        assert kit.wait_for(lambda: kit.stored(c.db()) >= 500, 60)
        assert kit.outbox_depth(state) > 0
        writer = psutil.Process(c.proc.pid).children()
        assert writer, "the collector runs its SQLite writes in a child process"
        kit.kill9(c.proc)
        # The writer dies with it (PR_SET_PDEATHSIG): none is left holding the database.
        assert kit.wait_for(lambda: not any(w.is_running() and w.status() != "zombie"
                                            for w in writer), 5)  # fmt: skip
        assert 0 < _revisions(c.db()) < expected["revisions"]
        time.sleep(2)  # the agent meets a dead port and backs off
        assert agent.poll() is None
        c = kit.start(tmp_path / "collector", port, cfg)
        assert agent.wait(180) == 0, _log(tmp_path / "agent.log")
    finally:
        if agent.poll() is None:
            agent.kill()
        kit.stop(c)
    assert "stream_failed" in _log(tmp_path / "agent.log")
    _exactly_once(c.db(), expected)
    assert kit.outbox_depth(state) == 0


def test_kill9_agent_mid_stream(tmp_path: Path, capture) -> None:
    pcap, expected = capture
    c = kit.start(tmp_path / "collector", config=_collector_cfg(tmp_path))
    state = tmp_path / "agent"
    c.issue_agent(state / "tls")
    acfg = _agent_cfg(tmp_path)
    agent = kit.replay(pcap, state, c.address, acfg)
    try:
        # Detection done (every alert in the outbox), delivery half-way: kill -9.
        assert kit.wait_for(lambda: "replay_done" in _log(tmp_path / "agent.log"), 60)
        assert kit.wait_for(lambda: kit.stored(c.db()) >= 300, 60)
        kit.kill9(agent)
        queued = kit.outbox_depth(state)
        assert queued > 0 and _revisions(c.db()) < expected["revisions"]
        # Restarted (on a capture with nothing in it): it delivers what the outbox kept.
        again = kit.replay(kit.empty_pcap(tmp_path / "empty.pcap"), state, c.address, acfg)
        assert again.wait(180) == 0, _log(tmp_path / "agent.log")
    finally:
        if agent.poll() is None:
            agent.kill()
        kit.stop(c)
    _exactly_once(c.db(), expected)
    assert kit.outbox_depth(state) == 0


def test_collector_outage_backlog_delivered_at_bounded_rate(tmp_path: Path, capture) -> None:
    pcap, expected = capture
    port = free_port()
    cfg = _collector_cfg(tmp_path)
    c = kit.start(tmp_path / "collector", port, cfg)
    state = tmp_path / "agent"
    c.issue_agent(state / "tls")
    kit.stop(c)  # the collector goes away; the agent keeps detecting
    agent = kit.replay(pcap, state, c.address, _agent_cfg(tmp_path))
    try:
        assert kit.wait_for(lambda: "replay_done" in _log(tmp_path / "agent.log"), 60)
        time.sleep(3)
        assert kit.outbox_depth(state) == expected["ids"]  # everything queued, nothing lost
        assert agent.poll() is None
        c = kit.start(tmp_path / "collector", port, cfg)
        t0 = time.monotonic()
        assert agent.wait(180) == 0, _log(tmp_path / "agent.log")
        drained_in = time.monotonic() - t0
    finally:
        if agent.poll() is None:
            agent.kill()
        kit.stop(c)
    _exactly_once(c.db(), expected)
    # No faster than the collector's flow control allows (a little slack for the first
    # batches in flight).
    assert drained_in >= 0.8 * expected["ids"] / RATE, drained_in


def test_full_outbox_sheds_low_severity_first_and_reports_it(tmp_path: Path) -> None:
    pcap = kit.scanners_pcap(tmp_path / "s.pcap", 1500, arp_claims=HIGH)
    limit = 400
    port = free_port()
    c = kit.start(tmp_path / "collector", port, _collector_cfg(tmp_path))
    state = tmp_path / "agent"
    c.issue_agent(state / "tls")
    kit.stop(c)
    agent = kit.replay(pcap, state, c.address, _agent_cfg(tmp_path, max_alerts=limit))
    try:
        assert kit.wait_for(lambda: "replay_done" in _log(tmp_path / "agent.log"), 60)
        assert kit.outbox_depth(state) == limit
        c = kit.start(tmp_path / "collector", port, _collector_cfg(tmp_path))
        assert agent.wait(120) == 0, _log(tmp_path / "agent.log")
    finally:
        if agent.poll() is None:
            agent.kill()
        kit.stop(c)
    with sqlite3.connect(state / "outbox.db") as con:
        (shed,) = con.execute("SELECT value FROM meta WHERE name = 'shed'").fetchone()
    with sqlite3.connect(c.db()) as con:
        rows = con.execute("SELECT severity, detector FROM alerts").fetchall()
        (reported,) = con.execute("SELECT outbox_shed FROM agents").fetchone()
    assert shed >= 1500 + HIGH - limit  # every alert beyond the bound was shed, and counted
    assert reported == shed  # ... and the collector knows it from the heartbeat
    assert len(rows) == limit
    high = kit.expected_alerts(pcap, tmp_path / "jsonl-agent")["high"]
    assert high >= HIGH
    assert sum(1 for sev, _ in rows if sev >= 4) == high  # every high-severity alert kept
