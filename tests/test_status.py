"""`vigie-agent status`: read from the state directory alone, without writing to it."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent import statelock, status
from agent.cli import main
from agent.outbox.store import Outbox
from tests.conftest import tool
from vigie.v1 import alert_pb2

SECRET_VALUE = "p:0123456789abcdef0123"  # an entity value: must never appear in the status


def _alert(i: int, detector: str, sev: int) -> alert_pb2.Alert:
    a = alert_pb2.Alert(
        id=f"id{i}",
        revision=1,
        severity=sev,
        detector=detector,
        summary="never shown",
        entities=[
            alert_pb2.Entity(
                role=alert_pb2.ROLE_SOURCE,
                kind=alert_pb2.KIND_IP,
                value=SECRET_VALUE,
                pseudonymised=True,
            )
        ],
    )
    a.observed_at.FromDatetime(dt.datetime(2026, 1, 2, 3, 4, 5 + i))
    return a


def _cert(path: Path, days: int = 90) -> None:
    """A certificate carrying the identity URI the collector's CA writes."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vigie-agent")])
    now = dt.datetime.now(dt.UTC)
    uri = "vigie:agent/agt-0123456789abcdef?finess=750000001&ght=GHT-IDF-75&region=11"
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), False)
        .sign(key, hashes.SHA256())
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@pytest.fixture
def state(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    _cert(d / "tls" / "agent.crt")
    box = Outbox(d / "outbox.db")
    box.put(_alert(1, "net.portscan", alert_pb2.SEVERITY_MEDIUM))
    box.put(_alert(2, "net.arp_spoof", alert_pb2.SEVERITY_HIGH))
    box.close()
    return d


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = main(["status", *argv])
    return rc, capsys.readouterr().out


def test_json_reports_identity_outbox_and_last_alert(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out = _run(capsys, "--state-dir", str(state), "--json")
    assert rc == 0
    s = json.loads(out)
    assert s["identity"]["agent_id"] == "agt-0123456789abcdef"
    assert (s["identity"]["finess"], s["identity"]["ght"], s["identity"]["region"]) == (
        "750000001",
        "GHT-IDF-75",
        "11",
    )
    assert 88 < s["identity"]["days_left"] <= 90
    assert s["outbox"]["depth"] == 2
    assert s["outbox"]["oldest_age_seconds"] >= 0
    assert s["outbox"]["shed"] == {"max_alerts": 0, "disk_full": 0}
    assert s["outbox"]["last_queued"] == {
        "observed_at": "2026-01-02T03:04:07+00:00",
        "detector": "net.arp_spoof",
        "severity": "high",
    }
    assert s["lock"] == {"held": False}
    assert s["connection"]["known"] is False


def test_text_names_everything_and_nothing_personal(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, text = _run(capsys, "--state-dir", str(state))
    assert rc == 0
    assert "agt-0123456789abcdef (FINESS 750000001, GHT GHT-IDF-75, region 11)" in text
    assert "outbox:      2 alert(s) waiting" in text
    assert "net.arp_spoof high" in text
    assert "systemctl status vigie-agent" in text
    _, js = _run(capsys, "--state-dir", str(state), "--json")
    for out in (text, js):
        assert SECRET_VALUE not in out
        assert "never shown" not in out


def test_reads_without_writing(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in state.iterdir()}
    _run(capsys, "--state-dir", str(state))
    after = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in state.iterdir()}
    assert after == before  # no agent.lock made, no WAL checkpoint, nothing touched


def test_works_beside_a_running_agent(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fd = statelock.hold(state, "run")
    box = Outbox(state / "outbox.db")  # the agent's open outbox, in WAL mode
    try:
        box.put(_alert(3, "net.beacon", alert_pb2.SEVERITY_LOW))
        rc, out = _run(capsys, "--state-dir", str(state), "--json")
        s = json.loads(out)
        assert rc == 0
        assert s["lock"] == {"held": True, "by": f"pid {os.getpid()}, run"}
        assert s["outbox"]["depth"] == 3
        assert s["outbox"]["last_queued"]["detector"] == "net.beacon"
        # status let the lock go at once: the agent's own lock is still the only one.
        with pytest.raises(statelock.StateLocked):
            statelock.hold(state, "replay")
    finally:
        box.close()
        os.close(fd)
    assert status.holder(state) == {"held": False}


def test_not_enrolled_and_no_outbox(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "fresh"
    d.mkdir()
    rc, text = _run(capsys, "--state-dir", str(d))
    assert rc == 0
    assert "not enrolled" in text
    assert "no outbox yet" in text
    assert not (d / "outbox.db").exists()


def test_missing_state_dir_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, text = _run(capsys, "--state-dir", str(tmp_path / "nowhere"))
    assert rc == 1
    assert "(missing)" in text
    assert not (tmp_path / "nowhere").exists()


def test_unreadable_certificate_is_said(tmp_path: Path) -> None:
    crt = tmp_path / "agent.crt"
    crt.write_text("not a certificate")
    ident = status.identity(crt)
    assert ident["enrolled"] is False
    assert "error" in ident


@pytest.mark.skipif(os.geteuid() != 0, reason="vigie-agent run captures: needs root")
def test_status_shows_the_running_services_connection(tmp_path: Path) -> None:
    """What only the running service knows (its connection, its acknowledgements) reaches
    `vigie-agent status` through state_dir/status.json, and only while it runs."""
    from tests._delivery_kit import stop
    from tests.conftest import start_collector

    c = start_collector(tmp_path / "collector")
    state = tmp_path / "agent"
    c.issue_agent(state / "tls")
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[capture]\nbpf_filter = "tcp port 9"\n[metrics]\nlisten = ""\n')
    log = tmp_path / "agent.log"
    agent = subprocess.Popen(
        [tool("vigie-agent"), "run", "-i", "lo", "--output", "collector", "--collector",
         c.address, "--state-dir", str(state), "--config", str(cfg)],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
    )  # fmt: skip

    def status() -> dict:
        r = subprocess.run(
            [tool("vigie-agent"), "status", "--state-dir", str(state), "--json"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        return json.loads(r.stdout)

    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            s = status()
            if s["connection"].get("collector", {}).get("connected"):
                break
            time.sleep(0.5)
        conn = s["connection"]
        assert conn["known"] and conn["pid"] == agent.pid, (s, log.read_text()[-2000:])
        assert conn["collector"]["address"] == c.address and conn["collector"]["connected"]
        text = subprocess.run(
            [tool("vigie-agent"), "status", "--state-dir", str(state)],
            capture_output=True, text=True, timeout=30,
        ).stdout  # fmt: skip
        assert f"connection:  connected to {c.address}" in text
    finally:
        agent.terminate()
        agent.wait(30)
        stop(c)
    assert not status()["connection"]["known"]  # stopped: no stale "connected"
