"""A live lab for detection scenarios: real tools against a live agent, in namespaces.

Three roles, two network namespaces joined by a veth pair:
- the victim (10.200.0.1/24), where the agent captures and servers listen;
- the attacker (10.200.0.2/24) on the same segment;
- "outside": an address from TEST-NET-2 (198.51.100.7) held by the attacker namespace,
  reached from the victim through its default route, for traffic that must look like it
  leaves the establishment (beacons, downloads).
Every address exists only inside the namespaces: nothing reaches the host's interfaces.

A scenario (bench/scenarios/) is declared data plus one function that starts its tool;
`play` runs it against a fresh agent and returns what the agent raised, so that both the
tests (tests/test_scenarios_live.py) and the evaluation (bench/detections.py) use the
same definitions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

VICTIM_IP, ATTACKER_IP, OUTSIDE_IP = "10.200.0.1", "10.200.0.2", "198.51.100.7"
SSHD = "/usr/sbin/sshd"


def run(*cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout)


def why_not(tools: Sequence[str] = ("ip",)) -> str | None:
    """None when the lab can run here with these tools, else the reason it cannot."""
    if not sys.platform.startswith("linux"):
        return "live scenarios need Linux network namespaces"
    if os.geteuid() != 0:
        return "live scenarios need root (network namespaces, raw sockets)"
    missing = [t for t in tools if shutil.which(t) is None and not os.access(t, os.X_OK)]
    if missing:
        return f"live scenarios need {', '.join(missing)} (./dev installs them)"
    return None


class Lab:
    """The namespaces. `up()` makes them, `down()` removes them (also after a failure)."""

    def __init__(self, tag: str = "") -> None:
        tag = f"{tag}{os.getpid() % 100000}"
        self.victim, self.attacker = f"vgv{tag}", f"vga{tag}"
        self.vif, self.aif = f"vgv{tag}i"[:15], f"vga{tag}i"[:15]
        self.background: list[subprocess.Popen] = []

    def up(self) -> Lab:
        try:
            run("ip", "netns", "add", self.victim)
            run("ip", "netns", "add", self.attacker)
            run("ip", "link", "add", self.vif, "type", "veth", "peer", "name", self.aif)
            run("ip", "link", "set", self.vif, "netns", self.victim)
            run("ip", "link", "set", self.aif, "netns", self.attacker)
            for ns, dev, ip in (
                (self.victim, self.vif, VICTIM_IP),
                (self.attacker, self.aif, ATTACKER_IP),
            ):
                run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
                run("ip", "-n", ns, "link", "set", dev, "up")
                run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", self.attacker, "addr", "add", f"{OUTSIDE_IP}/32", "dev", self.aif)
            run("ip", "-n", self.victim, "route", "add", "default", "via", ATTACKER_IP)
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        for p in self.background:
            stop(p)
        self.background.clear()
        for ns in (self.victim, self.attacker):
            run("ip", "netns", "del", ns, check=False)

    def victim_cmd(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.victim, *cmd]

    def attacker_cmd(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.attacker, *cmd]

    def spawn(self, cmd: list[str], cwd: Path | None = None, **kw) -> subprocess.Popen:
        """A process (already wrapped by victim_cmd/attacker_cmd), output discarded unless
        the caller asks otherwise."""
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        return subprocess.Popen(cmd, cwd=cwd, **kw)


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def sshd(
    lab: Lab,
    workdir: Path,
    port: int = 22,
    settings: str = "",
    address: str = VICTIM_IP,
) -> subprocess.Popen:
    """An OpenSSH server in the namespace that holds `address` (the victim's by default).
    `settings` (sshd_config lines) come first and so win over the defaults after them,
    since sshd keeps a keyword's first value: password authentication on, no PAM, root
    refused."""
    workdir.mkdir(parents=True, exist_ok=True)
    key = workdir / "host_ed25519"
    if not key.exists():
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    conf = workdir / f"sshd_config_{port}"
    conf.write_text(
        settings + f"ListenAddress {address}\nPort {port}\nHostKey {key}\n"
        f"PidFile {workdir / f'sshd_{port}.pid'}\n"
        "PermitRootLogin no\nPasswordAuthentication yes\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nStrictModes no\nMaxStartups 100:30:200\nLoginGraceTime 10\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
    cmd = lab.victim_cmd if address == VICTIM_IP else lab.attacker_cmd
    proc = subprocess.Popen(
        cmd(SSHD, "-D", "-e", "-f", str(conf)),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(0.8)
    if proc.poll() is not None:
        raise RuntimeError(f"sshd on {address}:{port} did not start: {proc.stderr.read()}")
    return proc


def agent_bin() -> str:
    exe = Path(sys.executable).parent / "vigie-agent"
    return str(exe) if exe.exists() else shutil.which("vigie-agent") or "vigie-agent"


class Agent:
    """A live agent in the victim namespace, its alerts read as they come, timestamped."""

    def __init__(self, lab: Lab, state: Path, config: Path | None = None) -> None:
        cmd = [agent_bin(), "run", "--interface", lab.vif, "--output", "jsonl"]
        cmd += ["--state-dir", str(state)]
        if config is not None:
            cmd += ["--config", str(config)]
        self.proc = subprocess.Popen(
            lab.victim_cmd(*cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
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
                if a["detector"] == detector and t >= since:
                    return t, a
            time.sleep(0.05)
        return None

    def stop(self) -> None:
        stop(self.proc)


@dataclass(frozen=True)
class Scenario:
    """One live case. `detector` is what must fire (None: a quiet check, where no attack
    detector may fire). `start` starts the tool (or the benign workload) and returns its
    process; `setup` prepares servers first and returns processes to stop afterwards."""

    name: str
    detector: str | None
    tool: str
    start: Callable[[Lab, Path], subprocess.Popen]
    needs: tuple[str, ...] = ()
    setup: Callable[[Lab, Path], list[subprocess.Popen]] | None = None
    watch: float = 10.0  # attack: the deadline; quiet: how long it must stay quiet
    config: str = ""  # agent TOML, when the scenario needs non-default settings
    check: Callable[[dict], None] | None = None  # more assertions on the first alert
    technique: str | None = None
    slow: bool = False  # needs minutes (a long timer): run with the slow tests only


ATTACK_DETECTORS = {
    "net.portscan", "net.discovery", "net.bruteforce", "net.lateral", "net.dos",
    "net.dns_tunnel", "net.dga", "net.beacon", "net.exfil", "net.arp_spoof", "net.tunnel",
}  # fmt: skip


@dataclass
class Outcome:
    scenario: Scenario
    latency: float | None  # seconds from the tool's start to the expected alert
    alerts: list[dict] = field(default_factory=list)

    @property
    def ids(self) -> dict[str, set[str]]:
        """Distinct alert ids per detector (revisions of one alert share its id)."""
        out: dict[str, set[str]] = {}
        for a in self.alerts:
            out.setdefault(a["detector"], set()).add(a["id"])
        return out

    @property
    def first(self) -> dict | None:
        d = self.scenario.detector
        return next((a for a in self.alerts if a["detector"] == d), None)

    @property
    def false_alarms(self) -> list[str]:
        """Attack detectors that fired other than the expected one."""
        return sorted(d for d in self.ids if d in ATTACK_DETECTORS and d != self.scenario.detector)

    @property
    def ok(self) -> bool:
        if self.scenario.detector is None:
            return not self.false_alarms
        return self.latency is not None and len(self.ids[self.scenario.detector]) == 1


def play(
    lab: Lab,
    sc: Scenario,
    tmp: Path,
    settle: float = 1.5,
    background: Callable[[Lab, Path], list[subprocess.Popen]] | None = None,
) -> Outcome:
    """Run one scenario against a fresh agent; for an attack, wait up to `watch` seconds for
    its detector and then `settle` more to see whether it repeats itself. `background`
    starts ordinary traffic (bench/scenarios/ordinary.py) that runs throughout."""
    tmp.mkdir(parents=True, exist_ok=True)
    config = None
    if sc.config:
        config = tmp / "agent.toml"
        config.write_text(sc.config)
    servers = sc.setup(lab, tmp) if sc.setup else []
    agent = None
    if background is not None:
        servers += background(lab, tmp)
    tool = None
    try:
        agent = Agent(lab, tmp / "state", config)
        t0 = time.monotonic()
        tool = sc.start(lab, tmp)
        latency = None
        if sc.detector is not None:
            hit = agent.wait_for(sc.detector, t0, sc.watch)
            if hit is not None:
                latency = round(hit[0] - t0, 2)
                time.sleep(settle)
        else:
            time.sleep(sc.watch)
        return Outcome(sc, latency, [a for _, a in agent.alerts])
    finally:
        stop(tool)
        if agent is not None:
            agent.stop()
        for p in servers:
            stop(p)
