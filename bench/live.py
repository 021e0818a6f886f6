"""Live capture under load, agent pinned to one core:

    .venv/bin/python bench/live.py [--capture bench/captures/mixed.pcap] [--rates 25000,...]

Two private namespaces joined by a veth pair: `vigie-agent run` captures in A (taskset
-c 1), tcpreplay sends the capture from B (taskset -c 0) at each offered rate for
--seconds. Received is the agent's own packet count (its `capture_stopped` event), the
kernel's drop counter comes from PACKET_STATISTICS; the agent's CPU is its user + system
time (/proc) from the start of sending until the ring is empty, over the sending time: the
share of one core the traffic cost it. `--profile core` runs the agent with every detector
disabled (capture + decode + flows), `all` with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from netns import NetnsPair, available  # noqa: E402

AGENT = ROOT / ".venv" / "bin" / "vigie-agent"


def config(tmp: Path, profile: str, ring: bool, ring_mb: int | None = None) -> Path:
    sys.path.insert(0, str(ROOT))
    from agent.settings import SCHEMA

    lines = ["[capture]", f"ring = {'true' if ring else 'false'}"]
    if ring_mb:
        lines.append(f"ring_megabytes = {ring_mb}")
    if profile == "core":
        for key in SCHEMA["detectors"]:
            lines += [f"[detectors.{key}]", "enabled = false"]
    path = tmp / f"agent-{profile}-{ring}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def cpu_seconds(pid: int) -> float:
    """User + system time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_rate(ns: NetnsPair, cap: Path, rate: int, seconds: float, cfg: Path, tmp: Path) -> dict:
    argv = ["taskset", "-c", "1", str(AGENT), "run", "-i", ns.if_a, "--output", "jsonl",
            "--config", str(cfg), "--state-dir", str(tmp)]  # fmt: skip
    agent = ns.popen(ns.a, argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert agent.stderr is not None
    line = ""
    while "capture_started" not in line:
        line = agent.stderr.readline()
        if not line and agent.poll() is not None:
            raise RuntimeError("agent exited before capturing")
    time.sleep(0.5)
    limit = int(rate * seconds) if rate else int(300_000 * seconds)
    speed = [f"--pps={rate}"] if rate else ["--topspeed"]
    cpu0 = cpu_seconds(agent.pid)
    rp = ns.run(
        ns.b,
        [
            "taskset",
            "-c",
            "0",
            "tcpreplay",
            "-q",
            "-i",
            ns.if_b,
            *speed,
            f"--limit={limit}",
            "--loop=0",
            str(cap),
        ],
        capture_output=True,
        text=True,
    )
    m = re.search(r"Actual: (\d+) packets .* ([\d.]+) seconds", rp.stdout)
    sent = int(m[1]) if m else 0
    took = float(m[2]) if m else 0.0
    time.sleep(1.5)  # let the agent empty the ring
    cpu = cpu_seconds(agent.pid) - cpu0
    agent.terminate()
    _, err = agent.communicate(timeout=60)
    ev = next(json.loads(x) for x in err.splitlines() if '"capture_stopped"' in x)
    return {
        "offered_pps": round(sent / took) if took else 0,
        "sent": sent,
        "received": ev["packets"],
        "kernel_dropped": ev["kernel_dropped"],
        "loss_pct": 100.0 * max(0, sent - ev["packets"]) / sent if sent else 0.0,
        "cpu_pct": 100.0 * cpu / took if took else 0.0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--capture", default=str(HERE / "captures" / "mixed.pcap"))
    ap.add_argument("--rates", default="25000,50000,100000,150000,200000,0", help="0: topspeed")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--profile", choices=("core", "all"), action="append")
    ap.add_argument("--no-ring", action="store_true", help="use the recv() fallback path")
    ap.add_argument("--ring-megabytes", type=int, help="ring size (default: the agent's)")
    args = ap.parse_args()
    if reason := available():
        print(f"live bench: {reason}", file=sys.stderr)
        return 1
    if not shutil.which("tcpreplay"):
        print("live bench: tcpreplay is not installed (bench/setup.sh)", file=sys.stderr)
        return 1
    cap = Path(args.capture)
    tmp = Path(tempfile.mkdtemp(prefix="vigie-live-"))
    mode = "recv" if args.no_ring else "ring"
    with NetnsPair("lv") as ns:
        for profile in args.profile or ["all", "core"]:
            cfg = config(tmp, profile, not args.no_ring, args.ring_megabytes)
            print(f"\nagent on one core (taskset -c 1), detectors: {profile}, capture: {mode}")
            print(f"{'offered pps':>12} {'sent':>9} {'received':>9} {'kernel drops':>12} "
                  f"{'loss %':>7} {'agent CPU %':>11}")  # fmt: skip
            for rate in (int(r) for r in args.rates.split(",")):
                r = one_rate(ns, cap, rate, args.seconds, cfg, tmp)
                label = f"{r['offered_pps']}" + ("" if rate else " (top)")
                print(f"{label:>12} {r['sent']:9d} {r['received']:9d} {r['kernel_dropped']:12d} "
                      f"{r['loss_pct']:7.2f} {r['cpu_pct']:11.0f}", flush=True)  # fmt: skip
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
