"""Offline throughput, whole process as a user runs it (start-up included), best of N:

    .venv/bin/python bench/offline.py [CAPTURE ...] [--runs 3]

Tools, on the same captures in the same run: `vigie-agent replay` (every registered
detector enabled, alerts to /dev/null), a naive scapy PcapReader loop (what a typical
Python agent does), `tcpdump -nn -r`, and Suricata 7 (`--runmode single`, no rules): with
a minimal config with no outputs (the ratio column's baseline) and as shipped (its own
suricata.yaml, writing eve.json). Prints one table per capture.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = ROOT / ".venv" / "bin" / "python"
AGENT = ROOT / ".venv" / "bin" / "vigie-agent"

SCAPY_LOOP = r"""
import sys
from scapy.all import IP, TCP, UDP, PcapReader
n = 0
seen = set()
for p in PcapReader(sys.argv[1]):
    n += 1
    if IP in p:
        ip = p[IP]
        l4 = p[TCP] if TCP in p else p[UDP] if UDP in p else None
        if l4 is not None:
            seen.add((ip.src, ip.dst, ip.proto, l4.sport, l4.dport))
print(n, len(seen))
"""

SURICATA_YAML = """%YAML 1.1
---
default-log-dir: {log}
outputs: []
logging:
  default-log-level: warning
  outputs:
    - console:
        enabled: yes
"""


def count_packets(path: Path) -> int:
    cmd = [str(PY), "-c", "import sys; from agent.capture.pcapfile import read_capture;"
           "print(sum(1 for _ in read_capture(sys.argv[1])))", str(path)]  # fmt: skip
    return int(subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout)


def best_of(argv: list[str], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("captures", nargs="*", default=[str(HERE / "captures" / "mixed.pcap")])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scapy-runs", type=int, default=1, help="scapy is slow: fewer runs")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vigie-bench-"))
    (tmp / "suricata.yaml").write_text(SURICATA_YAML.format(log=tmp))
    for cap in map(Path, args.captures):
        n = count_packets(cap)
        tools: dict[str, list[str]] = {
            "vigie-agent replay": [str(AGENT), "replay", str(cap), "--state-dir", str(tmp)],
            "scapy PcapReader loop": [str(PY), "-c", SCAPY_LOOP, str(cap)],
        }
        if shutil.which("tcpdump"):
            tools["tcpdump -nn -r"] = ["tcpdump", "-nn", "-r", str(cap)]
        if shutil.which("suricata"):
            # The ratio column divides by Suricata with every output off: the same
            # decoding, flow and app-layer work without writing a record per flow, the
            # stricter baseline. Suricata as shipped (its own suricata.yaml: eve.json
            # with flow, DNS and HTTP records) is timed too, for what a user would see.
            tools["suricata 7 single"] = [
                "suricata", "-c", str(tmp / "suricata.yaml"), "-r", str(cap), "--runmode",
                "single", "-S", "/dev/null", "-l", str(tmp),
            ]  # fmt: skip
            shipped = tmp / "shipped"
            shipped.mkdir(exist_ok=True)
            tools["suricata 7 as shipped"] = [
                "suricata", "-r", str(cap), "--runmode", "single", "-S", "/dev/null",
                "-l", str(shipped),
            ]  # fmt: skip
        else:
            print("suricata not installed: run bench/setup.sh", file=sys.stderr)
        secs = {}
        for name, argv in tools.items():
            runs = args.scapy_runs if name.startswith("scapy") else args.runs
            secs[name] = best_of(argv, runs)
        print(f"\n{cap.name}: {n} packets, {cap.stat().st_size / 1e6:.0f} MB, best of {args.runs}")
        print(f"{'tool':24} {'packets':>9} {'seconds':>8} {'packets/s':>10} {'÷suricata':>9} "
              f"{'÷scapy':>8}")  # fmt: skip
        sur = secs.get("suricata 7 single")
        sca = secs["scapy PcapReader loop"]
        for name, s in secs.items():
            rs = f"{sur / s:9.2f}" if sur else f"{'-':>9}"
            print(f"{name:24} {n:9d} {s:8.2f} {n / s:10.0f} {rs} {sca / s:8.1f}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
