"""Two agents of two GHTs see the same external address: one national incident, pushed to
WatchIncidents, the JSON lines sink and STIX; the analysts' commands work on it."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import grpc
import pytest
import stix2

from tests.conftest import DATA, Collector, jsonl, start_collector, tool
from vigie.v1 import analyst_pb2, analyst_pb2_grpc


@pytest.fixture
def national(tmp_path: Path):
    cfg = tmp_path / "collector.toml"
    cfg.write_text(
        f'[sinks.jsonl]\nenabled = true\npath = "{tmp_path / "incidents.jsonl"}"\n'
        f'[sinks.stix]\nenabled = true\ndirectory = "{tmp_path / "stix"}"\n'
    )
    (tmp_path / "stix").mkdir()
    c = start_collector(tmp_path / "collector", config=cfg)
    yield c
    c.proc.terminate()
    c.proc.wait(10)


def _replay(c: Collector, state: Path) -> None:
    r = subprocess.run(
        [
            tool("vigie-agent"),
            "replay",
            str(DATA / "nmap_syn_scan_1000ports.pcap"),
            "--state-dir",
            str(state),
            "--output",
            "collector",
            "--collector",
            c.address,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def _analyst(c: Collector, creds: Path) -> grpc.Channel:
    return grpc.secure_channel(
        c.address,
        grpc.ssl_channel_credentials(
            (creds / "ca.crt").read_bytes(),
            (creds / "analyst.key").read_bytes(),
            (creds / "analyst.crt").read_bytes(),
        ),
    )


def test_same_external_address_in_two_ghts_makes_one_incident(
    national: Collector, tmp_path: Path
) -> None:
    c = national
    c.issue_agent(tmp_path / "a" / "tls", finess="111111111", ght="GHT-NORD", region="32")
    c.issue_agent(tmp_path / "b" / "tls", finess="222222222", ght="GHT-SUD", region="93")
    creds = c.issue_analyst(tmp_path / "n")
    with _analyst(c, creds) as ch:
        stub = analyst_pb2_grpc.AnalystStub(ch)
        watch = stub.WatchIncidents(analyst_pb2.WatchIncidentsRequest(), timeout=60)
        _replay(c, tmp_path / "a")
        _replay(c, tmp_path / "b")
        event = next(iter(watch))
        watch.cancel()
        inc = event.incident
        assert inc.rule == "multi_site_indicator"
        assert inc.subject == "ip:64.13.134.52"
        assert {s.ght for s in inc.sites} == {"GHT-NORD", "GHT-SUD"}
        listed = stub.ListIncidents(analyst_pb2.ListIncidentsRequest(), timeout=10).incidents
        assert [i.key for i in listed] == [inc.key]  # one incident, not one per agent

        # A consumer that reconnects with its cursor misses nothing and repeats nothing.
        resumed = stub.WatchIncidents(
            analyst_pb2.WatchIncidentsRequest(cursor=0, from_start=True), timeout=5
        )
        assert next(iter(resumed)).incident.key == inc.key
        resumed.cancel()

        bundle = stub.ExportStix(analyst_pb2.ExportStixRequest(), timeout=10).bundle_json
    parsed = stix2.parse(bundle, allow_custom=True)
    types = {o.type for o in parsed.objects}
    assert {"identity", "indicator", "sighting", "incident"} <= types
    assert any("64.13.134.52" in o.pattern for o in parsed.objects if o.type == "indicator")

    deadline = time.monotonic() + 15
    sink = tmp_path / "incidents.jsonl"
    stix_dir = tmp_path / "stix"
    while time.monotonic() < deadline and not (
        sink.exists() and sink.read_text() and list(stix_dir.glob("*.json"))
    ):
        time.sleep(0.2)
    lines = jsonl(sink.read_text())
    assert lines and lines[-1]["key"] == inc.key and lines[-1]["rule"] == "multi_site_indicator"
    files = list(stix_dir.glob("*.json"))
    assert files
    stix2.parse(files[0].read_text(), allow_custom=True)

    # The analysts' command line on the same incident.
    env = c.analyst_env(creds)

    def vigie(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [tool("vigie"), *args], env=env, capture_output=True, text=True, timeout=60
        )

    table = vigie("incidents")
    assert table.returncode == 0 and "multi_site_indicator" in table.stdout
    assert inc.key in table.stdout
    assert all(len(line) <= 80 for line in table.stdout.splitlines())
    detail = vigie("incident", inc.key, "--json")
    assert detail.returncode == 0, detail.stderr
    d = json.loads(detail.stdout)
    assert d["status"] == "open" and len(d["alerts"]) == 2
    assert vigie("ack", inc.key, "--comment", "blocked upstream").returncode == 0
    after = json.loads(vigie("incident", inc.key, "--json").stdout)
    assert (after["status"], after["status_comment"]) == ("acknowledged", "blocked upstream")
    assert after["status_by"] == "analyst"
    assert vigie("incident", "no-such-key").returncode == 5
    stats = vigie("stats", "--by", "ght", "--json")
    assert {json.loads(x)["ght"] for x in stats.stdout.splitlines()} == {"GHT-NORD", "GHT-SUD"}
    assert vigie("close", inc.key, "-m", "done").returncode == 0

    # Every analyst action is in the audit log, with who and what.
    import sqlite3

    with sqlite3.connect(c.db()) as db:
        actions = [r[0] for r in db.execute("SELECT action FROM audit WHERE who = 'analyst'")]
    assert {
        "WatchIncidents",
        "ListIncidents",
        "ExportStix",
        "UpdateIncident",
        "GetIncident",
        "CountAlerts",
    } <= set(actions)
