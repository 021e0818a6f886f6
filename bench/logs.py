"""The log path's cost.

    .venv/bin/python bench/logs.py throughput [--lines 500000]
    .venv/bin/python bench/logs.py live [--rate 10000] [--seconds 60] [--pairs 3]

throughput: a file of N syslog lines (the recorded OpenSSH, shadow and sudo lines of
tests/data/logs mixed with four times as many lines of programs no family reads, as on a
busy server's syslog) read by the agent's follower and parser (agent.logs.reader), beside
two baselines on the same file: `grep -c 'Failed password'` and a Python loop of one
compiled regex per line (the least a Python log reader can do). Lines per CPU second
(what one core does, however loaded the machine is), CPU and wall seconds.

live: the real `vigie-agent run -i lo` capturing while UDP traffic runs on lo, in PAIRS
pairs of runs (3): with [logs] off, then following a file a writer appends RATE lines/s
to (the same mix) for SECONDS. The agent's CPU (user + system, from /proc) and peak RSS
each time; the log path's share of one core is each pair's difference, and the median of
them is the figure. Needs root (capture on lo).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from agent import settings
from agent.logs.reader import LogReader
from common import config

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "logs"


def mix(noise_per_line: int = 4) -> list[str]:
    """Lines as a server logs them: each recorded line (auth, accounts, sudo, cron)
    followed by `noise_per_line` lines of programs no family reads."""
    real = []
    for name in ("openssh-9.2-traditional.log", "shadow-sudo-su-cron.log"):
        for line in (DATA / name).read_text().splitlines():
            real.append(line.split(" ", 1)[1] if line[0].isdigit() else line[16:])
    # "host prog[pid]: msg" with the time put back per line by the writer
    noise = [
        "vm kernel: [12345.678] eth0: link up, 1000 Mbps, full duplex",
        "vm systemd[1]: Starting Daily apt download activities...",
        "vm dbus-daemon[612]: [system] Successfully activated service 'org.freedesktop.PackageKit'",
        "vm postfix/smtpd[2212]: connect from unknown[192.0.2.33]",
    ]
    out = []
    for i, r in enumerate(real):
        out.append(r)
        out.extend(noise[(i + k) % 4] for k in range(noise_per_line))
    return out


def stamp(body: str, t: float) -> str:
    return time.strftime("%b %e %H:%M:%S ", time.localtime(t)) + body + "\n"


def throughput(n: int) -> None:
    lines = mix()
    tmp = Path(tempfile.mkdtemp(prefix="vigie-logs-bench-"))
    try:
        log = tmp / "auth.log"
        now = time.time()
        with open(log, "w") as f:
            for i in range(n):
                f.write(stamp(lines[i % len(lines)], now))
        size = log.stat().st_size
        rows = []
        s = config.defaults(settings.SCHEMA)["logs"]
        s.update(files=[str(log)], journal=False, key_files=[], catch_up=1e9)
        r = LogReader(s, None)
        r.files.start_bytes = r.files.max_read = 1 << 40
        c0, t0 = time.process_time(), time.perf_counter()
        batch = r.poll()
        rows.append(("vigie follower + parser", time.perf_counter() - t0,
                     time.process_time() - c0, len(batch.events)))  # fmt: skip
        rx = re.compile(r"sshd\[\d+\]: Failed password for (\S+) from (\S+)")
        c0, t0 = time.process_time(), time.perf_counter()
        hits = 0
        with open(log, encoding="utf-8", errors="replace") as f:
            for line in f:
                if rx.search(line):
                    hits += 1
        rows.append(("python: one regex per line", time.perf_counter() - t0,
                     time.process_time() - c0, hits))  # fmt: skip
        if shutil.which("grep"):
            t0 = time.perf_counter()
            ru0 = os.times()
            out = subprocess.run(["grep", "-c", "Failed password", str(log)],
                                 capture_output=True, text=True)  # fmt: skip
            ru1 = os.times()
            cpu = (ru1.children_user - ru0.children_user) + (
                ru1.children_system - ru0.children_system
            )
            rows.append(("grep -c 'Failed password'", time.perf_counter() - t0, cpu,
                         int(out.stdout or 0)))  # fmt: skip
        print(f"{n} lines, {size / 1e6:.1f} MB, {r.stats.parse.unmatched} unmatched, "
              f"{r.stats.parse.other} of programs no family reads")  # fmt: skip
        # Lines per CPU second: what one core would do, whatever else the machine runs.
        print(f"{'reader':32} {'lines/CPU s':>12} {'CPU s':>8} {'wall s':>8} {'matches':>9}")
        for name, wall, cpu, m in rows:
            print(f"{name:32} {n / max(cpu, 1e-9):>12,.0f} {cpu:>8.2f} {wall:>8.2f} {m:>9}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _udp(stop: threading.Event, pps: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    payload = b"x" * 200
    port = 40000
    while not stop.is_set():
        t0 = time.monotonic()
        for i in range(pps // 10):
            s.sendto(payload, ("127.0.0.1", port + i % 200))
        stop.wait(max(0.0, 0.1 - (time.monotonic() - t0)))


def _writer(stop: threading.Event, path: Path, rate: int, noise: int) -> int:
    lines = mix(noise)
    n = 0
    with open(path, "a") as f:
        while not stop.is_set():
            t0 = time.monotonic()
            now = time.time()
            for _ in range(rate // 10):
                f.write(stamp(lines[n % len(lines)], now))
                n += 1
            f.flush()
            stop.wait(max(0.0, 0.1 - (time.monotonic() - t0)))
    return n


def _run_agent(tmp: Path, logs_on: bool, rate: int, seconds: float, pps: int, noise: int) -> dict:
    log = tmp / "auth.log"
    log.write_text("")
    cfg = tmp / "agent.toml"
    cfg.write_text(
        "[host]\nenabled = false\n[metrics]\nlisten = ''\n"
        f"[logs]\nenabled = {'true' if logs_on else 'false'}\n"
        f'files = ["{log}"]\njournal = false\nkey_files = []\n'
    )
    exe = Path(sys.executable).parent / "vigie-agent"
    agent = subprocess.Popen(
        [str(exe), "run", "-i", "lo", "--output", "jsonl", "--config", str(cfg),
         "--state-dir", str(tmp / f"state-{logs_on}")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    stop = threading.Event()
    try:
        time.sleep(2.0)  # start-up is not the steady state
        p = psutil.Process(agent.pid)
        c0 = sum(p.cpu_times()[:2])
        traffic = threading.Thread(target=_udp, args=(stop, pps), daemon=True)
        traffic.start()
        written = [0]
        w = threading.Thread(target=lambda: written.__setitem__(0, _writer(stop, log, rate, noise)))
        if logs_on:
            w.start()
        rss = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rss = max(rss, p.memory_info().rss)
            time.sleep(0.5)
        cpu = sum(p.cpu_times()[:2]) - c0
        stop.set()
        if logs_on:
            w.join()
        return {"cpu": cpu, "rss": rss, "lines": written[0]}
    finally:
        stop.set()
        agent.terminate()
        agent.wait(30)


def live(rate: int, seconds: float, pps: int, noise: int, pairs: int = 3) -> None:
    """`pairs` runs with [logs] off then on, alternated, so that a change in the machine's
    load during the bench falls on both sides; the log path's share is each pair's
    difference, and the median of them is the figure."""
    import statistics

    tmp = Path(tempfile.mkdtemp(prefix="vigie-logs-live-"))
    runs = []
    try:
        for _ in range(pairs):
            runs.append((_run_agent(tmp, False, rate, seconds, pps, noise),
                         _run_agent(tmp, True, rate, seconds, pps, noise)))  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"agent capturing lo (~{pps} UDP packets/s), {pairs} pairs of {seconds:.0f} s runs; "
        f"one auth, account or cron line in {noise + 1}"
    )
    print(f"{'pair':5} {'off: CPU % core':>16} {'on: CPU % core':>15} {'log lines/s':>12} "
          f"{'log path %':>11} {'RSS off MB':>11} {'RSS on MB':>10}")  # fmt: skip
    shares, growth = [], []
    for i, (off, on) in enumerate(runs, 1):
        share = 100 * (on["cpu"] - off["cpu"]) / seconds
        shares.append(share)
        growth.append((on["rss"] - off["rss"]) / 1e6)
        print(f"{i:<5} {100 * off['cpu'] / seconds:>16.1f} {100 * on['cpu'] / seconds:>15.1f} "
              f"{on['lines'] / seconds:>12,.0f} {share:>11.1f} {off['rss'] / 1e6:>11.1f} "
              f"{on['rss'] / 1e6:>10.1f}")  # fmt: skip
    print(f"log path: median {statistics.median(shares):.1f} % of one core "
          f"(pairs: {', '.join(f'{x:.1f}' for x in shares)}; target < 5 %), "
          f"RSS +{statistics.median(growth):.1f} MB")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--lines", type=int, default=500_000)
    lv = sub.add_parser("live")
    lv.add_argument("--rate", type=int, default=10_000)
    lv.add_argument("--seconds", type=float, default=60.0)
    lv.add_argument("--pps", type=int, default=5_000)
    lv.add_argument("--pairs", type=int, default=3, help="off/on runs, alternated")
    lv.add_argument(
        "--noise",
        type=int,
        default=4,
        help="lines of other programs after each auth line (4: an attack in progress; "
        "49: an ordinary busy server)",
    )
    a = ap.parse_args()
    if a.what == "throughput":
        throughput(a.lines)
    else:
        live(a.rate, a.seconds, a.pps, a.noise, a.pairs)


if __name__ == "__main__":
    main()
