"""A full state disk (issue #26): the agent keeps running, holds alerts in memory, sheds
past its bound with a count, says so once, and writes the queue out when space returns.

A real small tmpfs is mounted for state_dir and filled with a file until ENOSPC: the
errors are those of a real full filesystem (SQLITE_FULL on writes, an I/O error when
SQLite cannot size its WAL index at open). Mounting needs root.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import doctor
from agent.outbox.store import Outbox
from common import logs
from tests import _delivery_kit as kit
from tests.conftest import start_collector, tool
from vigie.v1 import alert_pb2

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs, unmounted whatever happens."""
    d = tmp_path / "fs"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(d)], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.fixture
def log_text() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    logs.setup(buf, "info")
    try:
        yield buf
    finally:
        logs.setup(sys.stderr, "info")


def fill(d: Path) -> Path:
    """Write a file until the filesystem refuses: it is then really full."""
    filler = d / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: close() has nothing left
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == 28  # ENOSPC
    assert os.statvfs(d).f_bavail < 16
    return filler


def events(buf: io.StringIO) -> list[str]:
    return [json.loads(line)["event"] for line in buf.getvalue().splitlines() if line]


def _a(i: int, sev: int = alert_pb2.SEVERITY_MEDIUM, rev: int = 1) -> alert_pb2.Alert:
    return alert_pb2.Alert(
        id=f"id{i}", revision=rev, severity=sev, detector="net.portscan", summary="s" * 200
    )


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_full_while_open_holds_in_memory_then_writes_back(
    small_fs: Path, log_text: io.StringIO
) -> None:
    """The issue's crash: the disk fills under an open outbox. No exception, no rollback
    cascade, shedding counted, sent from memory, written back once space returns."""
    clock = Clock()
    box = Outbox(small_fs / "outbox.db", memory_alerts=50, low_space_mb=0, clock=clock)
    box.put(_a(0))
    filler = fill(small_fs)
    for i in range(1, 81):  # 80 alerts, bound 50: 30 shed, the high ones kept
        sev = alert_pb2.SEVERITY_HIGH if i % 10 == 0 else alert_pb2.SEVERITY_LOW
        box.put(_a(i, sev))
    box.put(_a(80, alert_pb2.SEVERITY_HIGH, rev=2))  # a newer revision replaces, not adds
    assert box.disk_full and box.memory_queued() == 50
    assert box.shed_counts() == {"max_alerts": 0, "disk_full": 30}
    assert box.depth() == 51
    ids = [r[0] for r in box.pending(1000)]
    assert ids[0] == "id0" and len(ids) == 51  # disk rows first, then memory
    assert {f"id{i}" for i in range(10, 81, 10)} <= set(ids)  # no high alert shed
    assert "id33" not in ids and "id34" in ids  # then the oldest low ones went first
    # The collector acknowledges: memory entries go at once, the disk row's ack waits.
    box.ack([("id0", 1), ("id79", 1), ("id80", 2)])
    assert box.depth() == 48 and "id0" not in [r[0] for r in box.pending(1000)]
    clock.t += 5
    box.put(_a(200))  # disk still full: one retry, no crash
    assert box.disk_full
    filler.unlink()
    clock.t += 5
    box.put(_a(201))  # the retry finds room: queue written, then this alert
    assert not box.disk_full and box.memory_queued() == 0
    assert box.depth() == 50
    box.close()
    again = Outbox(small_fs / "outbox.db")
    assert again.depth() == 50 and again.shed_counts() == {"max_alerts": 0, "disk_full": 30}
    assert "id0" not in {r[0] for r in again.pending(1000)}  # the deferred ack applied
    again.close()
    seen = events(log_text)
    for once in ("outbox_disk_full", "outbox_disk_back", "outbox_memory_shedding"):
        assert seen.count(once) == 1, seen
    back = next(json.loads(x) for x in log_text.getvalue().splitlines() if "disk_back" in x)
    assert back["written"] == 49 and back["shed"] == 30
    assert "Traceback" not in log_text.getvalue()


def test_full_before_open_and_retry_at_most_every_second(small_fs: Path) -> None:
    """Restarted on a full disk (the issue's second crash): the outbox opens in memory,
    and a full disk is tried again once a second, not once per alert."""
    clock = Clock()
    Outbox(small_fs / "outbox.db").close()
    filler = fill(small_fs)
    box = Outbox(small_fs / "outbox.db", memory_alerts=1000, clock=clock)
    assert box.disk_full and box.depth() == 0
    tries = 0
    real = box._flush

    def counting() -> bool:
        nonlocal tries
        tries += 1
        return real()

    box._flush = counting  # type: ignore[method-assign]
    for i in range(500):
        box.put(_a(i))
    assert tries == 0  # within the same second: no write attempt
    clock.t += 1.5
    box.put(_a(500))
    assert tries == 1 and box.memory_queued() == 501
    filler.unlink()
    clock.t += 1.5
    assert box.depth() == 501 and not box.disk_full  # depth() retries too
    box.close()
    assert Outbox(small_fs / "outbox.db").depth() == 501


def test_low_space_warned_once_per_crossing(small_fs: Path, log_text: io.StringIO) -> None:
    clock = Clock()
    box = Outbox(small_fs / "outbox.db", low_space_mb=1, low_space_percent=0, clock=clock)
    assert not box.low_space
    big = small_fs / "big"
    big.write_bytes(b"\0" * 1200 * 1024)  # leaves less than 1 MB
    for _ in range(3):
        clock.t += 2
        box.tick()
    assert box.low_space
    big.unlink()
    clock.t += 2
    box.tick()
    assert not box.low_space
    box.close()
    assert events(log_text).count("state_dir_low_space") == 1
    assert events(log_text).count("state_dir_space_ok") == 1


def test_doctor_fails_on_a_full_state_dir(small_fs: Path) -> None:
    ok = doctor.check_state_space(small_fs, low_space_mb=0, low_space_percent=0)
    assert ok.status == "OK" and "MB free" in ok.message
    low = doctor.check_state_space(small_fs)  # 2 MB is under the 100 MB default
    assert low.status == "WARN" and "df -h" in low.remedy
    filler = fill(small_fs)
    full = doctor.check_state_space(small_fs, low_space_mb=0, low_space_percent=0)
    assert full.status == "FAIL" and "free space" in full.remedy, full
    assert "0.0 MB free" in full.message
    filler.unlink()
    assert doctor.check_state_space(small_fs, 0, 0).status == "OK"
    assert not [p for p in small_fs.iterdir()]  # the probe file is gone


def _doctor(state: Path, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("vigie-agent"), "doctor", "--state-dir", str(state), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | {"VIGIE_INTERFACE": ""},
    )


def test_replay_to_collector_disk_full_from_start_freed_midway(
    small_fs: Path, tmp_path: Path
) -> None:
    """End to end: an agent whose state disk is full before the attack, with its
    collector away. Alerts are held in memory; space returns, the queue is written out;
    the collector comes back and gets every alert. No exit, no traceback."""
    port = kit.free_port()
    collector = start_collector(tmp_path / "collector", port=port)
    state = small_fs / "agent"
    collector.issue_agent(state / "tls")
    collector.proc.terminate()
    collector.proc.wait(10)
    cfg = kit.agent_config(
        tmp_path / "agent.toml",
        outbox={"memory_alerts": 1000, "low_space_mb": 0.0, "low_space_percent": 0.0},
        collector={"drain_timeout_seconds": 120.0},
    )
    pcap = kit.scanners_pcap(tmp_path / "scan.pcap", 40, arp_claims=5)
    want = kit.expected_alerts(pcap, tmp_path / "jsonl-state", cfg)
    # A previous run left its outbox and pseudonymisation secret in state_dir.
    first = kit.replay(kit.empty_pcap(tmp_path / "empty.pcap"), state, f"127.0.0.1:{port}", cfg)
    first.wait(60)
    assert (state / "outbox.db").exists() and (state / "anon.key").exists()
    filler = fill(small_fs)
    assert _doctor(state, cfg).stdout.count("FAIL  state dir") == 1
    log = tmp_path / "agent.log"
    proc = kit.replay(pcap, state, f"127.0.0.1:{port}", cfg, log=log)
    try:
        assert kit.wait_for(lambda: b"outbox_disk_full" in log.read_bytes(), 60), log.read_text()
        assert kit.wait_for(lambda: b"replay_done" in log.read_bytes(), 60), log.read_text()
        assert proc.poll() is None  # still running, holding alerts in memory
        filler.unlink()
        assert kit.wait_for(lambda: b"outbox_disk_back" in log.read_bytes(), 30), log.read_text()
        assert kit.outbox_depth(state) == want["ids"]  # every alert now on disk
        collector = start_collector(tmp_path / "collector", port=port)
        try:
            assert proc.wait(150) == 0, log.read_text()
            assert kit.stored(collector.db()) == want["ids"]
        finally:
            kit.stop(collector)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "Traceback" not in text and "cannot rollback" not in text
    lines = [json.loads(x) for x in text.splitlines() if x.startswith("{")]
    names = [x["event"] for x in lines]
    assert names.count("outbox_disk_full") == 1 and names.count("outbox_disk_back") == 1
    back = next(x for x in lines if x["event"] == "outbox_disk_back")
    assert back["written"] == want["ids"] and back["shed"] == 0
    r = _doctor(state, cfg)
    assert "OK    state dir" in r.stdout, r.stdout


def test_replay_delivers_from_memory_when_the_disk_never_frees(
    small_fs: Path, tmp_path: Path
) -> None:
    """The memory queue is sent and acknowledged like the disk: alerts reach the collector
    though the disk stays full; past the bound the lowest severity goes first, counted."""
    port = kit.free_port()
    collector = start_collector(tmp_path / "collector", port=port)
    state = small_fs / "agent"
    collector.issue_agent(state / "tls")
    cfg = kit.agent_config(
        tmp_path / "agent.toml",
        outbox={"memory_alerts": 10, "low_space_mb": 0.0, "low_space_percent": 0.0},
        collector={"drain_timeout_seconds": 120.0},
    )
    first = kit.replay(kit.empty_pcap(tmp_path / "e.pcap"), state, collector.address, cfg)
    assert first.wait(60) == 0
    kit.stop(collector)  # away during the attack: every alert queues in memory
    fill(small_fs)
    pcap = kit.scanners_pcap(tmp_path / "scan.pcap", 30, arp_claims=4)
    want = kit.expected_alerts(pcap, tmp_path / "jsonl-state", cfg)
    log = tmp_path / "agent.log"
    proc = kit.replay(pcap, state, f"127.0.0.1:{port}", cfg, log=log)
    try:
        assert kit.wait_for(lambda: b"replay_done" in log.read_bytes(), 60), log.read_text()
        collector = start_collector(tmp_path / "collector", port=port)
        try:
            assert proc.wait(150) == 0, log.read_text()
            stored = kit.stored(collector.db())
        finally:
            kit.stop(collector)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "Traceback" not in text and "outbox_memory_lost" not in text
    lines = [json.loads(x) for x in text.splitlines() if x.startswith("{")]
    names = [x["event"] for x in lines]
    assert names.count("outbox_disk_full") == 1 and names.count("outbox_memory_shedding") == 1
    assert "outbox_disk_back" not in names
    stopped = next(x for x in lines if x["event"] == "delivery_stopped")
    assert stored == 10 and stopped["acked"] >= 10  # the bound, all delivered from memory
    assert stopped["queued"] == 0
    # Every alert delivered or counted as shed (a shed alert's later revision may come
    # back and be shed again: at least, never less).
    assert stored + stopped["shed_disk_full"] >= want["ids"]
    assert want["high"] == 4
