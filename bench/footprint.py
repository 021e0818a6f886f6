"""The agent's footprint on a clinical host: CPU and resident memory, idle and under load.

    .venv/bin/python bench/footprint.py [--idle 30] [--load 30] [--pps 10000]

`vigie-agent run` (default configuration: every detector, host sampler, self-guard,
metrics) captures on one end of a veth pair in namespace A; namespace B first stays quiet
for --idle seconds, then tcpreplay offers a mixed capture at --pps for --load seconds.
psutil samples the agent process once a second; we report mean and max CPU (percent of
one core) and RSS for each phase. Targets: idle under 1 % of a core and under 80 MB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from netns import NetnsPair, available  # noqa: E402

AGENT = ROOT / ".venv" / "bin" / "vigie-agent"
DEFAULT_CAPTURE = HERE / "captures" / "mixed.pcap"  # made by bench/make_capture.py


def _agent_pid(launcher: psutil.Process) -> psutil.Process:
    """`ip netns exec` execs the agent: the launcher is the agent (or its only child)."""
    kids = launcher.children(recursive=True)
    return kids[0] if kids else launcher


def sample(proc: psutil.Process, seconds: float) -> dict:
    cpu, rss = [], []
    proc.cpu_percent(None)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(1.0)
        cpu.append(proc.cpu_percent(None))
        rss.append(proc.memory_info().rss / (1 << 20))
    return {
        "cpu_mean_percent": round(statistics.fmean(cpu), 2),
        "cpu_max_percent": round(max(cpu), 2),
        "rss_mean_mb": round(statistics.fmean(rss), 1),
        "rss_max_mb": round(max(rss), 1),
        "samples": len(cpu),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idle", type=float, default=30.0)
    ap.add_argument("--load", type=float, default=30.0)
    ap.add_argument("--pps", type=int, default=10_000)
    ap.add_argument("--capture", type=Path, default=DEFAULT_CAPTURE)
    args = ap.parse_args()
    if reason := available():
        print(f"footprint: {reason}", file=sys.stderr)
        return 2
    if not shutil.which("tcpreplay"):
        print("footprint: tcpreplay is not installed", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="vigie-footprint-"))
    cfg = tmp / "agent.toml"
    cfg.write_text('[metrics]\nlisten = ""\n')  # the default config otherwise
    out: dict = {"pps_offered": args.pps, "capture": args.capture.name}
    with NetnsPair("fp") as ns:
        launcher = ns.popen(
            ns.a,
            [
                str(AGENT),
                "run",
                "-i",
                ns.if_a,
                "--output",
                "jsonl",
                "--config",
                str(cfg),
                "--state-dir",
                str(tmp),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert launcher.stderr is not None
            line = ""
            while "capture_started" not in line:
                line = launcher.stderr.readline()
                if not line and launcher.poll() is not None:
                    raise RuntimeError("agent exited before capturing")
            agent = _agent_pid(psutil.Process(launcher.pid))
            time.sleep(2)  # imports and first host sample settle
            out["idle"] = sample(agent, args.idle)
            replay = ns.popen(
                ns.b,
                [
                    "tcpreplay",
                    "-i",
                    ns.if_b,
                    f"--pps={args.pps}",
                    "--loop=0",
                    f"--duration={int(args.load) + 2}",
                    str(args.capture),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1)
            out["load"] = sample(agent, args.load)
            replay.wait(args.load + 30)
            launcher.terminate()
            _, err = launcher.communicate(timeout=30)
            for x in err.splitlines():
                if '"capture_stopped"' in x:
                    ev = json.loads(x)
                    out["packets"] = ev["packets"]
                    out["kernel_dropped"] = ev["kernel_dropped"]
                if '"selfguard_shed"' in x:
                    out.setdefault("selfguard", []).append(json.loads(x)["level"])
        finally:
            if launcher.poll() is None:
                launcher.kill()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
