"""Offline capture reader: formats, byte orders, timestamps, damaged files, the corpus."""

from __future__ import annotations

import csv
import os
import struct
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.capture.pcapfile import MAX_CAPLEN, CaptureError, ReadStats, read_capture
from tests.conftest import CORPUS
from tests.deep_support import needs_corpus


def corpus_params() -> list:
    if not CORPUS.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"no corpus at {CORPUS}"))]
    files = sorted(p for p in CORPUS.rglob("*") if p.suffix in (".pcap", ".pcapng"))
    return [pytest.param(p, id=str(p.relative_to(CORPUS))) for p in files]


# ---------------------------------------------------------------- file builders

PCAP_USEC, PCAP_NSEC, PCAP_KUZNETZOV = 0xA1B2C3D4, 0xA1B23C4D, 0xA1B2CD34


def pcap_bytes(
    records: list[tuple[int, int, bytes, int]],
    bo: str = "<",
    magic: int = PCAP_USEC,
    linktype: int = 1,
    version: tuple[int, int] = (2, 4),
) -> bytes:
    """records: (seconds, fraction in the file's unit, frame, wire length)."""
    out = [struct.pack(bo + "IHHiIII", magic, *version, 0, 0, 65535, linktype)]
    for sec, frac, data, wirelen in records:
        out.append(struct.pack(bo + "IIII", sec, frac, len(data), wirelen))
        if magic == PCAP_KUZNETZOV:
            out.append(b"\x00" * 8)
        out.append(data)
    return b"".join(out)


def _pad4(b: bytes) -> bytes:
    return b + b"\x00" * (-len(b) % 4)


def ng_block(bo: str, btype: int, body: bytes) -> bytes:
    body = _pad4(body)
    n = len(body) + 12
    return struct.pack(bo + "II", btype, n) + body + struct.pack(bo + "I", n)


def ng_shb(bo: str) -> bytes:
    return ng_block(bo, 0x0A0D0D0A, struct.pack(bo + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def ng_idb(
    bo: str,
    linktype: int,
    tsresol: int | None = None,
    tsoffset: int | None = None,
    snaplen: int = 0,
) -> bytes:
    opts = b""
    if tsresol is not None:
        opts += struct.pack(bo + "HH", 9, 1) + _pad4(bytes([tsresol]))
    if tsoffset is not None:
        opts += struct.pack(bo + "HHq", 14, 8, tsoffset)
    if opts:
        opts += struct.pack(bo + "HH", 0, 0)
    return ng_block(bo, 1, struct.pack(bo + "HHI", linktype, 0, snaplen) + opts)


def ng_epb(bo: str, ifid: int, ts: int, data: bytes, wirelen: int | None = None) -> bytes:
    wl = len(data) if wirelen is None else wirelen
    head = struct.pack(bo + "IIIII", ifid, ts >> 32, ts & 0xFFFFFFFF, len(data), wl)
    return ng_block(bo, 6, head + data)


def ng_spb(bo: str, data: bytes, wirelen: int) -> bytes:
    return ng_block(bo, 3, struct.pack(bo + "I", wirelen) + data)


def ng_pb(bo: str, ifid: int, ts: int, data: bytes) -> bytes:
    head = struct.pack(bo + "HHIIII", ifid, 0, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data))
    return ng_block(bo, 2, head + data)


def write(tmp_path: Path, data: bytes, name: str = "f.pcap") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def read_all(path: Path) -> tuple[list[tuple[float, int, int, bytes]], ReadStats]:
    stats = ReadStats()
    return list(read_capture(path, stats)), stats


# ---------------------------------------------------------------- classic pcap


@pytest.mark.parametrize("bo", ["<", ">"], ids=["little", "big"])
@pytest.mark.parametrize("nsec", [False, True], ids=["usec", "nsec"])
def test_pcap_byte_order_and_resolution(tmp_path: Path, bo: str, nsec: bool) -> None:
    frac = 123_456_789 if nsec else 123_456
    recs = [(1_700_000_000, frac, b"\x01" * 60, 60), (1_700_000_001, 7, b"\x02" * 20, 1514)]
    data = pcap_bytes(recs, bo=bo, magic=PCAP_NSEC if nsec else PCAP_USEC, linktype=113)
    got, stats = read_all(write(tmp_path, data))
    assert stats == ReadStats(records=2, errors={})
    assert [(lt, wl, fr) for _, lt, wl, fr in got] == [
        (113, 60, b"\x01" * 60),
        (113, 1514, b"\x02" * 20),
    ]
    assert got[0][0] == pytest.approx(1_700_000_000.123456789, abs=1e-6)
    assert got[1][0] == pytest.approx(1_700_000_001 + 7 * (1e-9 if nsec else 1e-6), abs=1e-6)


@pytest.mark.parametrize("endianness", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_pcap_written_by_scapy(tmp_path: Path, endianness: str, nano: bool) -> None:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.utils import PcapWriter

    pkts = [Ether() / IP(dst="192.0.2.1") / UDP(dport=53) / (b"x" * i) for i in range(5)]
    for i, p in enumerate(pkts):
        p.time = 1_600_000_000.000_001 + i * 0.250_001
    path = tmp_path / "scapy.pcap"
    with PcapWriter(str(path), endianness=endianness, nano=nano, linktype=1) as w:
        w.write(pkts)
    got, stats = read_all(path)
    assert stats.records == 5 and not stats.errors
    for p, (ts, lt, wl, fr) in zip(pkts, got, strict=True):
        assert ts == pytest.approx(float(p.time), abs=1e-6)
        assert (lt, wl, fr) == (1, len(p), bytes(p))


def test_pcapng_written_by_scapy(tmp_path: Path) -> None:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.utils import PcapNgWriter

    pkts = [Ether() / IP() / TCP(dport=443 + i) for i in range(4)]
    for i, p in enumerate(pkts):
        p.time = 1_650_000_000.5 + i * 1.000_003
    path = tmp_path / "scapy.pcapng"
    with PcapNgWriter(str(path)) as w:
        for p in pkts:
            w.write(p)
    got, stats = read_all(path)
    assert stats.records == 4 and not stats.errors
    for p, (ts, lt, wl, fr) in zip(pkts, got, strict=True):
        assert ts == pytest.approx(float(p.time), abs=1e-6)
        assert (lt, wl, fr) == (1, len(p), bytes(p))


def test_pcap_kuznetzov_patched_records(tmp_path: Path) -> None:
    data = pcap_bytes([(10, 5, b"abc", 3), (11, 6, b"defg", 4)], magic=PCAP_KUZNETZOV)
    got, stats = read_all(write(tmp_path, data))
    assert [fr for *_, fr in got] == [b"abc", b"defg"]
    assert not stats.errors


def test_pcap_before_2_3_has_swapped_lengths(tmp_path: Path) -> None:
    # libpcap: files older than 2.3 store len before caplen; 2.3 is swapped only if it must be.
    rec = struct.pack("<IIII", 1, 0, 1500, 4) + b"abcd"
    old = struct.pack("<IHHiIII", PCAP_USEC, 2, 2, 0, 0, 65535, 1) + rec
    assert [(wl, fr) for _, _, wl, fr in read_capture(write(tmp_path, old))] == [(1500, b"abcd")]
    v23 = struct.pack("<IHHiIII", PCAP_USEC, 2, 3, 0, 0, 65535, 1) + rec
    assert [(wl, fr) for _, _, wl, fr in read_capture(write(tmp_path, v23))] == [(1500, b"abcd")]


def test_pcap_linktype_fcs_bits_are_masked(tmp_path: Path) -> None:
    data = pcap_bytes([(1, 0, b"ab", 2)], linktype=0x14000000 | 1)
    assert [lt for _, lt, _, _ in read_capture(write(tmp_path, data))] == [1]


def test_empty_capture_with_only_a_header(tmp_path: Path) -> None:
    got, stats = read_all(write(tmp_path, pcap_bytes([])))
    assert got == [] and stats == ReadStats()


def test_read_from_a_pipe(tmp_path: Path) -> None:
    data = pcap_bytes([(1, 2, b"hello", 5)])
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "wb") as f:
            f.write(data)

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    got, _ = read_all(fifo)
    t.join(5)
    assert [fr for *_, fr in got] == [b"hello"]


def test_abandoned_iteration_closes_cleanly(tmp_path: Path) -> None:
    path = write(tmp_path, pcap_bytes([(1, 0, b"a", 1), (2, 0, b"b", 1)]))
    it = read_capture(path)
    assert next(it)[3] == b"a"
    it.close()  # type: ignore[attr-defined]
    assert list(it) == []


# ---------------------------------------------------------------- pcapng


def test_pcapng_sections_interfaces_and_block_kinds(tmp_path: Path) -> None:
    be, le = ">", "<"
    data = b"".join(
        [
            ng_shb(be),
            ng_idb(be, 1, snaplen=8),  # if 0: Ethernet, default microseconds
            ng_idb(be, 101, tsresol=9),  # if 1: raw IP, nanoseconds
            ng_epb(be, 1, 1_700_000_000_123_456_789, b"ns-frame", wirelen=1000),
            ng_block(be, 0x0BAD, b"unknown block, skipped"),
            ng_block(be, 4, b"\x00" * 8),  # name resolution block, skipped
            ng_epb(be, 0, 1_700_000_001_000_001, b"us-frame!"),
            ng_spb(be, b"simple", 6),
            ng_spb(be, b"cut by snaplen", 1514),
            ng_pb(be, 1, 1_700_000_002_000_000_000, b"old"),
            # Second section, other byte order: interfaces are numbered afresh.
            ng_shb(le),
            ng_idb(le, 113, tsresol=0x80 | 20, tsoffset=100),
            ng_epb(le, 0, 3 << 20 | 1 << 19, b"sll"),
        ]
    )
    got, stats = read_all(write(tmp_path, data, "f.pcapng"))
    assert stats == ReadStats(records=6, errors={})
    assert [(lt, wl, fr) for _, lt, wl, fr in got] == [
        (101, 1000, b"ns-frame"),
        (1, 9, b"us-frame!"),
        (1, 6, b"simple"),
        (1, 1514, b"cut by s"),
        (101, 3, b"old"),
        (113, 3, b"sll"),
    ]
    ts = [t for t, *_ in got]
    assert ts[0] == pytest.approx(1_700_000_000.123456789, abs=1e-6)
    assert ts[1] == pytest.approx(1_700_000_001.000001, abs=1e-6)
    assert ts[2] == ts[3] == ts[1]  # simple packet blocks have no clock: keep the last one
    assert ts[4] == pytest.approx(1_700_000_002.0, abs=1e-6)
    assert ts[5] == pytest.approx(100 + 3.5, abs=1e-6)


def test_pcapng_unknown_interface_is_skipped_and_counted(tmp_path: Path) -> None:
    data = ng_shb("<") + ng_idb("<", 1) + ng_epb("<", 7, 1, b"x") + ng_epb("<", 0, 2, b"y")
    got, stats = read_all(write(tmp_path, data, "f.pcapng"))
    assert [fr for *_, fr in got] == [b"y"]
    assert stats.errors == {"interface_unknown": 1}


@pytest.mark.parametrize(
    ("tail", "reason"),
    [
        (ng_epb("<", 0, 1, b"x")[:-3], "record_truncated"),  # cut inside the block
        (b"\x06\x00\x00\x00\x0e\x00\x00\x00" + b"\x00" * 8, "record_bad_length"),  # len % 4
        (struct.pack("<II", 6, 8) + b"\x00" * 4, "record_bad_length"),  # len < 12
        (b"\x06\x00", "record_truncated"),  # cut inside a block header
        (  # captured length larger than its block
            ng_block("<", 6, struct.pack("<IIIII", 0, 0, 0, 100, 100) + b"x" * 8),
            "record_bad_length",
        ),
        (  # a second section with a broken byte-order magic
            ng_block("<", 0x0A0D0D0A, struct.pack("<IHHq", 0xDEADBEEF, 1, 0, -1)),
            "section_bad",
        ),
    ],
    ids=["block_cut", "len_not_4_aligned", "len_too_small", "header_cut", "caplen", "shb"],
)
def test_pcapng_damage_ends_iteration(tmp_path: Path, tail: bytes, reason: str) -> None:
    good = ng_shb("<") + ng_idb("<", 1) + ng_epb("<", 0, 1, b"first")
    # A cut block can only be the last thing in a file.
    after = b"" if reason == "record_truncated" else ng_epb("<", 0, 2, b"never")
    got, stats = read_all(write(tmp_path, good + tail + after, "f.pcapng"))
    assert [fr for *_, fr in got] == [b"first"]
    assert stats.errors == {reason: 1}


# ---------------------------------------------------------------- file-level errors


def _bad_shb(bo_magic: int) -> bytes:
    return ng_block("<", 0x0A0D0D0A, struct.pack("<IHHq", bo_magic, 1, 0, -1))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "capture file is empty"),
        (b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00", "truncated in its header"),
        (b"\xd4\xc3", "truncated in its header"),
        (b"hello world, not a capture", "not a pcap or pcapng file"),
        (b"\x1f\x8b\x08\x00" + b"\x00" * 40, "gzip-compressed"),
        (_bad_shb(0x11223344), "not a valid pcapng file"),
        (ng_shb("<")[:20], "truncated in its header"),
        (struct.pack("<IHHiIII", PCAP_USEC, 1, 0, 0, 0, 0, 1), "unsupported pcap version"),
    ],
    ids=["empty", "short_pcap", "tiny", "text", "gzip", "bad_bom", "short_shb", "v1"],
)
def test_not_a_capture_raises_at_open(tmp_path: Path, content: bytes, message: str) -> None:
    path = write(tmp_path, content, "bad.pcap")
    with pytest.raises(CaptureError) as exc:
        read_capture(path)  # no iteration: the check is eager
    text = str(exc.value)
    assert message in text and str(path) in text and "\n" not in text


def test_wrong_magic_message_shows_the_magic(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match=r"magic 0x68656c6c"):
        read_capture(write(tmp_path, b"hello world"))


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match=r"capture file not found: .*nope\.pcap"):
        read_capture(tmp_path / "nope.pcap")
    with pytest.raises(CaptureError, match="is a directory"):
        read_capture(tmp_path)


# ---------------------------------------------------------------- damaged records


def test_pcap_absurd_record_length_ends_iteration(tmp_path: Path) -> None:
    good = pcap_bytes([(1, 0, b"ok", 2)])
    bad = struct.pack("<IIII", 2, 0, MAX_CAPLEN + 1, MAX_CAPLEN + 1) + b"\x00" * 64
    got, stats = read_all(write(tmp_path, good + bad))
    assert [fr for *_, fr in got] == [b"ok"]
    assert stats == ReadStats(records=1, errors={"record_bad_length": 1})


def test_pcap_record_past_end_of_file(tmp_path: Path) -> None:
    good = pcap_bytes([(1, 0, b"ok", 2)])
    cut = struct.pack("<IIII", 2, 0, 100, 100) + b"\x00" * 10
    got, stats = read_all(write(tmp_path, good + cut))
    assert [fr for *_, fr in got] == [b"ok"]
    assert stats.errors == {"record_truncated": 1}


@pytest.mark.parametrize("kind", ["pcap", "pcapng"])
def test_every_truncation_point(tmp_path: Path, kind: str) -> None:
    """Cutting a file anywhere yields a prefix of its records, never an exception."""
    frames = [bytes([i]) * (i * 7 + 1) for i in range(1, 6)]
    if kind == "pcap":
        data = pcap_bytes([(i, i, f, len(f)) for i, f in enumerate(frames)], magic=PCAP_NSEC)
        header = 24
    else:
        data = (
            ng_shb(">")
            + ng_idb(">", 1)
            + b"".join(ng_epb(">", 0, i, f) for i, f in enumerate(frames))
        )
        header = len(ng_shb(">"))
    path = tmp_path / "cut"
    for n in range(len(data) + 1):
        path.write_bytes(data[:n])
        if n < header:
            with pytest.raises(CaptureError):
                read_capture(path)
            continue
        got, stats = read_all(path)
        assert [fr for *_, fr in got] == frames[: len(got)]
        assert set(stats.errors) <= {"record_truncated"}
        if n == len(data):
            assert len(got) == len(frames) and not stats.errors


# ---------------------------------------------------------------- arbitrary contents

_HEADERS = [
    b"",
    struct.pack("<IHHiIII", PCAP_USEC, 2, 4, 0, 0, 65535, 1),
    struct.pack(">IHHiIII", PCAP_NSEC, 2, 4, 0, 0, 65535, 0),
    struct.pack("<IHHiIII", PCAP_KUZNETZOV, 2, 3, 0, 0, 65535, 113),
    ng_shb("<"),
    ng_shb(">") + ng_idb(">", 1, tsresol=9),
]


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(head=st.sampled_from(_HEADERS), body=st.binary(max_size=400))
def test_arbitrary_file_contents_never_raise(tmp_path: Path, head: bytes, body: bytes) -> None:
    path = tmp_path / "fuzz.pcap"
    path.write_bytes(head + body)
    stats = ReadStats()
    try:
        it = read_capture(path, stats)
    except CaptureError:
        return
    n = 0
    for ts, lt, wl, fr in it:
        n += 1
        assert isinstance(ts, float) and isinstance(lt, int) and isinstance(wl, int)
        assert isinstance(fr, bytes) and len(fr) <= MAX_CAPLEN
    assert stats.records == n
    assert sum(stats.errors.values()) <= n + 1


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 999_999), st.binary(max_size=80)),
        max_size=8,
    )
)
def test_pcap_round_trip(records: list[tuple[int, int, bytes]]) -> None:
    import tempfile

    data = pcap_bytes([(s, f, b, len(b) + 3) for s, f, b in records], bo=">")
    with tempfile.NamedTemporaryFile(suffix=".pcap") as tmp:
        tmp.write(data)
        tmp.flush()
        got = list(read_capture(tmp.name))
    assert [(wl, fr) for _, _, wl, fr in got] == [(len(b) + 3, b) for *_, b in records]
    for (s, f, _), (ts, *_) in zip(records, got, strict=True):
        assert ts == pytest.approx(s + f * 1e-6, abs=1e-6)


# ---------------------------------------------------------------- corpus


@pytest.mark.parametrize("path", corpus_params())
def test_corpus_capture_reads(path: Path) -> None:
    stats = ReadStats()
    n = 0
    for ts, lt, wl, fr in read_capture(path, stats):
        n += 1
        assert ts > 0 and wl >= 0 and len(fr) <= MAX_CAPLEN
        assert lt in (0, 1, 113)
    assert stats.records == n > 0
    if "damaged_file" not in path.name:
        assert not stats.errors


@needs_corpus
def test_corpus_record_counts_match_manifest() -> None:
    with open(CORPUS / "MANIFEST.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert rows
    for row in rows:
        if row["file"] == "malformed/damaged_file_bad_record_length.pcap":
            continue  # the manifest counts Wireshark's guess at a non-standard pcap variant
        n = sum(1 for _ in read_capture(CORPUS / row["file"]))
        assert n == int(row["packets"]), row["file"]


@needs_corpus
def test_corpus_damaged_bad_record_length() -> None:
    # tcpdump: one packet, then "invalid packet capture length 1409179648".
    got, stats = read_all(CORPUS / "malformed" / "damaged_file_bad_record_length.pcap")
    assert len(got) == 1 and len(got[0][3]) == 188
    assert stats.errors == {"record_bad_length": 1}


@needs_corpus
def test_corpus_damaged_truncated_record() -> None:
    # A version 2.0 file (lengths swapped, as libpcap reads it), one packet, then 2 bytes.
    got, stats = read_all(CORPUS / "malformed" / "damaged_file_truncated_record.pcap")
    assert [(lt, wl, len(fr)) for _, lt, wl, fr in got] == [(0, 524501, 197)]
    assert stats.errors == {"record_truncated": 1}


@needs_corpus
def test_corpus_pcapng_named_pcap_is_detected_by_magic() -> None:
    got, _ = read_all(CORPUS / "dicom" / "dicom_a_associate_rq_cfind_testclient.pcap")
    assert [lt for _, lt, _, _ in got] == [0]


# ---------------------------------------------------------------- the engine's pcapng walk


def engine_read(path: Path) -> tuple[list[tuple[float, int]], ReadStats]:
    """(timestamp, wire length) of every record as a replay sees them: runs of enhanced
    packet blocks walked by the engine (one record a call, to see each), the rest by the
    Python walker."""
    from agent.capture.pcapfile import iter_pcapng, open_capture
    from agent.engine import Engine

    e, got, stats = Engine(), [], ReadStats()

    def run(buf, off: int, big: bool, ifaces: list) -> tuple[int, int, float]:
        total, ts = 0, 0.0
        while True:
            before = e.stats()["bytes"]
            nxt, n, _status, t = e.feed_pcapng(buf, off, big, ifaces, MAX_CAPLEN, -1e300, 1 << 30)
            if not n:
                return off, total, ts
            got.append((t, e.stats()["bytes"] - before))
            off, total, ts = nxt, total + n, t

    layout = open_capture(path, stats)
    got.extend((ts, wl) for ts, _lt, wl, _fr in iter_pcapng(layout, stats, run))
    return got, stats


def _same_walk(path: Path) -> None:
    python, pstats = read_all(path)
    engine, estats = engine_read(path)
    assert engine == [(ts, wl) for ts, _lt, wl, _fr in python]  # timestamps bit for bit
    assert estats == pstats


def test_the_engine_walks_pcapng_as_the_python_walker_does(tmp_path: Path) -> None:
    """Sections in both byte orders, micro/nano/binary clocks with offsets, every block
    kind between packet blocks, unknown interfaces, and each kind of damage."""
    be, le = ">", "<"
    files = [
        ng_shb(be) + ng_idb(be, 1, snaplen=8) + ng_idb(be, 101, tsresol=9)
        + ng_epb(be, 1, 1_700_000_000_123_456_789, b"ns-frame", wirelen=1000)
        + ng_epb(be, 1, 2**53 + 12345, b"past 2^53")
        + ng_block(be, 0x0BAD, b"unknown block, skipped") + ng_block(be, 4, b"\x00" * 8)
        + ng_epb(be, 0, 1_700_000_001_000_001, b"us-frame!") + ng_spb(be, b"simple", 6)
        + ng_pb(be, 1, 1_700_000_002_000_000_000, b"old") + ng_epb(be, 0, 7, b"after")
        + ng_shb(le) + ng_idb(le, 113, tsresol=0x80 | 20, tsoffset=100)
        + ng_idb(le, 1, tsresol=0x7F) + ng_epb(le, 0, 3 << 20 | 1 << 19, b"sll")
        + ng_epb(le, 1, 10**19, b"resolution 10^-127")
        + ng_epb(le, 5, 1, b"unknown interface") + ng_epb(le, 0, 1 << 21, b"last"),
        *(
            ng_shb(le) + ng_idb(le, 1) + ng_epb(le, 0, 1, b"first") + tail
            for tail in (
                ng_epb(le, 0, 2, b"x")[:-3],
                b"\x06\x00\x00\x00\x0e\x00\x00\x00" + b"\x00" * 8 + ng_epb(le, 0, 3, b"n"),
                ng_block(le, 6, struct.pack("<IIIII", 0, 0, 0, 100, 100) + b"x" * 8),
            )
        ),
    ]  # fmt: skip
    for i, data in enumerate(files):
        _same_walk(write(tmp_path, data, f"f{i}.pcapng"))
    whole = files[0]
    for n in range(len(ng_shb(be)), len(whole) + 1, 7):  # cut anywhere
        _same_walk(write(tmp_path, whole[:n], "cut.pcapng"))


_NG_HEADS = {
    "<": ng_shb("<") + ng_idb("<", 1) + ng_idb("<", 1, tsresol=0x80 | 30, tsoffset=-5),
    ">": ng_shb(">") + ng_idb(">", 1, tsresol=9) + ng_idb(">", 101, tsresol=0x7F),
}


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    bo=st.sampled_from("<>"),
    parts=st.lists(
        st.one_of(
            st.tuples(st.integers(0, 3), st.integers(0, 2**64 - 1), st.binary(max_size=40)),
            st.binary(max_size=24),  # junk: damage, or a block of another kind
        ),
        max_size=8,
    ),
)
def test_the_engine_walk_of_arbitrary_pcapng_matches(tmp_path: Path, bo: str, parts: list) -> None:
    body = b"".join(ng_epb(bo, *p) if isinstance(p, tuple) else p for p in parts)
    _same_walk(write(tmp_path, _NG_HEADS[bo] + body, "fuzz.pcapng"))
