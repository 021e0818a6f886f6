"""The journal's connection and UDP DNS records made by the engine (agent/engine/journal.c)
are those the Python path makes from Flow ends and DNS messages: same records, same index,
on real captures and on traffic built for the edges (IPv6 zero runs, counters past 32
bits, a Latin-1 name, a query never answered, an answer whose query was not seen, answers
with CNAMEs and addresses, malformed answer sections)."""

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
from tests.detect_support import ANON, corpus, data


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


def _rr(owner: bytes, rtype: int, rdata: bytes, rdlen: int | None = None) -> bytes:
    n = len(rdata) if rdlen is None else rdlen
    return owner + struct.pack("!HHIH", rtype, 1, 60, n) + rdata


def _answers(ident: int, labels: list[bytes], rrs: list[bytes]) -> bytes:
    """A response to an A query for `labels` (its name at offset 12) with these records."""
    q = b"".join(bytes([len(x)]) + x for x in labels) + b"\0\0\1\0\1"
    return struct.pack("!HHHHHH", ident, 0x8180, 1, len(rrs), 0, 0) + q + b"".join(rrs)


C2 = bytes([203, 0, 113, 66])
C2V6 = bytes.fromhex("20010db8000000000000000000000066")
LOOP = b"\xc0\x0c"  # the question's name, at offset 12


def _answered() -> list[tuple[bytes, bytes]]:
    """(query, response) pairs: a CNAME chain to addresses (more than 8 answers), and
    answer sections the parser must survive: rdata cut short, a CNAME pointing at itself,
    an A with 5 bytes of data, a CNAME running past its data, a mapped IPv6 address."""
    name = [b"cdn", b"example", b"org"]
    chain = [
        _rr(LOOP, 5, b"\x04edge\x05cdnco\x03NET\x00"),
        _rr(b"\x04edge\x05cdnco\x03net\x00", 1, C2),
        _rr(LOOP, 28, C2V6),
    ]
    chain += [_rr(LOOP, 1, bytes([198, 51, 100, i])) for i in range(1, 8)]
    # the first record's data: past the header, "loop.example.org" and its type and class,
    # the record's owner (a pointer) and fixed fields
    looped = _rr(LOOP, 5, struct.pack("!H", 0xC000 | 12 + 18 + 4 + 12))  # points at itself
    mapped = bytes(10) + b"\xff\xff" + C2
    cases = [
        (name, chain),
        ([b"cut", b"example", b"org"], [_rr(LOOP, 1, C2), _rr(LOOP, 1, b"\1\2", rdlen=4)]),
        ([b"loop", b"example", b"org"], [looped, _rr(LOOP, 1, C2)]),
        ([b"five", b"example", b"org"], [_rr(LOOP, 1, C2 + b"\0"), _rr(LOOP, 28, mapped)]),
        ([b"long", b"example", b"org"], [_rr(LOOP, 5, b"\x03abc\x03def\x00", rdlen=3)]),
        ([b"bad", b"example", b"org"], [_rr(LOOP, 5, b"\x40" + b"x" * 64 + b"\x00")]),
    ]
    out = []
    for i, (labels, rrs) in enumerate(cases):
        q = _dns(100 + i, labels, False)
        out.append((q, _answers(100 + i, labels, rrs)))
    return out


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
    for i, (q, a) in enumerate(_answered()):
        out.append((t + 10 + i, 0, _frame(c4, s4, 6000 + i, 53, q)))
        out.append((t + 10.1 + i, 0, _frame(s4, c4, 53, 6000 + i, a)))
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
            # Not the postings: which block a record lands in follows when the engine's
            # records are taken (at ticks), not the order the Python path writes them;
            # searches through the postings are tested on both paths.
            index.append((p.name, s.header["counts"], s.header["nkeys"], list(s._keys),
                          list(s._v4), s._v6, s.bloom))  # fmt: skip
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
    # Answers: at most 8, in order, the CNAME target lower-cased, addresses as text.
    assert names["cdn.example.org"][9:] == [10, ["edge.cdnco.net", "203.0.113.66",
        "2001:db8::66", *[f"198.51.100.{i}" for i in range(1, 6)]]]  # fmt: skip
    assert names["alone.example.com"][9:] == [1, ["192.0.2.1"]]
    assert names["never.example.net"][9:] == [0, []]
    # Malformed answers are left out; the record and the good answers stay.
    assert names["cut.example.org"][8:] == [0, 2, ["203.0.113.66"]]
    assert names["loop.example.org"][9:] == [2, ["203.0.113.66"]]
    assert names["five.example.org"][9:] == [2, ["::ffff:cb00:7142"]]
    assert names["long.example.org"][9:] == [1, []]
    assert names["bad.example.org"][9:] == [1, []]


def test_answers_are_indexed_alike_on_both_paths(tmp_path):
    """A search by an answer's address, its CIDR or a CNAME target finds the DNS record,
    whichever path wrote it."""
    from agent.hunt.search import Query, search

    def feed(pipe):
        for ts, wirelen, frame in _edges():
            pipe.feed(ts, 1, wirelen or len(frame), frame)

    for cls, sub in ((Journal, "engine"), (PythonJournal, "python")):
        d = tmp_path / sub
        _journal(d, cls, feed)
        for q, what, value in (
            ({"ips": ["203.0.113.66"]}, "answer", "203.0.113.66"),
            ({"ips": ["203.0.113.0/24"]}, "answer", "203.0.113.0/24"),
            ({"ips": ["2001:db8::/64"]}, "answer", "2001:db8::/64"),
            ({"domains": ["cdnco.net"]}, "cname", "cdnco.net"),
        ):
            hits = [h for h in search(journal_dir({"state_dir": str(d)}), Query.build(**q))
                    if h.record[6] == "cdn.example.org"]  # fmt: skip
            assert [(h.what, h.value) for h in hits] == [(what, value)], (sub, q)
            assert hits[0].record[2] == "10.0.0.1"  # the client that asked


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


def test_answers_equal_the_python_paths_on_a_real_capture(tmp_path):
    """CNAME chains and up to 8 addresses a resolver really answered (tests/data)."""
    cap = data("benign_mixed_ssh_http_ftp_dns_ntp.pcap")

    def feed(pipe):
        for ts, *rest in read_capture(str(cap)):
            pipe.feed(ts, *rest)

    (records, index), (want, want_index) = _both(tmp_path, feed)
    assert records == want and index == want_index
    video = [r for r in records if r[0] == "d" and r[6] == "video.google.com" and r[10]]
    assert video and video[0][10][0] == "video.l.google.com"
    assert len(video[0][10]) == 8 and video[0][10][1] == "74.125.225.79"
