"""The systemd units: `systemd-analyze verify` clean, `systemd-analyze security` exposure at
most 2.0 each, sysusers/tmpfiles snippets that apply, and the W^X promise
(MemoryDenyWriteExecute=yes) checked with the kernel's own PR_SET_MDWE on the real
programs: a collector and an agent streaming to it over gRPC + mutual TLS."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DATA, ROOT, start_collector

UNITS = ("vigie-agent.service", "vigie-collector.service")
SYSTEMD = ROOT / "systemd"
BIN = Path(sys.executable).parent
MAX_EXPOSURE = 2.0


def analyze() -> str:
    path = shutil.which("systemd-analyze")
    if not path:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return path


def staged(tmp_path: Path, unit: str) -> Path:
    """The unit with ExecStart pointing at this venv's entry points (verify checks that
    the binary exists; /opt/vigie/bin is where the README installs them)."""
    text = (SYSTEMD / unit).read_text()
    assert "/opt/vigie/bin/" in text
    out = tmp_path / unit
    out.write_text(text.replace("/opt/vigie/bin/", f"{BIN}/"))
    return out


@pytest.mark.parametrize("unit", UNITS)
def test_unit_verifies_without_warning(unit: str, tmp_path: Path) -> None:
    tool = analyze()
    path = staged(tmp_path, unit)
    r = subprocess.run(
        [tool, "verify", "--man=no", str(path)], capture_output=True, text=True, cwd=tmp_path
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert (r.stdout + r.stderr).strip() == "", r.stdout + r.stderr


def exposure(tool: str, path: Path) -> float:
    r = subprocess.run(
        [tool, "security", "--offline=yes", str(path)],
        capture_output=True,
        text=True,
        cwd=path.parent,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m, r.stdout + r.stderr
    return float(m.group(1))


@pytest.mark.parametrize("unit", UNITS)
def test_unit_security_exposure_at_most_2(unit: str, tmp_path: Path) -> None:
    score = exposure(analyze(), staged(tmp_path, unit))
    assert score <= MAX_EXPOSURE, f"{unit}: exposure {score}"


def test_agent_unit_grants_only_capture_capabilities() -> None:
    text = (SYSTEMD / "vigie-agent.service").read_text()
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#"
    )
    assert settings["Type"] == "notify"
    assert settings["CapabilityBoundingSet"].split() == ["CAP_NET_RAW", "CAP_NET_ADMIN"]
    assert settings["AmbientCapabilities"].split() == ["CAP_NET_RAW", "CAP_NET_ADMIN"]
    assert set(settings["RestrictAddressFamilies"].split()) == {
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
        "AF_PACKET",
        "AF_NETLINK",
    }
    for key in ("WatchdogSec", "CPUQuota", "MemoryMax", "StartLimitBurst", "TimeoutStopSec"):
        assert key in settings, key
    assert settings["User"] != "root" and settings["Restart"] == "on-failure"
    collector = (SYSTEMD / "vigie-collector.service").read_text()
    assert "\nCapabilityBoundingSet=\n" in collector and "Type=notify" in collector


def test_sysusers_and_tmpfiles_snippets_apply(tmp_path: Path) -> None:
    sysusers, tmpfiles = shutil.which("systemd-sysusers"), shutil.which("systemd-tmpfiles")
    if not sysusers or not tmpfiles:
        pytest.skip("systemd-sysusers/systemd-tmpfiles are not installed")
    if os.geteuid() != 0:
        pytest.skip("systemd-tmpfiles --root needs root to chown")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    r = subprocess.run(
        [sysusers, f"--root={root}", str(SYSTEMD / "vigie.sysusers.conf")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    passwd = (root / "etc" / "passwd").read_text()
    assert "vigie-agent:" in passwd and "vigie-collector:" in passwd
    r = subprocess.run(
        [tmpfiles, f"--root={root}", "--create", str(SYSTEMD / "vigie.tmpfiles.conf")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    state = root / "var" / "lib" / "vigie-agent"
    assert state.is_dir() and state.stat().st_mode & 0o777 == 0o700


# MemoryDenyWriteExecute=yes: the same rule the kernel enforces with PR_SET_MDWE (6.3+).
MDWE = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit(77)
os.execv(sys.argv[1], sys.argv[1:])
"""


def _mdwe_supported() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(66, 0, 0, 0, 0) >= 0  # PR_GET_MDWE


def test_programs_run_with_write_xor_execute_enforced(tmp_path: Path) -> None:
    if not _mdwe_supported():
        pytest.skip("kernel without PR_SET_MDWE (6.3+): cannot check MemoryDenyWriteExecute")
    wrapper = tmp_path / "mdwe.py"
    wrapper.write_text(MDWE)
    # The collector (grpc server, cryptography, sqlite) under W^X.
    real = BIN / "vigie-collector"
    shim = tmp_path / "vigie-collector"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} {wrapper} {real} "$@"\n')
    shim.chmod(0o755)
    config = tmp_path / "collector.toml"
    config.write_text('[metrics]\nlisten = ""\n')
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{tmp_path}:{old}"
    import tests.conftest as kit

    saved = kit.BIN
    kit.BIN = tmp_path  # start_collector runs BIN/vigie-collector: the W^X shim
    try:
        c = start_collector(tmp_path / "collector", config=config)
    finally:
        kit.BIN = saved
        os.environ["PATH"] = old
    try:
        creds = c.issue_agent(tmp_path / "agent" / "tls")
        assert (creds / "agent.crt").exists()
        # The agent (grpc client, scapy, psutil, decoders, anonymiser) under W^X.
        r = subprocess.run(
            [
                sys.executable,
                str(wrapper),
                str(BIN / "vigie-agent"),
                "replay",
                str(DATA / "nmap_syn_scan_1000ports.pcap"),
                "--output",
                "collector",
                "--collector",
                c.address,
                "--state-dir",
                str(tmp_path / "agent"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        assert '"replay_done"' in r.stdout + r.stderr
        assert c.proc.poll() is None, "the collector died under W^X"
    finally:
        c.proc.terminate()
        c.proc.wait(10)
