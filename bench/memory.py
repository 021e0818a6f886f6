"""Agent resident memory with many active flows:

    .venv/bin/python bench/memory.py [--flows 100000] [--detectors all|none|NAME] [--each]

Builds the agent's Pipeline (default settings), then feeds it one TCP handshake-and-data
exchange per flow between distinct internal/external address pairs, all within the idle
timeouts so every flow stays active. RSS (psutil) before and after, and per flow.

Without --detectors, two runs side by side, each in a fresh process (RSS only grows, so
one process cannot measure both): every detector enabled, and none (the decoder and the
flow table alone); their difference is what the detectors' state costs. --each adds one
run per network detector enabled alone, to tell which detector holds what. --detectors runs one
configuration in this process.

--live measures the agent as it runs in production instead: a collector and an enrolled
`vigie-agent run --output collector` (gRPC stream, outbox, every default detector, ring
capture) in a network namespace the bench creates; tcpreplay sends the same 100k flows
from the peer namespace; the agent's VmRSS is read before and once they are all in its
flow table (its metrics endpoint says how many); --hold S reads it again every 20 s for S
seconds while the flows stay active. Needs root, iproute2 and tcpreplay.
"""

from __future__ import annotations

import argparse
import gc
import json
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from agent import settings
from agent.cli import _anonymiser
from agent.detect import registry
from agent.pipeline import Pipeline
from common import config

_FRAME = struct.Struct("!6s6sHBBHHHBBH4s4sHHIIBBHHH")
MB = 1 << 20


def frame(src: bytes, dst: bytes, sport: int, dport: int, flags: int, payload: bytes) -> bytes:
    tlen = 40 + len(payload)
    return (
        _FRAME.pack(
            b"\x02\x00\x00\x00\x00\x01",
            b"\x02\x00\x00\x00\x00\x02",
            0x0800,
            0x45,
            0,
            tlen,
            0,
            0x4000,
            64,
            6,
            0,
            src,
            dst,
            sport,
            dport,
            1,
            0,
            0x50,
            flags,
            65535,
            0,
            0,
        )
        + payload
    )


def _frames(flows: int) -> Iterator[tuple[float, bytes]]:
    """One handshake and one request per flow, each between its own internal client and
    external server, 0.5 ms apart: 100k flows in 50 s, all still active (idle timeouts
    60/300 s). Made one at a time, so that they weigh nothing in the RSS measured."""
    ts = 1_700_000_000.0
    payload = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"
    for i in range(flows):
        client = bytes((10, 1 + (i >> 16) % 200, (i >> 8) & 255, i & 255))
        server = bytes((93, 184, (i >> 8) & 255, 1 + i % 250))
        sport, dport = 1024 + i % 60000, (443, 80, 22, 8080)[i % 4]
        ts += 0.0005
        yield ts, frame(client, server, sport, dport, 0x02, b"")
        yield ts, frame(server, client, dport, sport, 0x12, b"")
        yield ts, frame(client, server, sport, dport, 0x18, payload)


def measure(flows: int, detectors: str) -> dict[str, float]:
    """Feed `flows` flows to a fresh Pipeline with `detectors` enabled ("all", "none" or
    one detector's config key); RSS before and after, in bytes."""
    cfg = config.load(None, settings.SCHEMA)
    if detectors != "all":
        for key, d in cfg["detectors"].items():
            d["enabled"] = key == detectors
    cfg["state_dir"] = tempfile.mkdtemp(prefix="vigie-mem-")
    me = psutil.Process()
    pipe = Pipeline(cfg, _anonymiser(cfg), lambda a: None, time.time)
    gc.collect()
    before = me.memory_info().rss
    feed = pipe.feed
    for ts, fr in _frames(flows):
        feed(ts, 1, len(fr), fr)
    gc.collect()
    after = me.memory_info().rss
    return {"active": len(pipe.engine), "before": before, "after": after}


def _rss(pid: int) -> dict[str, int]:
    """VmRSS and its parts (RssAnon: the heap; RssFile: mapped libraries, and the pages of
    the capture ring the kernel wrote to, "socket:[...]" in smaps; in bytes)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def _top_mappings(pid: int, n: int = 8) -> list[tuple[int, str]]:
    """The mappings holding the most resident memory: (bytes, name)."""
    out, name = {}, ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        parts = line.split()
        if "-" in parts[0] and len(parts) >= 5:
            name = parts[5] if len(parts) > 5 else "[anon]"
        elif parts[0] == "Rss:":
            out[name] = out.get(name, 0) + int(parts[1]) * 1024
    return sorted(((v, k) for k, v in out.items()), reverse=True)[:n]


def live(flows: int, config: str | None = None, hold: float = 0.0) -> int:
    """The running agent's RSS with `flows` active flows (see the module docstring)."""
    import shutil
    import time as _time

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from netns import NetnsPair, available

    if reason := available():
        print(f"memory --live: {reason}", file=sys.stderr)
        return 1
    if not shutil.which("tcpreplay"):
        print("memory --live: tcpreplay is not installed (bench/setup.sh)", file=sys.stderr)
        return 1
    bin_ = Path(sys.executable).parent
    tmp = Path(tempfile.mkdtemp(prefix="vigie-memlive-"))
    pcap = tmp / "flows.pcap"
    with pcap.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for ts, fr in _frames(flows):
            f.write(struct.pack("<IIII", int(ts), int(ts % 1 * 1e6), len(fr), len(fr)) + fr)
    procs: list[subprocess.Popen] = []
    with NetnsPair("mm") as ns:
        try:
            cstate, astate = tmp / "collector", tmp / "agent"
            clog = (tmp / "collector.log").open("wb")
            procs.append(ns.popen(ns.a, [str(bin_ / "vigie-collector"), "serve", "--state-dir",
                                         str(cstate), "--listen", "127.0.0.1:7443",
                                         "--enroll-listen", "127.0.0.1:7444"],
                                  stdout=clog, stderr=subprocess.STDOUT))  # fmt: skip
            deadline = _time.monotonic() + 30
            while b"collector_listening" not in (tmp / "collector.log").read_bytes():
                if _time.monotonic() > deadline or procs[0].poll() is not None:
                    raise RuntimeError((tmp / "collector.log").read_text())
                _time.sleep(0.1)
            tok = ns.run(ns.a, [str(bin_ / "vigie-collector"), "token", "create", "--state-dir",
                                str(cstate), "--region", "11", "--ght", "GHT-BENCH",
                                "--finess", "750000001", "--ttl", "1h"],
                         capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
            ns.run(ns.a, [str(bin_ / "vigie-agent"), "enroll", "--collector", "127.0.0.1:7444",
                          "--token", tok, "--state-dir", str(astate)],
                   capture_output=True, check=True)  # fmt: skip
            alog = (tmp / "agent.log").open("wb")
            agent = ns.popen(ns.a, [str(bin_ / "vigie-agent"), "run", "-i", ns.if_a,
                                    "--state-dir", str(astate), "--output", "collector",
                                    "--collector", "127.0.0.1:7443",
                                    *(["--config", config] if config else [])],
                             stdout=alog, stderr=subprocess.STDOUT)  # fmt: skip
            procs.append(agent)
            deadline = _time.monotonic() + 30
            while b"capture_started" not in (tmp / "agent.log").read_bytes():
                if _time.monotonic() > deadline or agent.poll() is not None:
                    raise RuntimeError((tmp / "agent.log").read_text())
                _time.sleep(0.1)
            _time.sleep(2.0)  # settled: stream connected, first heartbeat sent
            before = _rss(agent.pid)
            ns.run(ns.b, ["tcpreplay", "-q", "-i", ns.if_b, "--pps=50000", str(pcap)],
                   capture_output=True, check=True)  # fmt: skip
            _time.sleep(3.0)  # a tick or two: every flow counted, the ring emptied
            after = _rss(agent.pid)
            top = _top_mappings(agent.pid)
            # the flows stay active (idle timeouts 60/300 s): does the agent settle?
            held = []
            t0 = _time.monotonic()
            while _time.monotonic() - t0 < hold:
                _time.sleep(min(20.0, hold - (_time.monotonic() - t0)))
                held.append((3.0 + _time.monotonic() - t0, _rss(agent.pid)))
            metrics = ns.run(ns.a, [sys.executable, "-c", "import urllib.request; print("
                                    "urllib.request.urlopen('http://127.0.0.1:9750/metrics')"
                                    ".read().decode())"],
                             capture_output=True, text=True).stdout  # fmt: skip
            active = next((float(x.split()[-1]) for x in metrics.splitlines()
                           if x.startswith("vigie_agent_flows ")), 0.0)  # fmt: skip
        finally:
            for p in reversed(procs):
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
    print("vigie-agent run --output collector, every default detector, ring capture")
    print(f"{'':<28} {'flows':>7} {'RSS before':>11} {'RSS after':>11} {'growth':>10} "
          f"{'per flow':>9}")  # fmt: skip
    for part, label in (
        ("VmRSS", "running agent"),
        ("RssAnon", "  of which heap (anon)"),
        ("RssFile", "  mapped: libraries, ring"),
    ):
        print(_row(label, {"active": active, "before": before[part], "after": after[part]}))
    for secs, rss in held:
        r = {"active": active, "before": before["VmRSS"], "after": rss["VmRSS"]}
        print(_row(f"  {secs:.0f} s later", r))
    print("\nlargest mappings, resident:")
    for size, name in top:
        print(f"  {size / MB:7.1f} MB  {name}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _in_child(flows: int, detectors: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--flows", str(flows), "--detectors", detectors, "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.splitlines()[-1])


def _row(label: str, r: dict[str, float]) -> str:
    growth = r["after"] - r["before"]
    return (
        f"{label:<28} {r['active']:>7.0f} {r['before'] / MB:8.1f} MB {r['after'] / MB:8.1f} MB "
        f"{growth / MB:7.1f} MB {growth / max(1, r['active']):7.0f} B"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=100_000)
    keys = ["all", "none", *(registry.config_key(d) for d in registry.DETECTORS)]
    ap.add_argument("--detectors", choices=keys, help="one configuration, in this process")
    ap.add_argument("--each", action="store_true", help="also each detector alone")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # child runs
    ap.add_argument("--live", action="store_true", help="the running agent (needs root)")
    ap.add_argument("--config", help="--live: the agent's config file (default: built-in)")
    ap.add_argument(
        "--hold",
        type=float,
        default=0.0,
        help="--live: read the RSS again every 20 s for this long, flows active",
    )
    args = ap.parse_args()
    if args.live:
        return live(args.flows, args.config, args.hold)
    if args.detectors and args.json:
        print(json.dumps(measure(args.flows, args.detectors)))
        return 0
    header = (
        f"{'detectors':<28} {'flows':>7} {'RSS before':>11} {'RSS after':>11} "
        f"{'growth':>10} {'per flow':>9}"
    )
    if args.detectors:
        print(header)
        print(_row(args.detectors, measure(args.flows, args.detectors)))
        return 0
    runs = {"all": _in_child(args.flows, "all"), "none": _in_child(args.flows, "none")}
    print(header)
    print(_row("all", runs["all"]))
    print(_row("none (decoder + flow table)", runs["none"]))
    share = {
        "active": runs["all"]["active"],
        "before": runs["none"]["after"],
        "after": runs["all"]["after"],
    }
    print(_row("detectors' share (all-none)", share))
    if args.each:
        # Each alone, over the same flow table: what that detector's state costs.
        print(f"\n{'one detector alone':<28} {'over none':>10} {'per flow':>9}")
        for d in registry.DETECTORS:
            if not d.name.startswith("net."):
                continue  # host detectors see no packets
            key = registry.config_key(d)
            r = _in_child(args.flows, key)
            extra = r["after"] - runs["none"]["after"]
            print(f"{key:<28} {extra / MB:7.1f} MB {extra / max(1, r['active']):7.0f} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
