"""Agent resident memory with many active flows:

    .venv/bin/python bench/memory.py [--flows 100000]

Builds the agent's Pipeline (default settings, every detector enabled), then feeds it
one TCP handshake-and-data exchange per flow between distinct internal/external address
pairs, all within the idle timeouts so every flow stays active. RSS (psutil) before and
after, and per flow.
"""

from __future__ import annotations

import argparse
import gc
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from agent import settings
from agent.cli import _anonymiser
from agent.pipeline import Pipeline
from common import config

_FRAME = struct.Struct("!6s6sHBBHHHBBH4s4sHHIIBBHHH")


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=100_000)
    ap.add_argument("--detectors", choices=("all", "none"), default="all")
    args = ap.parse_args()
    cfg = config.load(None, settings.SCHEMA)
    if args.detectors == "none":  # the flow table and decoder alone
        for d in cfg["detectors"].values():
            d["enabled"] = False
    cfg["state_dir"] = tempfile.mkdtemp(prefix="vigie-mem-")
    me = psutil.Process()
    pipe = Pipeline(cfg, _anonymiser(cfg), lambda a: None, time.time)
    gc.collect()
    before = me.memory_info().rss
    feed = pipe.feed
    ts = 1_700_000_000.0
    payload = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"
    for i in range(args.flows):
        client = bytes((10, 1 + (i >> 16) % 200, (i >> 8) & 255, i & 255))
        server = bytes((93, 184, (i >> 8) & 255, 1 + i % 250))
        sport, dport = 1024 + i % 60000, (443, 80, 22, 8080)[i % 4]
        ts += 0.0005  # 100k flows in 50 s: all still active (idle timeouts 60/300 s)
        feed(ts, 1, 54, frame(client, server, sport, dport, 0x02, b""))
        feed(ts, 1, 54, frame(server, client, dport, sport, 0x12, b""))
        feed(ts, 1, 54 + len(payload), frame(client, server, sport, dport, 0x18, payload))
    gc.collect()
    after = me.memory_info().rss
    active = len(pipe.flows)
    mb = 1 << 20
    print(
        f"{'active flows':>12} {'RSS before':>11} {'RSS after':>10} {'growth':>8} {'per flow':>9}"
    )
    print(
        f"{active:12d} {before / mb:9.1f} MB {after / mb:8.1f} MB {(after - before) / mb:6.1f} MB "
        f"{(after - before) / max(1, active):7.0f} B"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
