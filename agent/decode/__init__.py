"""Decoding: frames into packet records (in the engine, agent/engine), application
messages from payloads (deep/).

`make_decoder` decodes one frame at a time, for tools and tests; the pipeline leaves
decoding to the engine, which counts the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from agent.engine import Packet, decode

__all__ = ["DecodeStats", "Decoder", "make_decoder"]

Decoder = Callable[[float, int, int, bytes], Packet | None]


@dataclass(slots=True)
class DecodeStats:
    """Every frame lands in exactly one bucket:
    `packets == decoded + sum(malformed.values()) + sum(skipped.values())`."""

    packets: int = 0
    decoded: int = 0
    malformed: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)


def make_decoder(stats: DecodeStats) -> Decoder:
    """Return `decode(ts, linktype, wirelen, frame) -> Packet | None` counting into
    `stats`. Link types: 1 Ethernet, 0/108 BSD loopback, 101/12/14 raw IP, 228/229 raw
    IPv4/IPv6, 113 Linux SLL, 276 SLL2. It never raises on frame contents."""

    def one(ts: float, linktype: int, wirelen: int, frame: bytes) -> Packet | None:
        stats.packets += 1
        p, reason, skipped = decode(ts, linktype, wirelen, frame)
        if p is not None:
            stats.decoded += 1
            return p
        bucket = stats.skipped if skipped else stats.malformed
        bucket[reason] = bucket.get(reason, 0) + 1
        return None

    return one
