"""Fuzz targets: one function per decoder, `target(data: bytes) -> None`.

A target raises (AssertionError or whatever escaped the code under test) when the input
found a bug: an exception out of a decoder, a frame counted in no bucket, or one counted
as "decoder_error" (the decoders' last-resort catch, which hides a bug from production
but must never fire). Inputs are plain bytes so that atheris and hypothesis share them;
targets that need more than one payload (a TCP conversation, a capture) cut the bytes
into length-prefixed records with `records()`.

`seeds(name)` gives real inputs for each target, taken from the shared capture corpus.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

from agent.decode import DecodeStats, make_decoder
from agent.decode.deep import DNS_PORTS, DeepDecoder, DeepStats
from agent.decode.deep.auth import (
    FtpState,
    TelnetState,
    looks_like_http,
    parse_ftp,
    parse_http,
    parse_telnet,
)
from agent.decode.deep.common import Malformed, NeedMore
from agent.decode.deep.dcerpc import parse_dcerpc
from agent.decode.deep.dicom import looks_like_dicom, parse_dicom
from agent.decode.deep.dns import parse_dns
from agent.decode.deep.hl7 import parse_hl7
from agent.decode.deep.smb import SmbState, parse_smb
from agent.decode.deep.tls import parse_client_hello
from agent.decode.packet import TCP, UDP, Packet
from agent.engine import EV_END, Engine

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"

# First input byte of the "fast" target picks the link type (index modulo the list).
LINKTYPES = (1, 0, 108, 101, 12, 14, 228, 229, 113, 276, 147)
# Ports the "deep" and "pipeline" targets pick from (one byte, modulo).
PORTS = (53, 445, 139, 135, 104, 11112, 21, 23, 80, 443, 5353, 2575, 49155, 8080)
SEED_CAP = 300  # per target: enough variety, small enough to load in well under a second


class FoundBug(AssertionError):
    """A target's own check failed (as opposed to an exception out of the decoder)."""


def records(data: bytes, limit: int = 64) -> Iterator[tuple[int, int, bytes]]:
    """Cut `data` into (tag, aux, chunk) records: tag byte, aux byte, 2-byte length, bytes.

    Any byte string is valid: a length past the end takes what is left."""
    off, n = 0, len(data)
    for _ in range(limit):
        if off + 4 > n:
            return
        tag, aux, ln = data[off], data[off + 1], data[off + 2] << 8 | data[off + 3]
        off += 4
        yield tag, aux, data[off : off + ln]
        off += ln


def record(tag: int, aux: int, chunk: bytes) -> bytes:
    chunk = chunk[:0xFFFF]
    return bytes((tag, aux, len(chunk) >> 8, len(chunk) & 0xFF)) + chunk


def _check(result: object) -> None:
    for r in result if isinstance(result, list) else [result]:
        if r is None or type(r) in (Malformed, NeedMore):
            continue
        if not isinstance(getattr(r, "kind", None), str):
            raise FoundBug(f"decoder returned {r!r}")


def _balanced(stats: DecodeStats) -> None:
    counted = stats.decoded + sum(stats.malformed.values()) + sum(stats.skipped.values())
    if stats.packets != counted:
        raise FoundBug(f"{stats.packets} frames, {counted} counted: {stats}")
    if "decoder_error" in stats.malformed:
        raise FoundBug(f"fast decoder raised inside: {stats}")


def _packet(payload: bytes, proto: int, sport: int, dport: int, ts: float = 1.0) -> Packet:
    return Packet(ts, len(payload) + 54, 4, b"\x0a\0\0\x01", b"\x0a\0\0\x02", proto, sport,
                  dport, 0x18, payload)  # fmt: skip


# Targets --------------------------------------------------------------------------------


def fast(data: bytes) -> None:
    """Fast decoder: first byte picks the link type, the rest is the frame."""
    if not data:
        return
    stats = DecodeStats()
    p = make_decoder(stats)(1.0, LINKTYPES[data[0] % len(LINKTYPES)], len(data), data[1:])
    _balanced(stats)
    if p is not None and len(p.payload) > len(data):
        raise FoundBug("payload longer than the frame")


def dns(data: bytes) -> None:
    _check(parse_dns(data))


def dns_tcp(data: bytes) -> None:
    _check(parse_dns(data, tcp=True))


def tls(data: bytes) -> None:
    _check(parse_client_hello(data))
    _check(parse_client_hello(data, "q"))


def smb(data: bytes) -> None:
    """A conversation: records are segments, aux bit 0 the direction; one state throughout."""
    st = SmbState()
    for _tag, aux, chunk in records(data):
        _check(parse_smb(chunk, st, not aux & 1))
    _check(parse_smb(data, SmbState(), True))


def dcerpc(data: bytes) -> None:
    ctx: dict[int, str] = {}
    _check(parse_dcerpc(data, ctx))
    _check(parse_dcerpc(data, ctx, "smb", "svcctl"))


def dicom(data: bytes) -> None:
    _check(parse_dicom(data))


def hl7(data: bytes) -> None:
    _check(parse_hl7(data))


def ftp(data: bytes) -> None:
    st = FtpState()
    _check(parse_ftp(data, False, st))
    _check(parse_ftp(data, True, st))
    _check(parse_ftp(data, True))


def telnet(data: bytes) -> None:
    st = TelnetState()
    for _tag, aux, chunk in records(data):
        _check(parse_telnet(chunk, bool(aux & 1), st))
    _check(parse_telnet(data, True, TelnetState()))
    st.expect = "user"
    _check(parse_telnet(data, False, st))


def http(data: bytes) -> None:
    _check(parse_http(data))


def deep(data: bytes) -> None:
    """The dispatcher over a conversation: tag picks the port, aux bit 0 the direction,
    bit 1 UDP instead of TCP. Per-flow state (reassembly, SMB ids) is exercised."""
    stats = DeepStats()
    decoder = DeepDecoder(stats, max_flows=8)
    flows = Engine(max_flows=100)
    for i, (tag, aux, chunk) in enumerate(records(data)):
        port = PORTS[tag % len(PORTS)]
        sport, dport = (port, 40000) if aux & 1 else (40000, port)
        p = _packet(chunk, UDP if aux & 2 else TCP, sport, dport, 1.0 + i)
        flow = flows.packet(p)
        for ev in flows.events():
            if ev[0] == EV_END:
                decoder.forget(ev[1].key)
        for m in decoder(p, flow):
            if m.flow is None or m.ts != p.ts:
                raise FoundBug(f"message without its flow or time: {m!r}")
    if "decoder_error" in stats.malformed:
        raise FoundBug(f"deep decoder raised inside: {stats}")


def pipeline(data: bytes) -> None:
    """The whole agent pipeline on a capture: each record is one Ethernet frame (tag:
    link type index), fed at one-second steps, then finished."""
    from tests.fuzz.pipe import new_pipeline

    pipe, _out = new_pipeline()
    n = 0
    for tag, _aux, chunk in records(data, limit=256):
        pipe.feed(1_700_000_000.0 + n, LINKTYPES[tag % len(LINKTYPES)], len(chunk), chunk)
        n += 1
    pipe.finish()
    from tests.fuzz.pipe import check_accounting

    check_accounting(pipe, n)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "fast": fast,
    "dns": dns,
    "dns_tcp": dns_tcp,
    "tls": tls,
    "smb": smb,
    "dcerpc": dcerpc,
    "dicom": dicom,
    "hl7": hl7,
    "ftp": ftp,
    "telnet": telnet,
    "http": http,
    "deep": deep,
    "pipeline": pipeline,
}


# Seeds from the corpus ------------------------------------------------------------------


@cache
def corpus_records() -> tuple[tuple[int, int, bytes], ...]:
    """(linktype, wirelen, frame) of every readable record of every corpus capture."""
    from agent.capture.pcapfile import CaptureError, read_capture

    out = []
    for path in sorted(CORPUS.glob("*/*.pcap*")):
        try:
            out.extend((lt, wl, bytes(fr)) for _ts, lt, wl, fr in read_capture(path))
        except CaptureError:
            continue
    return tuple(out)


@cache
def corpus_payloads() -> tuple[tuple[int, int, int, bytes], ...]:
    """(proto, sport, dport, payload) of every TCP/UDP packet with a payload."""
    dec = make_decoder(DecodeStats())
    out = []
    for lt, wl, fr in corpus_records():
        p = dec(0.0, lt, wl, fr)
        if p is not None and p.payload and p.proto in (TCP, UDP):
            out.append((p.proto, p.sport, p.dport, bytes(p.payload)))
    return tuple(out)


def _port_index(sport: int, dport: int) -> int:
    for port in (dport, sport):
        if port in PORTS:
            return PORTS.index(port)
    return PORTS.index(49155)


_WANTS: dict[str, Callable[[int, int, int, bytes], bool]] = {
    "dns": lambda pr, s, d, b: pr == UDP and (s in DNS_PORTS or d in DNS_PORTS),
    "dns_tcp": lambda pr, s, d, b: pr == TCP and 53 in (s, d),
    "tls": lambda pr, s, d, b: b[:1] == b"\x16",
    "smb": lambda pr, s, d, b: pr == TCP and bool({s, d} & {445, 139}),
    "dcerpc": lambda pr, s, d, b: b[:2] == b"\x05\x00" or b[4:9] == b"\xfeSMB\x40",
    "dicom": lambda pr, s, d, b: bool({s, d} & {104, 11112, 4242}) or looks_like_dicom(b),
    "hl7": lambda pr, s, d, b: b[:1] == b"\x0b",
    "ftp": lambda pr, s, d, b: 21 in (s, d),
    "telnet": lambda pr, s, d, b: 23 in (s, d),
    "http": lambda pr, s, d, b: looks_like_http(b),
}


@cache
def seeds(name: str) -> tuple[bytes, ...]:
    """Real inputs for target `name` (empty when the corpus is absent)."""
    if not CORPUS.is_dir():
        return ()
    out: list[bytes] = []
    if name == "fast":
        step = max(1, len(corpus_records()) // SEED_CAP)
        for lt, _wl, fr in corpus_records()[::step]:
            out.append(bytes((LINKTYPES.index(lt) if lt in LINKTYPES else 0,)) + fr)
    elif name in ("deep", "pipeline"):
        # Conversations: consecutive packets of the same capture region, 8 per seed.
        if name == "deep":
            items = [
                record(_port_index(s, d), (0 if d in PORTS else 1) | (2 if pr == UDP else 0), b)
                for pr, s, d, b in corpus_payloads()
            ]
        else:
            items = [record(LINKTYPES.index(lt) if lt in LINKTYPES else 0, 0, fr)
                     for lt, _wl, fr in corpus_records()]  # fmt: skip
        step = max(8, len(items) // SEED_CAP)
        out = [b"".join(items[i : i + 8]) for i in range(0, len(items), step)]
    else:
        want = _WANTS[name]
        seen: set[bytes] = set()
        for pr, s, d, b in corpus_payloads():
            if want(pr, s, d, b) and b not in seen:
                seen.add(b)
                out.append(record(0, 0 if d in (445, 139, 23) else 1, b) if name in (
                    "smb", "telnet") else b)  # fmt: skip
    if name == "telnet":  # no Telnet capture in the corpus: a login dialogue by hand
        out += [
            record(0, 1, b"\xff\xfd\x18\xff\xfd\x20Debian GNU/Linux\r\nhost login: "),
            record(0, 0, b"admin\r\n") + record(0, 1, b"Password: ") + record(0, 0, b"x\r"),
            record(0, 1, b"Login incorrect\r\nlogin: ") + record(0, 1, b"Last login: x\r\n$ "),
        ]
    return tuple(out[:SEED_CAP])


def timed(name: str, data: bytes) -> float:
    t = time.perf_counter()
    TARGETS[name](data)
    return time.perf_counter() - t
