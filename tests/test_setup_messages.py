"""Setup mistakes get a message that names the cause and the fix (issue #26, item 6)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import tool


@pytest.fixture(scope="module")
def token(tmp_path_factory) -> str:
    state = tmp_path_factory.mktemp("collector")
    r = subprocess.run(
        [tool("vigie-collector"), "token", "create", "--state-dir", str(state),
         "--region", "11", "--ght", "GHT-A", "--finess", "750000001"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return r.stdout.strip()


@pytest.mark.parametrize(("cut", "part"), [(40, "secret"), (60, "CA fingerprint"), (90, "CA")])
def test_a_cut_token_is_called_cut_not_a_bad_fingerprint(
    token: str, cut: int, part: str, tmp_path: Path
) -> None:
    assert len(token) == 119
    r = subprocess.run(
        [tool("vigie-agent"), "enroll", "--collector", "127.0.0.1:9", "--token", token[:cut],
         "--state-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2
    assert "looks cut" in r.stderr and f"its {part}" in r.stderr and "whole line" in r.stderr
    assert "is not a SHA-256" not in r.stderr
    assert not (tmp_path / "tls").exists()


@pytest.mark.parametrize(
    ("section", "key"), [("anonymisation", "internal_ranges"), ("detectors.portscan", "allow")]
)
def test_a_range_with_host_bits_is_refused_with_the_range_meant(
    section: str, key: str, tmp_path: Path
) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[{section}]\n{key} = ["10.1.2.3/16"]\n')
    r = subprocess.run(
        [tool("vigie-agent"), "explain-anonymisation", "--config", str(cfg), "10.1.2.3"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2
    assert f"key '{section}.{key}'" in r.stderr and "'10.1.0.0/16'" in r.stderr
    cfg.write_text(f'[{section}]\n{key} = ["10.1.0.0/16", "10.9.9.9"]\n')
    ok = subprocess.run(
        [tool("vigie-agent"), "explain-anonymisation", "--config", str(cfg), "10.1.2.3"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr


def test_the_two_ports_mixed_up_are_named(tmp_path: Path) -> None:
    """The main port given to enroll, the enrollment port given as the collector: each
    says which port it probably is, instead of an interception or "Method not found!"."""
    from tests import _delivery_kit as kit
    from tests.conftest import DATA, free_port

    port = free_port()
    c = kit.start(tmp_path / "collector", port=port, enroll_port=port + 1)
    try:
        tok = subprocess.run(
            [tool("vigie-collector"), "token", "create", "--state-dir", str(c.state_dir),
             "--region", "11", "--ght", "GHT-A", "--finess", "750000001"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        state = tmp_path / "agent"
        r = subprocess.run(
            [tool("vigie-agent"), "enroll", "--collector", c.address, "--token", tok,
             "--state-dir", str(state)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 2 and "probably the collector's main port" in r.stderr
        assert f"--collector 127.0.0.1:{port + 1}" in r.stderr and "interception" not in r.stderr
        ok = subprocess.run(
            [tool("vigie-agent"), "enroll", "--collector", f"127.0.0.1:{port + 1}", "--token",
             tok, "--state-dir", str(state)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert ok.returncode == 0, ok.stderr
        cfg = kit.agent_config(tmp_path / "agent.toml", collector={"drain_timeout_seconds": 3})
        streamed = subprocess.run(
            [tool("vigie-agent"), "replay", str(DATA / "nmap_syn_scan_1000ports.pcap"),
             "--state-dir", str(state), "--output", "collector", "--collector",
             f"127.0.0.1:{port + 1}", "--config", str(cfg)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert "not the collector's main port" in streamed.stdout + streamed.stderr
    finally:
        kit.stop(c)


def test_missing_libpcap_is_not_called_a_bad_filter(monkeypatch) -> None:
    import ctypes

    from agent import doctor
    from agent.capture import bpf

    def no_such_library(name: str, *a: object, **kw: object):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(bpf, "_lib", None)
    monkeypatch.setattr(ctypes, "CDLL", no_such_library)
    r = doctor.check_bpf("tcp port 22", None)
    assert r.status == "FAIL" and "libpcap is not installed" in r.message
    assert "does not compile" not in r.message and "libpcap0.8" in r.remedy


def test_doctor_with_a_collector_address_without_port_says_so(tmp_path: Path) -> None:
    from tests.conftest import start_collector

    c = start_collector(tmp_path / "collector")
    try:
        state = tmp_path / "agent"
        c.issue_agent(state / "tls")
        r = subprocess.run(
            [tool("vigie-agent"), "doctor", "--state-dir", str(state), "--collector", "localhost"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert "Traceback" not in r.stderr and r.returncode == 1
        assert "must be HOST:PORT" in r.stdout and "main port" in r.stdout
    finally:
        c.proc.terminate()
        c.proc.wait(10)
