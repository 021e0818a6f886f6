"""Hostile packets: every decoder fuzzed from real seeds, and damaged real captures fed
through the whole pipeline. Nothing raises; every frame is counted in one bucket.

The fuzz targets live in tests/fuzz/targets.py; here hypothesis runs them briefly (CI),
bench/fuzz.py runs them coverage-guided for as long as one likes.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.capture.pcapfile import CaptureError, ReadStats, read_capture
from tests.conftest import CORPUS
from tests.deep_support import needs_corpus
from tests.fuzz import targets as T
from tests.fuzz.pipe import check_accounting, new_pipeline

FAST = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=False,
)


@st.composite
def mutated(draw: st.DrawFn, name: str) -> bytes:
    """A corpus seed for `name`, damaged the way an attacker or a bad link would."""
    pool = T.seeds(name)
    if not pool or draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=512))
    b = bytearray(draw(st.sampled_from(pool)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.integers(0, 4))
        if op == 0 and b:  # bit flip
            b[draw(st.integers(0, len(b) - 1))] ^= 1 << draw(st.integers(0, 7))
        elif op == 1:  # truncation
            del b[draw(st.integers(0, len(b))) :]
        elif op == 2 and len(b) > 1:  # a length-looking field set to an edge value
            i = draw(st.integers(0, len(b) - 2))
            b[i : i + 2] = draw(st.sampled_from([b"\0\0", b"\xff\xff", b"\x7f\xff", b"\0\x01"]))
        elif op == 3:  # inserted bytes
            i = draw(st.integers(0, len(b)))
            b[i:i] = draw(st.binary(min_size=1, max_size=32))
        elif op == 4 and b:  # a slice repeated (loops, repeated options)
            i = draw(st.integers(0, len(b) - 1))
            b[i:i] = b[i : i + draw(st.integers(1, 64))]
    return bytes(b)


@pytest.mark.parametrize("name", [n for n in T.TARGETS if n != "pipeline"])
def test_fuzz_target(name: str) -> None:
    target = T.TARGETS[name]

    @FAST
    @given(data=mutated(name))
    def run(data: bytes) -> None:
        target(data)

    run()


@FAST
@given(data=mutated("pipeline"))
def test_fuzz_pipeline(data: bytes) -> None:
    T.pipeline(data)


@needs_corpus
@pytest.mark.parametrize("name", list(T.TARGETS))
def test_every_seed_passes(name: str) -> None:
    """The unmutated seeds: real traffic must of course go through cleanly."""
    for seed in T.seeds(name):
        T.TARGETS[name](seed)


# Damaged real captures through the whole pipeline ----------------------------------------


def _ip_offset(frame: bytes) -> tuple[int, int]:
    """(offset of the IP header, version) in an Ethernet frame, or (-1, 0)."""
    off = 12
    etype = int.from_bytes(frame[off : off + 2], "big")
    while etype in (0x8100, 0x88A8, 0x9100) and len(frame) >= off + 6:
        off += 4
        etype = int.from_bytes(frame[off : off + 2], "big")
    if etype == 0x0800 and len(frame) >= off + 22:
        return off + 2, 4
    if etype == 0x86DD and len(frame) >= off + 42:
        return off + 2, 6
    return -1, 0


def _put16(b: bytearray, at: int, v: int) -> None:
    if at >= 0 and at + 2 <= len(b):
        b[at : at + 2] = struct.pack("!H", v & 0xFFFF)


EDGE16 = (0, 1, 7, 8, 19, 20, 39, 40, 41, 1500, 0x7FFF, 0xFFFF)


def mutate_frame(rng: random.Random, kind: str, frame: bytes) -> bytes:
    b = bytearray(frame)
    ip, ver = _ip_offset(frame)
    if kind == "truncate":
        return bytes(b[: rng.randint(0, len(b))])
    if kind == "bitflip":
        for _ in range(rng.randint(1, 4)):
            if b:
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return bytes(b)
    if ip < 0:
        return bytes(b)
    if ver == 4:
        ihl = (b[ip] & 15) * 4
        l4 = ip + max(ihl, 20)
        proto = b[ip + 9]
    else:
        ihl, l4, proto = 40, ip + 40, b[ip + 6]
    if kind == "ip_length":
        pick = rng.choice((*EDGE16, len(b) - ip + rng.randint(-30, 30)))
        _put16(b, ip + 2 if ver == 4 else ip + 4, pick)
    elif kind == "ip_header_length" and ver == 4:
        b[ip] = 0x40 | rng.randrange(16)
    elif kind == "udp_length" and proto == 17:
        _put16(b, l4 + 4, rng.choice(EDGE16))
    elif kind == "tcp_offset" and proto == 6 and l4 + 13 <= len(b):
        b[l4 + 12] = rng.randrange(16) << 4 | (b[l4 + 12] & 15)
    elif kind == "fragment" and ver == 4:
        # MF and/or a fragment offset, possibly pointing past the end of any datagram.
        _put16(
            b, ip + 6, rng.choice((0x2000, 0x2001, 0x0001, 0x1FFF, 0x3FFF, rng.randrange(1 << 16)))
        )
    elif kind == "fragment" and ver == 6:
        b[ip + 6] = 44  # next header: a fragment header made of whatever follows
    return bytes(b)


KINDS = ("truncate", "bitflip", "ip_length", "ip_header_length", "udp_length", "tcp_offset",
         "fragment")  # fmt: skip


def _feed(records: list[tuple[float, int, int, bytes]]) -> tuple:
    pipe, out = new_pipeline()
    for rec in records:
        pipe.feed(*rec)
    pipe.finish()
    check_accounting(pipe, len(records))
    return pipe, out


@needs_corpus
@pytest.mark.parametrize("kind", KINDS)
def test_corpus_mutations_through_the_pipeline(kind: str) -> None:
    """Every corpus frame (a sample of them for the biggest captures) mutated one way."""
    rng = random.Random(f"hostile-{kind}")
    fed = []
    for path in sorted(CORPUS.glob("*/*.pcap*")):
        try:
            recs = list(read_capture(path))
        except CaptureError:
            continue
        step = max(1, len(recs) // 1500)
        for ts, lt, wl, fr in recs[::step]:
            fed.append((ts, lt, wl, mutate_frame(rng, kind, bytes(fr)) if lt == 1 else fr))
    assert len(fed) > 1000
    pipe, _ = _feed(fed)
    if kind in ("ip_length", "ip_header_length", "tcp_offset", "truncate"):
        assert sum(pipe.decode_stats.malformed.values()) > 0  # the damage was seen and counted


@needs_corpus
def test_malformed_captures_whole() -> None:
    """The corpus's own malformed captures: readable records go through, damage is counted."""
    seen = {}
    for path in sorted((CORPUS / "malformed").glob("*.pcap*")):
        stats = ReadStats()
        recs = list(read_capture(path, stats))
        _feed(recs)
        seen[path.name] = (stats.records, dict(stats.errors))
    assert seen["damaged_file_bad_record_length.pcap"][1] == {"record_bad_length": 1}
    assert seen["damaged_file_truncated_record.pcap"][1] == {"record_truncated": 1}


def _frag_frames() -> list[bytes]:
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
    from scapy.layers.l2 import Ether

    e = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    a, v = "10.1.1.1", "10.1.1.2"
    data = b"A" * 64
    out = [
        # teardrop: the second fragment starts inside the first, and ends before it does
        e / IP(src=a, dst=v, id=7, flags="MF", frag=0, proto=17) / (b"\x00\x35\x00\x35" + data),
        e / IP(src=a, dst=v, id=7, frag=3, proto=17) / (b"B" * 8),
        # overlapping rewrite of the TCP header (port rewrite attack)
        e / IP(src=a, dst=v, id=8, flags="MF", frag=0) / TCP(dport=80, flags="S"),
        e / IP(src=a, dst=v, id=8, frag=0, proto=6) / bytes(TCP(dport=445, flags="S")),
        # tiny first fragment (ports only), offset at the very end of the datagram range
        e / IP(src=a, dst=v, id=9, flags="MF", frag=0, proto=6) / b"\x01\xbb\x01\xbd",
        e / IP(src=a, dst=v, id=9, frag=0x1FFF, proto=6) / data,
        # same fragment twice, and a last fragment with no first one
        e / IP(src=a, dst=v, id=10, frag=1, proto=17) / data,
        e / IP(src=a, dst=v, id=10, frag=1, proto=17) / data,
        e / IP(src=a, dst=v, id=11, frag=100, proto=17) / b"",
        # IPv6: overlapping fragments of one datagram, and an atomic fragment
        e
        / IPv6(src="fd00::1", dst="fd00::2")
        / IPv6ExtHdrFragment(id=1, m=1, offset=0, nh=17)
        / UDP(dport=53)
        / data,
        e
        / IPv6(src="fd00::1", dst="fd00::2")
        / IPv6ExtHdrFragment(id=1, m=0, offset=1, nh=17)
        / data,
        e
        / IPv6(src="fd00::1", dst="fd00::2")
        / IPv6ExtHdrFragment(id=2, m=0, offset=0, nh=6)
        / TCP(dport=22, flags="S"),
        e / IPv6(src="fd00::1", dst="fd00::2", plen=4) / IPv6ExtHdrFragment(id=3, nh=44) / data,
    ]
    return [bytes(p) for p in out]


def test_overlapping_and_odd_fragments() -> None:
    frames = _frag_frames()
    rng = random.Random(5)
    recs = [(1_700_000_000.0 + i, 1, len(f), f) for i, f in enumerate(frames)]
    # and every truncation of each of them
    recs += [(1_700_000_100.0, 1, len(f), f[:i]) for f in frames for i in range(0, len(f), 3)]
    recs += [(1_700_000_200.0, 1, len(f), mutate_frame(rng, "fragment", f)) for f in frames * 20]
    pipe, _ = _feed(recs)
    assert pipe.decode_stats.decoded >= len(frames)


@needs_corpus
def test_damaged_capture_files(tmp_path: Path) -> None:
    """The file itself cut and corrupted: refused with CaptureError, or read up to the
    damage with the damage counted; what was read goes through the pipeline."""
    rng = random.Random(11)
    sources = [p for p in sorted(CORPUS.glob("*/*.pcap*")) if p.stat().st_size < 200_000]
    tried = refused = damaged = 0
    for i in range(120):
        raw = bytearray(rng.choice(sources).read_bytes())
        how = i % 3
        if how == 0:
            raw = raw[: rng.randint(0, len(raw))]
        elif how == 1:
            for _ in range(rng.randint(1, 20)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
        else:  # a record length field (pcap: bytes 8..16 of a record header) made huge
            at = 24 + rng.randrange(max(1, len(raw) - 40))
            raw[at : at + 4] = rng.choice((b"\xff\xff\xff\xff", b"\x00\x00\x10\x00", b"\0\0\0\0"))
        p = tmp_path / f"d{i}.pcap"
        p.write_bytes(bytes(raw))
        stats = ReadStats()
        try:
            recs = list(read_capture(p, stats))
        except CaptureError:
            refused += 1
            continue
        tried += 1
        damaged += bool(stats.errors)
        assert stats.records == len(recs)
        _feed(recs)
    assert tried > 50 and damaged > 0
