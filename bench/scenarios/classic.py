"""The first live scenarios: nmap SYN/connect/UDP/slow scans, a SYN flood, hydra on SSH."""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench.livelab import VICTIM_IP, Lab, Scenario, sshd

NMAP = ("nmap", "-n", "-Pn", "--max-retries", "1")


def _nmap(*args: str):
    def start(lab: Lab, tmp: Path) -> subprocess.Popen:
        return lab.spawn(lab.attacker_cmd(*NMAP, *args, VICTIM_IP))

    return start


def _flood(lab: Lab, tmp: Path) -> subprocess.Popen:
    return lab.spawn(
        lab.attacker_cmd("timeout", "5", "hping3", "-S", "--flood", "-p", "80", VICTIM_IP)
    )


def _flood_check(a: dict) -> None:
    assert any(e["role"] == "target" for e in a["entities"])
    assert "SYN flood" in a["summary"]


def _sshd(lab: Lab, tmp: Path) -> list[subprocess.Popen]:
    return [sshd(lab, tmp / "sshd")]


def _hydra(lab: Lab, tmp: Path) -> subprocess.Popen:
    words = tmp / "words.txt"
    words.write_text("\n".join(f"guess{i:03d}" for i in range(200)) + "\n")
    return lab.spawn(
        lab.attacker_cmd("hydra", "-l", "root", "-P", str(words), "-t", "16", "-I",
                         f"ssh://{VICTIM_IP}"),
        cwd=tmp,  # hydra writes its restore file here
    )  # fmt: skip


def _port_22(a: dict) -> None:
    assert {"kind": "port", "value": "22"}.items() <= next(
        e for e in a["entities"] if e["kind"] == "port"
    ).items()


SCENARIOS = [
    Scenario("nmap -sS", "net.portscan", "nmap", _nmap("-sS", "-p", "1-1000"),
             technique="T1046"),
    Scenario("nmap -sT", "net.portscan", "nmap", _nmap("-sT", "-p", "1-1000"),
             technique="T1046"),
    Scenario("nmap -sU", "net.portscan", "nmap",
             _nmap("-sU", "-p", "53,67,69,123,137,161,500,514,520,1900"), technique="T1046"),
    Scenario("nmap -T2", "net.portscan", "nmap", _nmap("-sS", "-T2", "-p", "20-40"),
             technique="T1046"),
    Scenario("hping3 -S --flood", "net.dos", "hping3", _flood, technique="T1498",
             check=_flood_check),
    Scenario("hydra ssh", "net.bruteforce", "hydra", _hydra, needs=("/usr/sbin/sshd",),
             setup=_sshd, technique="T1110", check=_port_22),
]  # fmt: skip
