"""vigie-agent as a user runs it: replay to JSON lines, errors without tracebacks."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import DATA, jsonl, tool

KEYS = {
    "id",
    "detector",
    "severity",
    "technique",
    "summary",
    "entities",
    "occurrences",
    "first_seen",
    "last_seen",
}


def replay(pcap: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("vigie-agent"), "replay", str(pcap), "--state-dir", str(tmp_path / "state"), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_replay_prints_anonymised_alerts_as_json_lines(tmp_path: Path) -> None:
    r = replay(DATA / "nmap_syn_scan_1000ports.pcap", tmp_path)
    assert r.returncode == 0, r.stderr
    alerts = jsonl(r.stdout)
    assert alerts and all(set(a) >= KEYS for a in alerts)
    last = alerts[-1]
    assert last["detector"] == "net.portscan" and last["technique"] == "T1046"
    assert last["metrics"]["distinct_ports"] >= 990
    ents = {e["role"]: e for e in last["entities"]}
    assert ents["source"]["pseudonymised"] and ents["source"]["value"].startswith("p:")
    assert ents["target"] == {
        "role": "target",
        "kind": "ip",
        "value": "64.13.134.52",
        "pseudonymised": False,
    }
    assert "172.16.0.8" not in r.stdout and "172.16.0.8" not in r.stderr
    # logs went to stderr as JSON lines with an event name each
    events = [e["event"] for e in jsonl(r.stderr)]
    assert "replay_done" in events


def test_runs_with_no_config_file_at_all(tmp_path: Path) -> None:
    r = replay(DATA / "nmap_scan_types_connect_syn_fin_null_xmas.pcapng", tmp_path)
    assert r.returncode == 0, r.stderr
    (alert,) = jsonl(r.stdout)
    assert alert["detector"] == "net.portscan"
    assert alert["metrics"]["stealth_probes"] == 3  # FIN, NULL and Xmas probes
    for e in alert["entities"]:
        assert e["pseudonymised"], e  # both ends are internal (192.168.1.x)
    assert "192.168.1." not in r.stdout


def test_missing_capture_is_a_clear_error(tmp_path: Path) -> None:
    r = replay(tmp_path / "absent.pcap", tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == f"vigie-agent: capture file not found: {tmp_path / 'absent.pcap'}"


def test_corrupt_capture_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"this is not a capture at all, just text\n" * 4)
    r = replay(bad, tmp_path)
    assert r.returncode == 2
    assert "not a pcap or pcapng file" in r.stderr and "Traceback" not in r.stderr


def test_truncated_capture_keeps_what_it_could_read(tmp_path: Path) -> None:
    data = (DATA / "nmap_syn_scan_1000ports.pcap").read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) * 2 // 3 + 7])  # ends inside a record
    r = replay(cut, tmp_path, "--stats")
    assert r.returncode == 0, r.stderr
    assert any(a["detector"] == "net.portscan" for a in jsonl(r.stdout))
    assert "capture_file_damaged" in r.stderr and "Traceback" not in r.stderr
