"""A full state disk during a live attack: `vigie-agent run` captures in a network namespace
while nmap scans it and its state directory (a small tmpfs) fills up. The agent does not
exit, says so once, still delivers what it detects to the collector, and writes its queue
out once space returns. Traffic stays inside the namespaces."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, tool
from tests.test_full_disk import fill

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from netns import NetnsPair, available  # noqa: E402

pytestmark = pytest.mark.root


@pytest.fixture
def ns() -> Iterator[NetnsPair]:
    reason = available() or (None if shutil.which("nmap") else "nmap is not installed")
    if reason is None and os.geteuid() != 0:
        reason = "needs root (network namespaces, tmpfs)"
    if reason:
        pytest.skip(f"live full-disk test skipped: {reason}")
    with NetnsPair("fd") as pair:
        yield pair


def _wait(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    return cond()


def _portscans(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute(
                "SELECT COUNT(*) FROM alerts WHERE detector = 'net.portscan'"
            ).fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_a_full_disk_during_an_attack_loses_nothing(ns: NetnsPair, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", str(state)], check=True
    )
    procs: list[subprocess.Popen] = []
    try:
        port = free_port()
        coll_dir, coll_log = tmp_path / "collector", tmp_path / "collector.log"
        subprocess.run(
            [tool("vigie-collector"), "pki", "init", "--state-dir", str(coll_dir)],
            check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(
            [tool("vigie-collector"), "pki", "issue-agent", "--state-dir", str(coll_dir),
             "--finess", "750000001", "--ght", "GHT-A", "--region", "11",
             "--out", str(state / "tls")],
            check=True, capture_output=True,
        )  # fmt: skip
        collector = ns.popen(
            ns.a,
            [tool("vigie-collector"), "serve", "--state-dir", str(coll_dir), "--listen",
             f"127.0.0.1:{port}", "--enroll-listen", ""],
            stdout=open(coll_log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )  # fmt: skip
        procs.append(collector)
        assert _wait(lambda: b"collector_listening" in coll_log.read_bytes(), 30)
        cfg = tmp_path / "agent.toml"
        cfg.write_text('[capture]\nbpf_filter = "tcp"\n[metrics]\nlisten = ""\n')
        agent_log = tmp_path / "agent.log"
        agent = ns.popen(
            ns.a,
            [tool("vigie-agent"), "run", "-i", ns.if_a, "--output", "collector",
             "--collector", f"127.0.0.1:{port}", "--state-dir", str(state),
             "--config", str(cfg)],
            stdout=open(agent_log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )  # fmt: skip
        procs.append(agent)
        assert _wait(lambda: b"capture_started" in agent_log.read_bytes(), 30)
        assert _wait(lambda: b"stream_connected" in agent_log.read_bytes(), 30)

        filler = fill(state)  # the disk is full before the attack
        ns.run(ns.b, ["nmap", "-sS", "-n", "-Pn", "-T4", "-p", "1-1500", ns.addr_a],
               capture_output=True, timeout=120)  # fmt: skip
        assert _wait(lambda: b"outbox_disk_full" in agent_log.read_bytes(), 30), (
            agent_log.read_text()[-3000:]
        )
        # Held in memory, the alert still reaches the collector; the agent runs on.
        assert _wait(lambda: _portscans(coll_dir / "vigie.db") >= 1, 30), agent_log.read_text()[
            -3000:
        ]
        assert agent.poll() is None

        # A second scan while still full, then space comes back: the queue goes to disk.
        ns.run(ns.b, ["nmap", "-sS", "-n", "-Pn", "-T4", "-p", "2000-3500", ns.addr_a],
               capture_output=True, timeout=120)  # fmt: skip
        filler.unlink()
        assert _wait(lambda: b"outbox_disk_back" in agent_log.read_bytes(), 30), (
            agent_log.read_text()[-3000:]
        )
        text = agent_log.read_text()
        assert text.count('"outbox_disk_full"') == 1 and text.count('"outbox_disk_back"') == 1
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0
        text = agent_log.read_text()
        assert "Traceback" not in text and "cannot rollback" not in text
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        subprocess.run(["umount", "-l", str(state)], check=False)
