"""Live scenarios: real attack tools against a live agent, between two network namespaces.

Two namespaces joined by a veth pair (10.200.0.1 victim, 10.200.0.2 attacker, addresses
that exist only inside them); the agent captures on the victim's end, a fresh agent per
scenario; each scenario must be detected by the right detector within 10 seconds of the
tool's start. Traffic never leaves the namespaces. Needs root, `ip netns`, nmap, hping3,
hydra and sshd (./dev installs them on CI).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

VICTIM_IP, ATTACKER_IP = "10.200.0.1", "10.200.0.2"
DEADLINE = 10.0
TOOLS = ("ip", "nmap", "hping3", "hydra", "ssh-keygen")
SSHD = "/usr/sbin/sshd"
LATENCIES: dict[str, float] = {}


def _why_not() -> str | None:
    if not sys.platform.startswith("linux"):
        return "live scenarios need Linux network namespaces"
    if os.geteuid() != 0:
        return "live scenarios need root (network namespaces, raw sockets)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if not os.access(SSHD, os.X_OK):
        missing.append(SSHD)
    if missing:
        return f"live scenarios need {', '.join(missing)} (./dev installs them)"
    return None


if (_reason := _why_not()) is not None:
    pytest.skip(_reason, allow_module_level=True)


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=60)


class Net:
    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.victim, self.attacker = f"vgv{tag}", f"vga{tag}"
        self.vif, self.aif = f"vgv{tag}i", f"vga{tag}i"

    def up(self) -> None:
        _run("ip", "netns", "add", self.victim)
        _run("ip", "netns", "add", self.attacker)
        _run("ip", "link", "add", self.vif, "type", "veth", "peer", "name", self.aif)
        _run("ip", "link", "set", self.vif, "netns", self.victim)
        _run("ip", "link", "set", self.aif, "netns", self.attacker)
        for ns, dev, ip in (
            (self.victim, self.vif, VICTIM_IP),
            (self.attacker, self.aif, ATTACKER_IP),
        ):
            _run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")

    def down(self) -> None:
        for ns in (self.victim, self.attacker):
            _run("ip", "netns", "del", ns, check=False)

    def victim_cmd(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.victim, *cmd]

    def attacker_cmd(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.attacker, *cmd]


@pytest.fixture(scope="module")
def net():
    n = Net()
    try:
        n.up()
    except (subprocess.CalledProcessError, OSError) as exc:
        n.down()
        pytest.skip(f"cannot create network namespaces here: {getattr(exc, 'stderr', exc)}")
    try:
        yield n
    finally:
        n.down()


def _agent_bin() -> str:
    exe = Path(sys.executable).parent / "vigie-agent"
    return str(exe) if exe.exists() else shutil.which("vigie-agent") or "vigie-agent"


class Agent:
    """A live agent in the victim namespace, its alerts read as they come, timestamped."""

    def __init__(self, net: Net, state: Path, config: Path | None = None) -> None:
        cmd = [_agent_bin(), "run", "--interface", net.vif, "--output", "jsonl"]
        cmd += ["--state-dir", str(state)]
        if config is not None:
            cmd += ["--config", str(config)]
        self.proc = subprocess.Popen(
            net.victim_cmd(*cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.alerts: list[tuple[float, dict]] = []
        self.started = threading.Event()
        self.log: list[str] = []
        threading.Thread(target=self._read_out, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()
        if not self.started.wait(15):
            self.stop()
            raise AssertionError("agent did not start:\n" + "".join(self.log[-20:]))
        time.sleep(0.3)

    def _read_out(self) -> None:
        for line in self.proc.stdout:
            self.alerts.append((time.monotonic(), json.loads(line)))

    def _read_err(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)
            if "capture_started" in line:
                self.started.set()

    def wait_for(self, detector: str, since: float, timeout: float) -> tuple[float, dict] | None:
        end = since + timeout
        while time.monotonic() < end:
            for t, a in list(self.alerts):
                if a["detector"] == detector:
                    return t, a
            time.sleep(0.05)
        return None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _scenario(net: Net, tmp_path: Path, name: str, detector: str, cmd: list[str],
              config: Path | None = None) -> dict:  # fmt: skip
    agent = Agent(net, tmp_path / "state", config)
    tool = None
    try:
        t0 = time.monotonic()
        tool = subprocess.Popen(
            net.attacker_cmd(*cmd),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=tmp_path,  # hydra writes its restore file here
        )
        hit = agent.wait_for(detector, t0, DEADLINE)
        seen = sorted({a["detector"] for _, a in agent.alerts})
        assert hit is not None, (
            f"{name}: no {detector} alert within {DEADLINE:.0f} s (saw {seen}); agent log:\n"
            + "".join(agent.log[-10:])
        )
        LATENCIES[name] = round(hit[0] - t0, 2)
        print(f"\n{name}: {detector} after {hit[0] - t0:.2f} s")
        return hit[1]
    finally:
        if tool is not None and tool.poll() is None:
            tool.terminate()
            try:
                tool.wait(10)
            except subprocess.TimeoutExpired:
                tool.kill()
        agent.stop()


NMAP = ("nmap", "-n", "-Pn", "--max-retries", "1")


def test_nmap_syn_scan(net, tmp_path):
    a = _scenario(net, tmp_path, "nmap -sS", "net.portscan",
                  [*NMAP, "-sS", "-p", "1-1000", VICTIM_IP])  # fmt: skip
    assert a["technique"] == "T1046"


def test_nmap_connect_scan(net, tmp_path):
    a = _scenario(net, tmp_path, "nmap -sT", "net.portscan",
                  [*NMAP, "-sT", "-p", "1-1000", VICTIM_IP])  # fmt: skip
    assert a["technique"] == "T1046"


def test_nmap_udp_scan(net, tmp_path):
    ports = "53,67,69,123,137,161,500,514,520,1900"
    a = _scenario(net, tmp_path, "nmap -sU", "net.portscan",
                  [*NMAP, "-sU", "-p", ports, VICTIM_IP])  # fmt: skip
    assert a["technique"] == "T1046"


def test_nmap_slow_scan(net, tmp_path):
    a = _scenario(net, tmp_path, "nmap -T2", "net.portscan",
                  [*NMAP, "-sS", "-T2", "-p", "20-40", VICTIM_IP])  # fmt: skip
    assert a["technique"] == "T1046"


def test_syn_flood(net, tmp_path):
    a = _scenario(net, tmp_path, "hping3 -S --flood", "net.dos",
                  ["timeout", "5", "hping3", "-S", "--flood", "-p", "80", VICTIM_IP])  # fmt: skip
    assert a["technique"] == "T1498"
    assert any(e["role"] == "target" for e in a["entities"])
    assert "SYN flood" in a["summary"]


@pytest.fixture
def sshd(net, tmp_path):
    d = tmp_path / "sshd"
    d.mkdir()
    key = d / "host_ed25519"
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    conf = d / "sshd_config"
    conf.write_text(
        f"ListenAddress {VICTIM_IP}\nPort 22\nHostKey {key}\nPidFile {d / 'sshd.pid'}\n"
        "PermitRootLogin no\nPasswordAuthentication yes\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nStrictModes no\nMaxStartups 100:30:200\nLoginGraceTime 10\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
    proc = subprocess.Popen(
        net.victim_cmd(SSHD, "-D", "-e", "-f", str(conf)),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1.0)
    if proc.poll() is not None:
        pytest.fail(f"sshd did not start: {proc.stderr.read()}")
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def test_hydra_ssh(net, tmp_path, sshd):
    words = tmp_path / "words.txt"
    words.write_text("\n".join(f"guess{i:03d}" for i in range(200)) + "\n")
    a = _scenario(net, tmp_path, "hydra ssh", "net.bruteforce",
                  ["hydra", "-l", "root", "-P", str(words), "-t", "16", "-I",
                   f"ssh://{VICTIM_IP}"])  # fmt: skip
    assert a["technique"] == "T1110"
    assert {"kind": "port", "value": "22"}.items() <= next(
        e for e in a["entities"] if e["kind"] == "port"
    ).items()
