"""Offline capture reader: classic pcap and pcapng, without libpcap or scapy.

`read_capture` validates the file header eagerly (so a file that is not a capture fails
with `CaptureError` before anything is yielded) and returns a generator of
`(timestamp, linktype, wire_length, frame)` tuples. Damage found later in the file ends
the iteration quietly and is counted in `ReadStats.errors`: a replay of a half-written or
fuzzed capture keeps every record that was readable.
"""

from __future__ import annotations

import mmap
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from struct import Struct

__all__ = [
    "MAX_CAPLEN",
    "CaptureError",
    "PcapLayout",
    "PcapngLayout",
    "ReadStats",
    "iter_pcapng",
    "open_capture",
    "read_capture",
]

Record = tuple[float, int, int, bytes]
# Walks a run of enhanced packet blocks itself (the engine): (buf, off, big_endian,
# interfaces) -> (offset after the run, packets, last timestamp); 0 packets leaves the
# block at `off` to the Python walker.
FastRun = Callable[[bytes | mmap.mmap, int, bool, list], tuple[int, int, float]]

# Same bound as libpcap and Wireshark: anything larger is a damaged length field, and
# trusting it would make us slice (and hand downstream) megabytes of garbage.
MAX_CAPLEN = 262144

_PCAP_USEC = 0xA1B2C3D4
_PCAP_NSEC = 0xA1B23C4D
_PCAP_KUZNETZOV = 0xA1B2CD34  # "patched" libpcap: 8 extra bytes per record header
_PCAP_MAGICS = (_PCAP_USEC, _PCAP_NSEC, _PCAP_KUZNETZOV)
_NG_SHB = 0x0A0D0D0A
_NG_BOM = 0x1A2B3C4D

_U32LE = Struct("<I").unpack_from
_U32BE = Struct(">I").unpack_from

# libpcap keeps FCS information in the upper bits of the header's link-type field.
_LINKTYPE_MASK = 0x03FFFFFF

# Lengths-swapped modes for pcap files written before version 2.3 (see libpcap sf-pcap.c).
_NOT_SWAPPED, _MAYBE_SWAPPED, _SWAPPED = 0, 1, 2


class CaptureError(Exception):
    """The file cannot be read as a capture at all (missing, unreadable, wrong format)."""


@dataclass(slots=True)
class ReadStats:
    """What a reader saw: records yielded and why it stopped early, if it did."""

    records: int = 0
    errors: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class PcapLayout:
    """A classic pcap file, mapped, for a walker that reads its records itself (the
    engine): where records start and how their headers read."""

    buf: bytes | mmap.mmap
    start: int
    big_endian: bool
    scale: float  # seconds per unit of the fraction field
    linktype: int
    hdrsize: int  # 16, or 24 for the "patched" Kuznetzov format
    swap: int  # caplen/len swapped: 0 never, 1 when caplen > len, 2 always
    close: Callable[[], None]


@dataclass(slots=True)
class PcapngLayout:
    """A pcapng file, mapped, its first section header read: for `iter_pcapng`."""

    buf: bytes | mmap.mmap
    shb: tuple[_Section, int]
    close: Callable[[], None]


def _count(stats: ReadStats, reason: str) -> None:
    stats.errors[reason] = stats.errors.get(reason, 0) + 1


def _load(path: str) -> tuple[bytes | mmap.mmap, Callable[[], None]]:
    """Map the file read-only (cheap for big captures), or read it when it cannot be mapped."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, the map outlives it
    except FileNotFoundError:
        raise CaptureError(f"capture file not found: {path}") from None
    except IsADirectoryError:
        raise CaptureError(f"capture path is a directory, not a file: {path}") from None
    except OSError as e:
        raise CaptureError(f"cannot open capture file: {path} ({e.strerror or e})") from None
    with f:
        try:
            st = os.fstat(f.fileno())
            # Empty files cannot be mapped; pipes and devices have no fixed size. A capture
            # still being appended to is fine (the map ends at today's size); one truncated
            # underneath us would fault, which replaying a finished file never does.
            if stat.S_ISREG(st.st_mode) and st.st_size > 0:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                return mm, mm.close
        except (OSError, ValueError):
            pass
        try:
            data = f.read()
        except OSError as e:
            raise CaptureError(f"cannot read capture file: {path} ({e.strerror or e})") from None
    return data, _noop


def _noop() -> None:
    pass


def read_capture(path: str | os.PathLike[str], stats: ReadStats | None = None) -> Iterator[Record]:
    """Open and validate a pcap/pcapng file; return an iterator over its records.

    Raises CaptureError now (not on first `next`) when the file is missing or is not a
    capture. Afterwards the iterator never raises: damage ends it and is counted in
    `stats.errors` ("record_truncated", "record_bad_length", "section_bad",
    "interface_unknown").
    """
    if stats is None:
        stats = ReadStats()
    c = open_capture(path, stats)
    if isinstance(c, PcapLayout):
        return _iter_pcap(c, len(c.buf), stats)
    return iter_pcapng(c, stats)


def open_capture(
    path: str | os.PathLike[str], stats: ReadStats | None = None
) -> PcapLayout | PcapngLayout:
    """Like `read_capture`, but the file comes back as its layout: a classic pcap file's
    for the engine to walk (the caller closes it), a pcapng file's for `iter_pcapng`."""
    name = os.fspath(path)
    if stats is None:
        stats = ReadStats()
    buf, close = _load(name)
    try:
        size = len(buf)
        if size == 0:
            raise CaptureError(f"capture file is empty: {name}")
        if size < 4:
            raise CaptureError(f"capture file is truncated in its header: {name}")
        head = bytes(buf[:4])
        if _U32LE(head)[0] == _NG_SHB:
            shb = _parse_shb(buf, 0, size)
            if shb is None:
                raise CaptureError(f"capture file is truncated in its header: {name}")
            if isinstance(shb, str):
                raise CaptureError(f"not a valid pcapng file: {name} ({shb})")
            return PcapngLayout(buf, shb, close)
        le, be = _U32LE(head)[0], _U32BE(head)[0]
        if le in _PCAP_MAGICS:
            bo, magic = "<", le
        elif be in _PCAP_MAGICS:
            bo, magic = ">", be
        elif head[:2] == b"\x1f\x8b":
            raise CaptureError(f"capture file is gzip-compressed, decompress it first: {name}")
        else:
            raise CaptureError(f"not a pcap or pcapng file: {name} (magic 0x{head.hex()})")
        if size < 24:
            raise CaptureError(f"capture file is truncated in its header: {name}")
        major, minor, _zone, _sigfigs, _snaplen, linktype = Struct(bo + "HHiIII").unpack_from(
            buf, 4
        )
        if major < 2:
            raise CaptureError(f"unsupported pcap version {major}.{minor}: {name}")
        # Files older than 2.3 store caplen and len the other way round; libpcap swaps them.
        if (major == 2 and minor < 3) or major == 543:
            swap = _SWAPPED
        elif major == 2 and minor == 3:
            swap = _MAYBE_SWAPPED
        else:
            swap = _NOT_SWAPPED
        return PcapLayout(
            buf,
            24,
            bo == ">",
            1e-9 if magic == _PCAP_NSEC else 1e-6,
            linktype & _LINKTYPE_MASK,
            24 if magic == _PCAP_KUZNETZOV else 16,
            swap,
            close,
        )
    except BaseException:
        close()
        raise


def _iter_pcap(layout: PcapLayout, end: int, stats: ReadStats) -> Iterator[Record]:
    buf, scale, linktype = layout.buf, layout.scale, layout.linktype
    hdrsize, swap, close = layout.hdrsize, layout.swap, layout.close
    rec = Struct((">" if layout.big_endian else "<") + "IIII").unpack_from
    off = layout.start
    try:
        while off < end:
            if off + hdrsize > end:
                _count(stats, "record_truncated")
                return
            sec, frac, caplen, wirelen = rec(buf, off)
            if swap and (swap == _SWAPPED or caplen > wirelen):
                caplen, wirelen = wirelen, caplen
            if caplen > MAX_CAPLEN:
                _count(stats, "record_bad_length")
                return
            off += hdrsize
            nxt = off + caplen
            if nxt > end:
                _count(stats, "record_truncated")
                return
            stats.records += 1
            yield sec + frac * scale, linktype, wirelen, buf[off:nxt]
            off = nxt
    finally:
        close()


class _Section:
    """Byte-order-bound unpackers for one pcapng section."""

    __slots__ = ("bo", "epb", "hdr", "idb", "opt", "pb", "u32", "u64")

    def __init__(self, bo: str) -> None:
        self.bo = bo
        self.hdr = Struct(bo + "II").unpack_from
        self.epb = Struct(bo + "IIIII").unpack_from
        self.pb = Struct(bo + "HHIIII").unpack_from
        self.idb = Struct(bo + "HHI").unpack_from
        self.opt = Struct(bo + "HH").unpack_from
        self.u32 = Struct(bo + "I").unpack_from
        self.u64 = Struct(bo + "q").unpack_from


_SECTIONS = {"<": _Section("<"), ">": _Section(">")}


def _parse_shb(buf: bytes | mmap.mmap, off: int, end: int) -> tuple[_Section, int] | str | None:
    """Section header at `off`: (unpackers, block length), a reason string, or None if cut."""
    if end - off < 28:
        return None
    bom = _U32LE(buf, off + 8)[0]
    if bom == _NG_BOM:
        sec = _SECTIONS["<"]
    elif bom == 0x4D3C2B1A:
        sec = _SECTIONS[">"]
    else:
        return f"bad byte-order magic 0x{bom:08x}"
    blen = sec.u32(buf, off + 4)[0]
    major = Struct(sec.bo + "H").unpack_from(buf, off + 12)[0]
    if major != 1:
        return f"unsupported version {major}"
    if blen < 28 or blen & 3:
        return f"bad section header length {blen}"
    if blen > end - off:
        return None
    return sec, blen


def _parse_idb(
    sec: _Section, buf: bytes | mmap.mmap, off: int, blen: int
) -> tuple[int, int, int, int]:
    """(linktype, timestamp divisor, timestamp offset in seconds, snaplen) of an interface."""
    linktype, _, snaplen = sec.idb(buf, off + 8)
    div, tsoff = 1_000_000, 0
    p, stop = off + 16, off + blen - 4
    opt = sec.opt
    while p + 4 <= stop:
        code, olen = opt(buf, p)
        if code == 0 or p + 4 + olen > stop:
            break
        if code == 9 and olen >= 1:  # if_tsresol
            v = buf[p + 4]
            div = 1 << (v & 0x7F) if v & 0x80 else 10**v
        elif code == 14 and olen >= 8:  # if_tsoffset
            tsoff = sec.u64(buf, p + 4)[0]
        p += 4 + ((olen + 3) & ~3)
    return linktype, div, tsoff, snaplen or MAX_CAPLEN


def iter_pcapng(
    layout: PcapngLayout, stats: ReadStats, fast: FastRun | None = None
) -> Iterator[Record]:
    """The records of a pcapng file, damage counted in `stats`; closes the file at the
    end. With `fast`, runs of enhanced packet blocks go to it instead of being yielded."""
    buf, end, close = layout.buf, len(layout.buf), layout.close
    sec, blen = layout.shb
    hdr, epb = sec.hdr, sec.epb
    ifaces: list[tuple[int, int, int, int]] = []
    # Simple packet blocks carry no timestamp; reusing the previous one keeps replay
    # clocks monotonic instead of jumping back to 1970.
    last_ts = 0.0
    off = blen
    try:
        while off < end:
            if end - off < 12:
                _count(stats, "record_truncated")
                return
            btype, blen = hdr(buf, off)
            if btype == _NG_SHB:
                # A new section may switch byte order, so its length is read by _parse_shb;
                # interfaces are numbered afresh.
                shb2 = _parse_shb(buf, off, end)
                if shb2 is None:
                    _count(stats, "record_truncated")
                    return
                if isinstance(shb2, str):
                    _count(stats, "section_bad")
                    return
                sec, blen = shb2
                hdr, epb = sec.hdr, sec.epb
                ifaces = []
                off += blen
                continue
            if blen < 12 or blen & 3:
                _count(stats, "record_bad_length")
                return
            if blen > end - off:
                _count(stats, "record_truncated")
                return
            if btype == 6 and fast is not None:
                off2, n, ts = fast(buf, off, sec.bo == ">", ifaces)
                if n:
                    stats.records += n
                    last_ts = ts
                    off = off2
                    continue
            if btype == 6:  # enhanced packet block: the common case
                if blen < 32:
                    _count(stats, "record_bad_length")
                    return
                ifid, hi, lo, caplen, wirelen = epb(buf, off + 8)
                if caplen > blen - 32 or caplen > MAX_CAPLEN:
                    _count(stats, "record_bad_length")
                    return
                if ifid >= len(ifaces):
                    _count(stats, "interface_unknown")
                    off += blen
                    continue
                linktype, div, tsoff, _ = ifaces[ifid]
                last_ts = ((hi << 32) | lo) / div + tsoff
                stats.records += 1
                yield last_ts, linktype, wirelen, buf[off + 28 : off + 28 + caplen]
            elif btype == 1:  # interface description
                if blen < 20:
                    _count(stats, "record_bad_length")
                    return
                ifaces.append(_parse_idb(sec, buf, off, blen))
            elif btype == 3:  # simple packet block: interface 0, no timestamp
                if blen < 16:
                    _count(stats, "record_bad_length")
                    return
                if not ifaces:
                    _count(stats, "interface_unknown")
                else:
                    # No captured length field: the spec derives it from the interface
                    # snaplen; the block bound only matters for damaged files.
                    linktype, _, _, snaplen = ifaces[0]
                    wirelen = sec.u32(buf, off + 8)[0]
                    caplen = min(wirelen, snaplen, blen - 16)
                    stats.records += 1
                    yield last_ts, linktype, wirelen, buf[off + 12 : off + 12 + caplen]
            elif btype == 2:  # obsolete packet block
                if blen < 32:
                    _count(stats, "record_bad_length")
                    return
                ifid, _drops, hi, lo, caplen, wirelen = sec.pb(buf, off + 8)
                if caplen > blen - 32 or caplen > MAX_CAPLEN:
                    _count(stats, "record_bad_length")
                    return
                if ifid >= len(ifaces):
                    _count(stats, "interface_unknown")
                else:
                    linktype, div, tsoff, _ = ifaces[ifid]
                    last_ts = ((hi << 32) | lo) / div + tsoff
                    stats.records += 1
                    yield last_ts, linktype, wirelen, buf[off + 28 : off + 28 + caplen]
            off += blen
    finally:
        close()
