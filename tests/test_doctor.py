"""`vigie-agent doctor`: each check alone on small fakes, then the whole command against a
running collector (all OK, exit 0) and against a wrong address (FAIL, exit 1)."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent import doctor
from tests.conftest import Collector, free_port, tool

NOW = dt.datetime.now(dt.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer: str, issuer_key, days: float) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=days))
        .sign(issuer_key, hashes.SHA256())
    )


def creds(tmp: Path, days: float = 90, other_ca: bool = False, other_key: bool = False):
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("ca", ca_key, "ca", ca_key, 3650)
    crt = _cert("agent", key, "ca", ca_key, days)
    if other_ca:
        k2 = ec.generate_private_key(ec.SECP256R1())
        ca = _cert("ca", k2, "ca", k2, 3650)
    if other_key:
        key = ec.generate_private_key(ec.SECP256R1())
    pem = serialization.Encoding.PEM
    (tmp / "ca.crt").write_bytes(ca.public_bytes(pem))
    (tmp / "agent.crt").write_bytes(crt.public_bytes(pem))
    (tmp / "agent.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return tmp / "ca.crt", tmp / "agent.crt", tmp / "agent.key"


def by_check(results: list[doctor.Result]) -> dict[str, str]:
    return {r.check: r.status for r in results}


def test_capabilities_from_capeff() -> None:
    status = "Name:\tx\nCapEff:\t0000000000003000\n"
    assert doctor.effective_caps(status) == 0x3000
    assert [r.status for r in doctor.check_caps(0x3000)] == ["OK", "OK"]
    raw_only = doctor.check_caps(1 << 13)
    assert [r.status for r in raw_only] == ["OK", "FAIL"]
    assert "AmbientCapabilities" in raw_only[1].remedy


def test_interface(tmp_path: Path) -> None:
    for name, flags, oper in (("up0", "0x1003", "up"), ("down0", "0x1002", "down")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "flags").write_text(flags + "\n")
        (tmp_path / name / "operstate").write_text(oper + "\n")
    assert doctor.check_interface("up0", tmp_path).status == "OK"
    down = doctor.check_interface("down0", tmp_path)
    assert down.status == "FAIL" and "ip link set down0 up" in down.remedy
    gone = doctor.check_interface("eth9", tmp_path)
    assert gone.status == "FAIL" and "up0" in gone.message
    assert doctor.check_interface(None).status == "WARN"


def test_bpf_filter() -> None:
    assert doctor.check_bpf("ip or ip6 or arp", None).status == "OK"
    bad = doctor.check_bpf("tcp port", None)
    assert bad.status == "FAIL" and "bpf_filter" in bad.remedy


def test_certificate_checks(tmp_path: Path) -> None:
    for sub in ("good", "soon", "ca", "key", "old"):
        (tmp_path / sub).mkdir()
    assert set(by_check(doctor.check_certificate(*creds(tmp_path / "good"))).values()) == {"OK"}
    soon = by_check(doctor.check_certificate(*creds(tmp_path / "soon", days=10)))
    assert soon["certificate"] == "WARN"
    assert (
        by_check(doctor.check_certificate(*creds(tmp_path / "ca", other_ca=True)))["ca"] == "FAIL"
    )
    assert (
        by_check(doctor.check_certificate(*creds(tmp_path / "key", other_key=True)))["key"]
        == "FAIL"
    )
    old = doctor.check_certificate(*creds(tmp_path / "old"), now=NOW + dt.timedelta(days=100))
    assert by_check(old)["certificate"] == "FAIL"
    missing = doctor.check_certificate(tmp_path / "x", tmp_path / "y", tmp_path / "z")
    assert missing[0].status == "FAIL" and "vigie-agent enroll" in missing[0].remedy


def _doctor(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("vigie-agent"), "doctor", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | {"VIGIE_INTERFACE": ""},
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="capabilities are only all there as root")
def test_doctor_all_ok_against_a_running_collector(collector: Collector, tmp_path: Path) -> None:
    state = tmp_path / "agent"
    collector.issue_agent(state / "tls")
    r = _doctor("--state-dir", str(state), "--collector", collector.address, "-i", "lo")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    checks = ("capabilities", "interface", "bpf filter", "config", "certificate", "key", "ca")
    checks += ("collector tcp", "collector tls", "collector grpc", "clock")
    for check in checks:
        assert any(
            line.split()[1:] and check in line and line.startswith("OK") for line in lines
        ), (
            check,
            r.stdout,
        )
    assert lines[-1].endswith("all OK")


def test_doctor_fails_with_remedies(collector: Collector, tmp_path: Path) -> None:
    state = tmp_path / "agent"
    collector.issue_agent(state / "tls")
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[capture]\nbpf_filter = "tcp port"\n')
    wrong = f"127.0.0.1:{free_port()}"
    r = _doctor("--config", str(cfg), "--state-dir", str(state), "--collector", wrong)
    assert r.returncode == 1, r.stdout
    assert "FAIL  bpf filter" in r.stdout and "FAIL  collector tcp" in r.stdout
    assert r.stdout.count("fix: ") >= 2


def test_state_dir_reports_free_space_and_warns_when_low(tmp_path: Path) -> None:
    ok = doctor.check_state_space(tmp_path, low_space_mb=0, low_space_percent=0)
    assert ok.status == "OK" and " free of " in ok.message
    low = doctor.check_state_space(tmp_path, low_space_mb=1e12)  # more than any disk here
    assert low.status == "WARN" and "(low)" in low.message and "df -h" in low.remedy
    assert list(tmp_path.iterdir()) == []  # the write probe cleaned up after itself
    cfg = {"state_dir": str(tmp_path), "outbox": {"low_space_mb": 0, "low_space_percent": 0}}
    assert doctor.check_state_dir(cfg).status == "OK"
    # FAIL on a really full filesystem: tests/test_full_disk.py (a filled tmpfs, as root).
