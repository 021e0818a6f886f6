"""The host sampler's own cost, next to a naive sampler, on a host with 500 more processes.

    .venv/bin/python bench/host_sampler.py [--processes 500] [--rounds 20]

Starts N `sleep 600` children (killed at the end, whatever happens), then measures the
CPU time (user + system, this process only) of one sampling round:
  - vigie: agent.host.sampler.HostSampler with the default settings' needs;
  - naive: what a sampler that rebuilds everything does each round:
    process_iter with every attribute, plus psutil.net_connections.
and the CPU share of one core each would take at the default interval.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from agent import settings
from agent.host.sampler import HostSampler, Needs
from common import config


def naive_round() -> None:
    psutil.process_iter.cache_clear()
    for p in psutil.process_iter(attrs=[], ad_value=None):
        _ = p.info
    psutil.net_connections(kind="inet")


def measure(fn, rounds: int) -> tuple[float, float]:
    """(first round, mean of the following rounds), CPU seconds."""
    t = time.process_time()
    fn()
    first = time.process_time() - t
    time.sleep(0.2)
    t = time.process_time()
    for _ in range(rounds):
        fn()
    return first, (time.process_time() - t) / rounds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    cfg = config.defaults(settings.SCHEMA)
    interval = cfg["host"]["interval_seconds"]
    kids: list[subprocess.Popen] = []
    try:
        for _ in range(args.processes):
            kids.append(subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL))
        time.sleep(0.5)
        total = len(psutil.pids())
        sampler = HostSampler(Needs.from_settings(cfg))
        vigie = measure(sampler.sample, args.rounds)
        naive = measure(naive_round, max(3, args.rounds // 4))
        st = sampler.stats
        print(f"host: {total} processes ({args.processes} started), {os.cpu_count()} CPUs, "
              f"interval {interval:g} s, {args.rounds} rounds")  # fmt: skip
        print()
        share = f"share of one core at {interval:g} s"
        print(f"| sampler | first round (ms CPU) | per round (ms CPU) | {share} |")
        print("|---|---:|---:|---:|")
        for name, (first, per) in (("vigie (diffing)", vigie), ("naive (rebuild all)", naive)):
            print(
                f"| {name} | {first * 1000:.1f} | {per * 1000:.1f} | {per / interval * 100:.2f}% |"
            )
        print()
        print(f"vigie: {st.full_queries} full process queries over {st.rounds} rounds, "
              f"{st.owner_lookups} socket-owner lookups, {st.vanished} vanished, "
              f"{st.denied} denied, {st.zombies} zombie reads")  # fmt: skip
        ok = vigie[1] / interval < 0.02
        print("target (< 2% of one core):", "met" if ok else "NOT met")
        return 0 if ok else 1
    finally:
        for k in kids:
            with contextlib.suppress(OSError):
                k.kill()
        for k in kids:
            k.wait()


if __name__ == "__main__":
    sys.exit(main())
