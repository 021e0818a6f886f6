"""Retro-hunts (agent/hunt/retro.py): an indicator published after the traffic, with a
look-back, raises a net.ioc alert flagged retro with the traffic's own times; without a
look-back nothing retro; a search killed with SIGKILL resumes and completes once."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from agent import settings
from agent.hunt.journal import OPTIONS, Journal, segments
from agent.hunt.retro import RetroHunter
from agent.pipeline import Pipeline
from common import config
from tests.detect_support import ANON, entity, pseudonym
from tests.test_hunt_journal import replay
from vigie.v1 import alert_pb2

C2 = "91.254.215.167"  # tls_clienthello_to_malicious_c2_ip.pcap: 192.168.46.2 -> C2:443
CAPTURE = "tls_clienthello_to_malicious_c2_ip.pcap"
DAY = 86400.0


def _agent(state: Path) -> tuple[dict, Pipeline, list]:
    cfg = config.validate({"state_dir": str(state)}, settings.SCHEMA, "test")
    out: list = []
    pipe = Pipeline(cfg, ANON, out.append, time.time)
    return cfg, pipe, out


def _day_d(state: Path, days_ago: float) -> float:
    """Replay the C2 capture as if it happened `days_ago`; returns the shift applied."""
    cfg = config.validate({"state_dir": str(state)}, settings.SCHEMA, "test")
    from agent.capture.pcapfile import read_capture
    from tests.detect_support import data

    first = next(iter(read_capture(str(data(CAPTURE)))))[0]
    shift = time.time() - days_ago * DAY - first
    replay(cfg, CAPTURE, shift=shift)
    return shift


def _hunt(state: Path, pipe: Pipeline, intel: dict, timeout: float = 30.0) -> RetroHunter:
    """Run the pending retro requests as the agent does: the hunter in its thread, the
    pipeline ticking in this one (it takes the findings at its tick)."""
    hunter = RetroHunter(state / "journal", lambda: intel, lambda f, d: pipe.retro.put((f, d)))
    t = threading.Thread(target=hunter.run_pending)
    t.start()
    deadline = time.monotonic() + timeout
    while t.is_alive() and time.monotonic() < deadline:
        pipe.tick(time.time())
        time.sleep(0.02)
    assert not t.is_alive(), "the retro-hunt did not finish"
    return hunter


def test_indicator_published_later_with_a_look_back_raises_a_retro_alert(tmp_path):
    _day_d(tmp_path, days_ago=9)
    # Later: a bundle with the C2 address, asking for 14 days back.
    intel = {"version": 5, "ips": [C2],
             "retro": [{"version": 5, "since": time.time() - 14 * DAY, "ips": [C2]}]}  # fmt: skip
    _cfg, pipe, out = _agent(tmp_path)
    hunter = _hunt(tmp_path, pipe, intel)
    retro = [a for a in out if a.metrics.get("retro")]
    assert len(retro) == 1, out
    a = retro[0]
    assert a.detector == "net.ioc" and a.severity == alert_pb2.SEVERITY_HIGH
    assert "retro-hunt" in a.summary
    # The time the traffic happened, nine days ago, not the time of the search.
    first = a.first_seen.seconds + a.first_seen.nanos / 1e9
    assert time.time() - 9 * DAY - 60 < first < time.time() - 9 * DAY + 60
    assert a.observed_at.seconds >= time.time() - 60
    assert a.occurrences >= 1 and a.metrics["intel_version"] == 5
    # Anonymised like every alert: the internal host pseudonymised, the indicator clear.
    assert entity(a, alert_pb2.ROLE_SOURCE) == [pseudonym("192.168.46.2")]
    assert entity(a, alert_pb2.ROLE_INDICATOR) == [C2]
    assert "192.168.46.2" not in str(a)
    assert hunter.status() == [(5, "done", 1)]
    # Done once: the next bundle with the same request does not search again.
    again = RetroHunter(tmp_path / "journal", lambda: intel, lambda f, d: 1 / 0)
    assert again.run_pending() == 0 and again.segments_searched == 0


def test_same_indicator_without_a_look_back_raises_nothing_retro(tmp_path):
    _day_d(tmp_path, days_ago=3)
    _cfg, pipe, out = _agent(tmp_path)
    hunter = _hunt(tmp_path, pipe, {"version": 6, "ips": [C2]})
    assert [a for a in out if a.metrics.get("retro")] == []
    assert hunter.status() == [] and hunter.segments_searched == 0
    # A look-back that does not reach day D finds nothing either.
    short = {"version": 7, "ips": [C2], "retro": [{"version": 7, "since": time.time() - DAY,
                                                   "ips": [C2]}]}  # fmt: skip
    hunter = _hunt(tmp_path, pipe, short)
    assert [a for a in out if a.metrics.get("retro")] == []
    assert hunter.status() == [(7, "done", 0)]


def test_domain_and_ja3_published_later_match_too(tmp_path):
    from tests.test_hunt_journal import JA3

    state = tmp_path
    cfg = config.validate({"state_dir": str(state), "journal": {"max_age_days": 1e5}},
                          settings.SCHEMA, "test")  # fmt: skip
    replay(cfg, "tls12_chrome34_google_de.pcap", "dns_mixed_ad_srv_queries.pcap")
    req = {"version": 2, "since": 0.0, "domains": ["netbsd.org", "google.de"], "ja3": [JA3]}
    _, pipe, out = _agent(state)
    _hunt(state, pipe, {"version": 2, "retro": [req]})
    got = {
        (e.value, a.occurrences)
        for a in out
        for e in a.entities
        if e.role == alert_pb2.ROLE_INDICATOR
    }
    assert ("netbsd.org", 3) in got  # three exchanges for www.netbsd.org, one alert
    assert ("google.de", 1) in got and (JA3, 1) in got
    kinds = {e.kind for a in out for e in a.entities if e.role == alert_pb2.ROLE_INDICATOR}
    assert kinds == {alert_pb2.KIND_DOMAIN, alert_pb2.KIND_TLS_SNI, alert_pb2.KIND_JA3}


def test_an_address_published_later_finds_the_clients_that_resolved_to_it(tmp_path):
    """No connection to it in the journal: the DNS answers that gave it out."""
    cfg = config.validate({"state_dir": str(tmp_path), "journal": {"max_age_days": 1e5}},
                          settings.SCHEMA, "test")  # fmt: skip
    replay(cfg, "dns_mixed_ad_srv_queries.pcap")
    req = {"version": 3, "since": 0.0, "ips": ["204.152.190.12"], "domains": ["l.google.com"]}
    _, pipe, out = _agent(tmp_path)
    _hunt(tmp_path, pipe, {"version": 3, "retro": [req]})
    answer = [a for a in out if "DNS answer resolving" in a.summary]
    assert len(answer) == 1 and answer[0].occurrences == 1  # the A query (the others, AAAA)
    a = answer[0]
    assert entity(a, alert_pb2.ROLE_INDICATOR) == ["204.152.190.12"]
    # Anonymised as every alert: the client that asked and its resolver pseudonymised.
    assert entity(a, alert_pb2.ROLE_SOURCE) == [pseudonym("192.168.170.8")]
    assert entity(a, alert_pb2.ROLE_TARGET) == [pseudonym("192.168.170.20")]
    assert "192.168.170" not in str(a)
    cname = [a for a in out if "(CNAME)" in a.summary]
    assert len(cname) == 1
    assert entity(cname[0], alert_pb2.ROLE_INDICATOR, alert_pb2.KIND_DOMAIN) == ["l.google.com"]
    assert "192.168.170" not in str(cname[0])


CHILD = """
import json, sys, time
from pathlib import Path
from agent.hunt.retro import RetroHunter
d, out, duty = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
intel = json.loads((d / "intel.json").read_text())
def submit(findings, done):
    with open(out, "a") as f:
        for x in findings:
            f.write(json.dumps([x.id, x.first_seen, x.last_seen, x.occurrences]) + "\\n")
    done()
h = RetroHunter(d, lambda: intel, submit, duty=duty)
h.run_pending()
print(h.segments_searched, flush=True)
"""


def _flow(ts: float, dst: str) -> SimpleNamespace:
    return SimpleNamespace(
        src=ipaddress.ip_address("10.9.9.9").packed, dst=ipaddress.ip_address(dst).packed,
        sport=50000, dport=443, proto=6, state=5, first=ts, last=ts + 1, bytes_o=500,
        bytes_r=900, pkts_o=5, pkts_r=4,
    )  # fmt: skip


def test_a_search_killed_mid_way_resumes_and_completes_once(tmp_path):
    opts = {k: o.default for k, o in OPTIONS.items()} | {"segment_minutes": 1.0}
    j = Journal(tmp_path, opts)
    t0 = (time.time() // 60 - 300) * 60
    for m in range(240):  # 240 one-minute segments, each with one flow to the C2
        for s in range(0, 60, 10):
            j.flow_end(_flow(t0 + 60 * m + s, C2 if s == 0 else "192.0.2.10"))
    j.close(time.time())
    total = len(segments(tmp_path))
    assert total == 240
    req = {"version": 9, "since": t0 - 10, "ips": [C2]}
    (tmp_path / "intel.json").write_text(json.dumps({"version": 9, "retro": [req]}))
    out = tmp_path / "submitted.jsonl"
    cmd = [sys.executable, "-c", CHILD, str(tmp_path), str(out)]
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # A slow search (1 % duty), killed once it has saved some progress.
    child = subprocess.Popen([*cmd, "0.01"], env=env, stdout=subprocess.PIPE)
    deadline = time.monotonic() + 60
    done = 0
    while time.monotonic() < deadline and done < 5:
        time.sleep(0.05)
        with contextlib.suppress(OSError, ValueError, KeyError):
            done = len(json.loads((tmp_path / "retro.json").read_text())["jobs"]["9"]["searched"])
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert 5 <= done < total and not out.exists()
    # Restarted: it searches only what was left and hands the matches over once.
    run = subprocess.run([*cmd, "1.0"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    searched_now = int(run.stdout.split()[-1])
    assert total - done - 1 <= searched_now <= total - done
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 1
    _, first, last, count = rows[0]
    assert count == 240  # every minute's flow, those found before the kill included
    assert first == t0 and last == t0 + 60 * 239 + 1
    # And once only: a third start finds the request done.
    run = subprocess.run([*cmd, "1.0"], env=env, capture_output=True, text=True, timeout=60)
    assert run.stdout.split()[-1] == "0" and len(out.read_text().splitlines()) == 1
