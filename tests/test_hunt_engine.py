"""The journal's connection and UDP DNS records made by the engine (agent/engine/journal.c)
are those the Python path makes from Flow ends and DNS messages: same records, same index,
on real captures and on traffic built for the edges (IPv6 zero runs, counters past 32
bits, a Latin-1 name, a query never answered, an answer whose query was not seen)."""

from __future__ import annotations

import struct
import time
from pathlib import Path

from agent import settings
from agent.capture.pcapfile import read_capture
from agent.detect.hooks import Wants
from agent.hunt import segment as seg
from agent.hunt.journal import Journal, journal_dir, segments
from agent.pipeline import Pipeline
from common import config
from tests.detect_support import ANON, corpus


class PythonJournal(Journal):
    """The journal fed the Python way: every flow end and DNS message as an event."""

    wants = Wants(
        app_kinds=frozenset(("dns", "tls_client_hello", "http", "smb", "dcerpc")),
        http_headers=("host",),
        dns=True,
        flow_end="all",
    )
    use_engine = None

    def on_flow_end(self, flow) -> None:
        self.flow_end(flow)


def _frame(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    if len(src) == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, src, dst)
        return b"\2\0\0\0\0\1\2\0\0\0\0\2\x08\x00" + ip + udp
    ip = struct.pack("!IHBB16s16s", 6 << 28, len(udp), 17, 64, src, dst)
    return b"\2\0\0\0\0\1\2\0\0\0\0\2\x86\xdd" + ip + udp


def _dns(ident: int, labels: list[bytes], answer: bool) -> bytes:
    q = b"".join(bytes([len(x)]) + x for x in labels) + b"\0\0\1\0\1"
    if not answer:
        return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + q
    rr = b"\xc0\x0c\0\1\0\1\0\0\x0e\x10\0\4\xc0\0\2\1"
    return struct.pack("!HHHHHH", ident, 0x8183, 1, 1, 0, 0) + q + rr


def _edges() -> list[tuple[float, int, bytes]]:
    """(ts, wire length, frame)"""
    c4, s4 = bytes([10, 0, 0, 1]), bytes([192, 0, 2, 53])
    c6 = bytes.fromhex("fe800000000000000000000000000001")
    s6 = bytes.fromhex("20010db8000000010000000000000000")
    out = []
    t = 1_700_000_000.0
    # counters past 32 bits (what the wire length says)
    for i in range(3):
        out.append((t + i, 3_000_000_000, _frame(c4, bytes([198, 51, 100, 7]), 4000, 9000, b"x")))
    latin = [b"CAF\xc9\xe9", b"example", b"org"]
    out += [
        (t + 5, 0, _frame(c4, s4, 5301, 53, _dns(1, latin, False))),
        (t + 5.1, 0, _frame(s4, c4, 53, 5301, _dns(1, latin, True))),
        (t + 6, 0, _frame(c4, s4, 5302, 53, _dns(2, [b"never", b"example", b"net"], False))),
        (t + 7, 0, _frame(s4, c4, 53, 5303, _dns(3, [b"alone", b"example", b"com"], True))),
        (t + 8, 0, _frame(c6, s6, 5304, 53, _dns(4, [b"v6", b"example", b"org"], False))),
        (t + 8.2, 0, _frame(s6, c6, 53, 5304, _dns(4, [b"v6", b"example", b"org"], True))),
    ]
    return out


def _journal(state: Path, cls: type, feed) -> tuple[list, list]:
    cfg = config.validate(
        {"state_dir": str(state), "journal": {"max_age_days": 100_000.0, "block_records": 16}},
        settings.SCHEMA,
        "test",
    )
    pipe = Pipeline(cfg, ANON, [].append, time.time)
    pipe.add_taker(cls(journal_dir(cfg), cfg["journal"]))
    feed(pipe)
    pipe.finish()
    records, index = [], []
    for p in segments(journal_dir(cfg)):
        with seg.Segment(p) as s:
            for block in s.all_blocks():
                records += block
            s._load()
            index.append((p.name, s.header["counts"], s.header["nkeys"], list(s._keys),
                          list(s._posts), list(s._v4), s._v6, s.bloom))  # fmt: skip
    return sorted(records, key=repr), index


def _both(tmp_path: Path, feed) -> tuple[tuple, tuple]:
    return (
        _journal(tmp_path / "engine", Journal, feed),
        _journal(tmp_path / "python", PythonJournal, feed),
    )


def test_engine_records_equal_the_python_paths_on_edges(tmp_path):
    def feed(pipe):
        for ts, wirelen, frame in _edges():
            pipe.feed(ts, 1, wirelen or len(frame), frame)

    (records, index), (want, want_index) = _both(tmp_path, feed)
    assert records == want and index == want_index
    by_kind = {r[0] for r in records}
    assert by_kind == {"c", "d"}
    big = [r for r in records if r[0] == "c" and r[6] == 9000]
    assert big[0][9] == 9_000_000_000  # past 32 bits, as the wire said
    names = {r[6]: r for r in records if r[0] == "d"}
    assert names["cafÉé.example.org".lower()][8] == 3  # NXDOMAIN, its query's time
    assert names["never.example.net"][8] == -1  # asked, never answered
    assert names["alone.example.com"][2] == "10.0.0.1"  # the client first without the query
    assert names["v6.example.org"][2:5] == ["fe80::1", 5304, "2001:db8:0:1::"]


def test_engine_records_equal_the_python_paths_on_captures(tmp_path):
    caps = [corpus("dns/dns_edns_ecs_v4_v6_udp_tcp.pcap"),
            corpus("benign/benign_ipv6_dns_ssh_icmpv6.pcap")]  # fmt: skip

    def feed(pipe):
        for cap in caps:
            for ts, *rest in read_capture(str(cap)):
                pipe.feed(ts, *rest)

    (records, index), (want, want_index) = _both(tmp_path, feed)
    assert len(records) > 50 and {"c", "d"} <= {r[0] for r in records}
    assert records == want and index == want_index
