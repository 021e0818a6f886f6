"""A flood of spoofed sources into a live agent, in a private pair of network namespaces
(veth, addresses only inside them): the flow table, the aggregator, the detector windows
and the outbox stay within their bounds, evictions are counted, and a SYN scan run
during the flood is still detected. Needs root, `ip netns`, hping3 and nmap."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from agent.anonymise.policy import Anonymiser
from tests.conftest import tool
from vigie.v1 import alert_pb2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from netns import NetnsPair, available  # noqa: E402

pytestmark = pytest.mark.root

MAX_FLOWS = 2000
MAX_ALERTS = 50
FLOOD_SECONDS = 14
LISTENER = (
    "import socket, time\n"
    "s = socket.socket()\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', 8080)); s.listen(4096); time.sleep(120)\n"
)


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, raw capture)"
    for exe in ("hping3", "nmap", "timeout"):
        if shutil.which(exe) is None:
            return f"{exe} is not installed (./dev test installs it)"
    return available()


def _wait_for(path: Path, text: str, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in {path}:\n{path.read_text(errors='replace')[-3000:]}")


def test_spoofed_source_flood_stays_bounded_and_scan_is_seen(tmp_path: Path) -> None:
    if reason := _skip_reason():
        pytest.skip(reason)
    state = tmp_path / "state"
    # Credentials so that `--output collector` starts; the collector address answers
    # nothing inside the namespace, so every alert stays in the (bounded) outbox.
    subprocess.run([tool("vigie-collector"), "pki", "init", "--state-dir", str(tmp_path / "ca")],
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run([tool("vigie-collector"), "pki", "issue-agent", "--state-dir",
                    str(tmp_path / "ca"), "--finess", "999000001", "--ght", "GHT-T",
                    "--region", "11", "--out", str(state / "tls")],
                   check=True, capture_output=True)  # fmt: skip
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'state_dir = "{state}"\n'
        f"[flows]\nmax_flows = {MAX_FLOWS}\n"
        f"[outbox]\nmax_alerts = {MAX_ALERTS}\n"
        "[host]\nenabled = false\n"
        '[metrics]\nlisten = ""\n'
        '[collector]\naddress = "127.0.0.1:9"\n'
    )
    log = tmp_path / "agent.log"
    with NetnsPair("fl") as ns, open(log, "wb") as out:
        listener = ns.popen(ns.a, [sys.executable, "-c", LISTENER])
        agent = ns.popen(
            ns.a,
            [tool("vigie-agent"), "run", "--interface", ns.if_a, "--output", "collector",
             "--config", str(cfg), "--state-dir", str(state)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        flood = scan = None
        try:
            _wait_for(log, "capture_started", 30)
            proc = psutil.Process(agent.pid)
            rss = [proc.memory_info().rss]
            flood = ns.popen(
                ns.b,
                ["timeout", str(FLOOD_SECONDS), "hping3", "--rand-source", "-S", "-p", "8080",
                 "--faster", "-q", ns.addr_a],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(3)
            scan = ns.popen(
                ns.b,
                ["nmap", "-sS", "-n", "-Pn", "-T4", "-p", "1-1000", "--max-retries", "1",
                 ns.addr_a],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            while flood.poll() is None:
                rss.append(proc.memory_info().rss)
                time.sleep(0.5)
            scan.wait(60)
            time.sleep(4)  # the scan's unanswered attempts time out, the detector decides
            rss.append(proc.memory_info().rss)
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(60) == 0
        finally:
            for p in (flood, scan, agent, listener):
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait(10)
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    stats = next(e for e in events if e.get("event") == "pipeline_stats")
    stopped = next(e for e in events if e.get("event") == "capture_stopped")
    with sqlite3.connect(state / "outbox.db") as db:
        rows = [alert_pb2.Alert.FromString(r[0]) for r in db.execute("SELECT payload FROM outbox")]
        shed = db.execute("SELECT value FROM meta WHERE name = 'shed'").fetchone()[0]
    anon = Anonymiser((state / "anon.key").read_bytes())
    scanner = anon.pseudonym(alert_pb2.KIND_IP, ns.addr_b)
    scans = [
        a for a in rows if a.detector == "net.portscan"
        and any(e.role == alert_pb2.ROLE_SOURCE and e.value == scanner for e in a.entities)
    ]  # fmt: skip
    report = {
        "packets": stopped["packets"],
        "kernel_dropped": stopped["kernel_dropped"],
        "flows_max": stats["flows_peak"],
        "flows_created": stats["flows_created"],
        "flows_evicted": stats["flows_evicted"],
        "aggregator_open_max": stats["aggregator_open_peak"],
        "aggregator_dropped": stats["aggregator_dropped"],
        "detector_keys": stats["detector_keys"],
        "detector_keys_forgotten": stats["detector_keys_forgotten"],
        "shed_packets": stats["shed_packets"],
        "rss_max_mb": round(max(rss) / 2**20, 1),
        "rss_start_mb": round(rss[0] / 2**20, 1),
        "outbox_rows": len(rows),
        "outbox_shed": shed,
        "alerts": sorted({a.detector for a in rows}),
        "scan_detected": bool(scans),
    }
    print("flood:", json.dumps(report))
    assert stopped["packets"] > 20_000, report  # it was a flood
    assert stats["flows_peak"] <= MAX_FLOWS, report
    assert stats["flows_evicted"] > 0, report  # and eviction was counted
    assert len(rows) <= MAX_ALERTS, report
    # Detector windows follow the flow bound too (each holds at most MAX_FLOWS keys; the
    # flood fills the few keyed by source), so memory stays under the self-guard budget.
    assert report["detector_keys"] <= 5 * MAX_FLOWS, report
    assert max(rss) < 200 * 2**20, report
    assert scans, report  # the scanner's pseudonym, in a net.portscan alert
