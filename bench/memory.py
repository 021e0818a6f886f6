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
    ts = 1_700_000_000.0
    payload = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"
    for i in range(flows):
        client = bytes((10, 1 + (i >> 16) % 200, (i >> 8) & 255, i & 255))
        server = bytes((93, 184, (i >> 8) & 255, 1 + i % 250))
        sport, dport = 1024 + i % 60000, (443, 80, 22, 8080)[i % 4]
        ts += 0.0005  # 100k flows in 50 s: all still active (idle timeouts 60/300 s)
        feed(ts, 1, 54, frame(client, server, sport, dport, 0x02, b""))
        feed(ts, 1, 54, frame(server, client, dport, sport, 0x12, b""))
        feed(ts, 1, 54 + len(payload), frame(client, server, sport, dport, 0x18, payload))
    gc.collect()
    after = me.memory_info().rss
    return {"active": len(pipe.engine), "before": before, "after": after}


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
    args = ap.parse_args()
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
