"""Reconnaissance: host discovery sweeps (net.discovery, T1018) and the nmap scan types
beyond SYN/connect/UDP (net.portscan, T1046), with the quiet checks that go with them.

Sweeps on the segment (10.200.0.0/24) are ARP on the victim's link, whatever the tool
asks for: the attacker's kernel resolves each address before any IP probe leaves. For
ICMP sweeps the attacker routes 10.201.0.0/16 through the victim, so that its probes
cross the victim's link as they would cross a router's or a mirror port.

    python -m bench.scenarios.recon record DIR [NAME ...]

records each scenario's traffic on the victim's link with tcpdump into DIR/<name>.pcap
(how tests/data/recon/ was made).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from bench.livelab import ATTACKER_IP, VICTIM_IP, Lab, Scenario, run

SEGMENT = "10.200.0.0/24"
ROUTED = "10.201.0.0/16"  # reached through the victim, from the attacker
# Addresses the attacker namespace also holds: hosts for the monitoring loop to watch.
WATCHED = [f"10.200.0.{101 + i}" for i in range(20)]


def _routed(lab: Lab, tmp: Path) -> list[subprocess.Popen]:
    run("ip", "-n", lab.attacker, "route", "replace", ROUTED, "via", VICTIM_IP)
    return []


def _watched(lab: Lab, tmp: Path) -> list[subprocess.Popen]:
    for ip in WATCHED:
        run("ip", "-n", lab.attacker, "addr", "replace", f"{ip}/32", "dev", lab.aif)
    return []


def _attacker(*cmd: str):
    def start(lab: Lab, tmp: Path) -> subprocess.Popen:
        return lab.spawn(lab.attacker_cmd(*cmd))

    return start


def _nmap(*args: str):
    return _attacker("nmap", "-n", "-Pn", "--max-retries", "1", *args, VICTIM_IP)


def _arp_scan(lab: Lab, tmp: Path) -> subprocess.Popen:
    return lab.spawn(lab.attacker_cmd("arp-scan", "-I", lab.aif, SEGMENT))


def _hping3_timestamps(lab: Lab, tmp: Path) -> subprocess.Popen:
    # --rand-dest needs the interface named
    return lab.spawn(lab.attacker_cmd(
        "timeout", "8", "hping3", "--icmp", "-C", "13", "-i", "u20000", "--rand-dest",
        "10.201.x.x", "-I", lab.aif,
    ))  # fmt: skip


def _masscan(lab: Lab, tmp: Path) -> subprocess.Popen:
    # masscan sends through its own stack: it is told the next hop's MAC (the victim's),
    # and left at its default rate (100 packets/s)
    mac = run("ip", "-n", lab.victim, "-br", "link", "show", lab.vif).stdout.split()[2]
    return lab.spawn(
        lab.attacker_cmd("masscan", "-e", lab.aif, "-p1-1000", VICTIM_IP, "--router-mac", mac)
    )


def _monitoring(period: float):
    """The victim as a monitoring server: fping over 21 hosts (the attacker and its 20
    extra addresses), every `period` seconds."""

    def start(lab: Lab, tmp: Path) -> subprocess.Popen:
        hosts = " ".join([ATTACKER_IP, *WATCHED])
        loop = f"while :; do fping -q -r 0 {hosts}; sleep {period}; done"
        return lab.spawn(lab.victim_cmd("sh", "-c", loop))

    return start


def _sweep_check(prefix: int, kind: str):
    def check(a: dict) -> None:
        assert kind in a["summary"], a["summary"]
        m = a["metrics"]
        assert m["prefix_length"] >= prefix and m["targets"] >= 24
        assert m["answered_share"] <= 0.5

    return check


def _style(name: str):
    def check(a: dict) -> None:
        assert f"{name}" in a["summary"].rsplit("(", 1)[-1], a["summary"]

    return check


SCENARIOS = [
    Scenario("nmap -sn (ARP)", "net.discovery", "nmap", _attacker("nmap", "-sn", "-n", SEGMENT),
             technique="T1018", check=_sweep_check(24, "ARP")),
    Scenario("nmap -sn -PE (ICMP)", "net.discovery", "nmap",
             _attacker("nmap", "-sn", "-n", "-PE", "10.201.0.0/24"), setup=_routed,
             technique="T1018", check=_sweep_check(24, "ICMP echo")),
    Scenario("arp-scan", "net.discovery", "arp-scan", _arp_scan, technique="T1018",
             check=_sweep_check(24, "ARP")),
    Scenario("fping -g /24", "net.discovery", "fping",
             _attacker("fping", "-q", "-r", "0", "-g", "10.201.3.0/24"), setup=_routed,
             technique="T1018", check=_sweep_check(24, "ICMP echo")),
    # held out (thresholds were set on nmap): random addresses of a /16, ICMP timestamp
    Scenario("hping3 timestamp sweep /16", "net.discovery", "hping3",
             _hping3_timestamps, setup=_routed, technique="T1018",
             check=_sweep_check(16, "ICMP timestamp")),
    Scenario("nmap -sA", "net.portscan", "nmap", _nmap("-sA", "-p", "1-1000"),
             technique="T1046", check=_style("ack")),
    Scenario("nmap -sW", "net.portscan", "nmap", _nmap("-sW", "-p", "1-1000"),
             technique="T1046", check=_style("ack")),
    Scenario("nmap -sM", "net.portscan", "nmap", _nmap("-sM", "-p", "1-1000"),
             technique="T1046", check=_style("maimon")),
    Scenario("nmap -sO", "net.portscan", "nmap", _nmap("-sO"), technique="T1046",
             check=_style("ip-protocol")),
    # This kernel has no SCTP (no module, none loadable): the victim refuses the INITs
    # with ICMP protocol unreachable, which is what is scored.
    Scenario("nmap -sY", "net.portscan", "nmap", _nmap("-sY"), technique="T1046",
             check=_style("sctp")),
    Scenario("nmap -sZ", "net.portscan", "nmap", _nmap("-sZ"), technique="T1046",
             check=_style("sctp")),
    Scenario("masscan", "net.portscan", "masscan", _masscan, technique="T1046",
             check=_style("syn")),
    # Quiet: a monitoring server's rounds (compressed to 5 s: what keeps it quiet is that
    # from its second round on it probes nothing new, whatever the period under
    # [detectors.discovery] memory_seconds; SLOW has the 30 s period).
    Scenario("monitoring loop, 21 hosts every 5 s", None, "fping", _monitoring(5),
             setup=_watched, watch=16.0),
]  # fmt: skip

SLOW = [
    Scenario("monitoring loop, 21 hosts every 30 s", None, "fping", _monitoring(30),
             setup=_watched, watch=70.0, slow=True),
]  # fmt: skip


def record(out: Path, names: list[str]) -> None:
    """Each scenario's traffic, as the victim's link carries it, into out/<name>.pcap."""
    out.mkdir(parents=True, exist_ok=True)
    lab = Lab("rec").up()
    try:
        for sc in SCENARIOS + SLOW:
            if names and sc.name not in names:
                continue
            servers = sc.setup(lab, out) if sc.setup else []
            name = re.sub(r"[^a-z0-9]+", "_", sc.name.lower()).strip("_")
            pcap = out / f"{name}.pcap"
            cmd = lab.victim_cmd("tcpdump", "-i", lab.vif, "-w", str(pcap), "-U", "-s", "200")
            tcpdump = lab.spawn(cmd)
            time.sleep(1.0)
            tool = sc.start(lab, out)
            try:
                tool.wait(timeout=sc.watch if sc.detector is None else 120)
            except subprocess.TimeoutExpired:
                tool.terminate()
                tool.wait()
            time.sleep(1.0)
            tcpdump.terminate()
            tcpdump.wait()
            for p in servers:
                p.terminate()
            print(f"{pcap}: {pcap.stat().st_size} bytes")
    finally:
        lab.down()


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "record":
        sys.exit(__doc__)
    record(Path(sys.argv[2]), sys.argv[3:])
