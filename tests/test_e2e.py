"""One packet's whole path: a real collector and a real agent process over mutual TLS."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
from pathlib import Path

from tests.conftest import DATA, Collector, jsonl, tool

INTERNAL = ["172.16.0.8", "192.168.1.178", "192.168.1.2"]


def _agent_replay(collector: Collector, pcap: Path, state: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            tool("vigie-agent"),
            "replay",
            str(pcap),
            "--state-dir",
            str(state),
            "--output",
            "collector",
            "--collector",
            collector.address,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_alert_travels_from_capture_to_store_and_analyst(
    collector: Collector, tmp_path: Path
) -> None:
    agent_state = tmp_path / "agent"
    collector.issue_agent(agent_state / "tls", finess="999000001", ght="GHT-TEST-01")
    logs = []
    for pcap in (
        "nmap_syn_scan_1000ports.pcap",
        "nmap_scan_types_connect_syn_fin_null_xmas.pcapng",
    ):
        r = _agent_replay(collector, DATA / pcap, agent_state)
        logs.append(r.stdout + r.stderr)
        assert r.returncode == 0, r.stdout + r.stderr
        assert '"queued": 0' in r.stdout  # everything acknowledged, outbox empty

    # In the store, under the certificate's establishment, internal addresses pseudonymised.
    with sqlite3.connect(collector.db()) as db:
        rows = db.execute(
            "SELECT detector, finess, ght, region, entities, occurrences FROM alerts"
        ).fetchall()
    assert {r[0] for r in rows} == {"net.portscan"}
    assert {(r[1], r[2], r[3]) for r in rows} == {("999000001", "GHT-TEST-01", "11")}
    # The scan's last revision (997 probes) replaced its first; if not, show why.
    assert max(r[5] for r in rows) >= 990, (rows, logs, collector.log.read_text()[-3000:])
    raw = b"".join(p.read_bytes() for p in collector.state_dir.glob("vigie.db*"))
    for addr in INTERNAL:
        assert addr.encode() not in raw
        assert socket.inet_aton(addr) not in raw
    assert b"64.13.134.52" in raw  # the external victim stays in clear

    # The analyst sees them through the CLI, table and JSON.
    creds = collector.issue_analyst(tmp_path / "analyst")
    env = collector.analyst_env(creds)
    table = subprocess.run(
        [tool("vigie"), "alerts"], env=env, capture_output=True, text=True, timeout=60
    )
    assert table.returncode == 0, table.stderr
    assert "net.portscan" in table.stdout and "GHT-TEST-01 / 999000001" in table.stdout
    assert all(len(line) <= 80 for line in table.stdout.splitlines())
    js = subprocess.run(
        [tool("vigie"), "alerts", "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    got = jsonl(js.stdout)
    assert len(got) == 2
    assert {a["origin"]["finess"] for a in got} == {"999000001"}
    assert any(e["value"] == "64.13.134.52" for a in got for e in a["entities"])


def test_resending_the_same_alerts_stores_them_once(collector: Collector, tmp_path: Path) -> None:
    """The outbox is kept when the collector does not answer; a restart re-sends it."""
    agent_state = tmp_path / "agent"
    collector.issue_agent(agent_state / "tls")
    collector.proc.terminate()
    collector.proc.wait(10)
    # Collector down: the alerts wait in the outbox, the agent says so and exits 75.
    r = subprocess.run(
        [
            tool("vigie-agent"),
            "replay",
            str(DATA / "nmap_syn_scan_1000ports.pcap"),
            "--state-dir",
            str(agent_state),
            "--output",
            "collector",
            "--collector",
            collector.address,
            "--config",
            str(_short_drain(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 75, r.stdout + r.stderr
    assert "outbox_not_drained" in r.stdout
    with sqlite3.connect(agent_state / "outbox.db") as db:
        (queued,) = db.execute("SELECT COUNT(*) FROM outbox").fetchone()
    assert queued == 1
    from tests.conftest import start_collector

    back = start_collector(collector.state_dir, int(collector.address.rsplit(":", 1)[1]))
    try:
        # Replaying an empty-of-alerts capture just drains the outbox.
        r = _agent_replay(
            back, DATA / "nmap_scan_types_connect_syn_fin_null_xmas.pcapng", agent_state
        )
        assert r.returncode == 0, r.stdout + r.stderr
        with sqlite3.connect(back.db()) as db:
            n = db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0]
        assert n == 2
    finally:
        back.proc.terminate()
        back.proc.wait(10)


def _short_drain(tmp_path: Path) -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text("[collector]\ndrain_timeout_seconds = 2.0\n")
    return cfg
