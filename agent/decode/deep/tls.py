"""TLS ClientHello over TCP: SNI, ALPN, supported versions, JA3 and JA4 fingerprints.

JA3 (Salesforce): "version,ciphers,extensions,groups,point_formats", decimal, dash-joined,
GREASE values (RFC 8701) removed, MD5 of that string. JA4 (FoxIO, technical_details/JA4.md):
t|q + version + d|i + cipher count + extension count + ALPN first/last char, then the
truncated sha256 of the sorted ciphers and of the sorted extensions (without SNI and ALPN)
followed by the signature algorithms in wire order; GREASE ignored everywhere.

A ClientHello may span several TCP segments (post-quantum key shares, ECH): the decoder
answers `NeedMore(total)` and the dispatcher hands it the reassembled bytes later.
QUIC Initial packets (encrypted ClientHello on UDP) are out of scope.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from struct import error as StructError
from typing import Any

from agent.decode.deep.common import Bad, Malformed, NeedMore

__all__ = ["MAX_HELLO", "TlsClientHello", "is_grease", "parse_client_hello"]

MAX_HELLO = 65536  # the dispatcher never buffers more than this for one ClientHello

_JA4_VERSIONS = {
    0x0304: "13",
    0x0303: "12",
    0x0302: "11",
    0x0301: "10",
    0x0300: "s3",
    0x0002: "s2",
    0xFEFF: "d1",
    0xFEFD: "d2",
    0xFEFC: "d3",
}


def is_grease(v: int) -> bool:
    return v & 0x0F0F == 0x0A0A and v >> 8 == v & 0xFF


@dataclass(slots=True)
class TlsClientHello:
    version: int  # legacy client_version of the hello
    versions: tuple[int, ...]  # supported_versions extension, GREASE removed
    sni: str  # "" when absent
    alpn: tuple[str, ...]
    ciphers: tuple[int, ...]  # GREASE removed
    extensions: tuple[int, ...]  # wire order, GREASE removed
    ja3: str
    ja3_hash: str
    ja4: str
    kind: str = "tls_client_hello"
    ts: float = 0.0
    flow: Any = field(default=None, repr=False, compare=False)


def _u16s(b: bytes) -> list[int]:
    return [b[i] << 8 | b[i + 1] for i in range(0, len(b) - 1, 2)]


def _alpn_chars(first: bytes) -> str:
    if not first:
        return "00"
    a, z = first[0], first[-1]
    if chr(a).isascii() and chr(a).isalnum() and chr(z).isascii() and chr(z).isalnum():
        return chr(a) + chr(z)
    h = first.hex()
    return h[0] + h[-1]


def _sha12(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()[:12]


def _handshake(data: bytes) -> bytes | NeedMore | None:
    """Concatenate handshake-record bodies until the ClientHello is whole."""
    if len(data) < 6 or data[0] != 0x16 or data[1] != 3:
        return None
    if data[5] != 1:
        return None  # ServerHello, certificate...: not ours
    off = 0
    hs = bytearray()
    need = -1
    n = len(data)
    while True:
        if off + 5 > n:
            return NeedMore(off + 5)
        if data[off] != 0x16:
            raise Bad("tls_bad_record")
        rlen = data[off + 3] << 8 | data[off + 4]
        if rlen == 0 or rlen > 18432:
            raise Bad("tls_bad_record")
        if off + 5 + rlen > n:
            total = off + 5 + rlen
            if total > MAX_HELLO:
                raise Bad("tls_too_large")
            return NeedMore(total)
        hs += data[off + 5 : off + 5 + rlen]
        off += 5 + rlen
        if need < 0 and len(hs) >= 4:
            need = 4 + (hs[1] << 16 | hs[2] << 8 | hs[3])
            if need > MAX_HELLO:
                raise Bad("tls_too_large")
        if need >= 0 and len(hs) >= need:
            return bytes(hs[4:need])


def _parse(body: bytes, transport: str) -> TlsClientHello:
    n = len(body)
    if n < 38:
        raise Bad("tls_truncated")
    version = body[0] << 8 | body[1]
    off = 34
    off += 1 + body[off]  # session id
    if off + 2 > n:
        raise Bad("tls_truncated")
    clen = body[off] << 8 | body[off + 1]
    off += 2
    if clen & 1 or off + clen > n:
        raise Bad("tls_bad_ciphers")
    ciphers = [c for c in _u16s(body[off : off + clen]) if not is_grease(c)]
    off += clen
    if off >= n:
        raise Bad("tls_truncated")
    off += 1 + body[off]  # compression methods
    exts: list[int] = []
    sni = ""
    alpn: list[str] = []
    alpn_first = b""
    versions: list[int] = []
    groups: list[int] = []
    formats: list[int] = []
    sigalgs: list[int] = []
    has_sni = has_alpn = False
    if off + 2 <= n:
        elen = body[off] << 8 | body[off + 1]
        off += 2
        end = off + elen
        if end > n:
            raise Bad("tls_bad_extensions")
        while off + 4 <= end:
            et = body[off] << 8 | body[off + 1]
            el = body[off + 2] << 8 | body[off + 3]
            off += 4
            if off + el > end:
                raise Bad("tls_bad_extensions")
            ext = body[off : off + el]
            off += el
            if is_grease(et):
                continue
            exts.append(et)
            if et == 0:
                has_sni = True
                # server_name_list: list length, then (type, length, name) entries
                p = 2
                while p + 3 <= len(ext):
                    nt, nl = ext[p], ext[p + 1] << 8 | ext[p + 2]
                    if nt == 0 and not sni:
                        sni = ext[p + 3 : p + 3 + nl].decode("latin-1").lower()
                    p += 3 + nl
            elif et == 16:
                has_alpn = True
                p = 2
                while p < len(ext):
                    ln = ext[p]
                    v = ext[p + 1 : p + 1 + ln]
                    if not alpn:
                        alpn_first = v
                    alpn.append(v.decode("latin-1"))
                    p += 1 + ln
            elif et == 43 and ext:
                versions = [v for v in _u16s(ext[1 : 1 + ext[0]]) if not is_grease(v)]
            elif et == 10 and len(ext) >= 2:
                groups = [g for g in _u16s(ext[2 : 2 + (ext[0] << 8 | ext[1])]) if not is_grease(g)]
            elif et == 11 and ext:
                formats = list(ext[1 : 1 + ext[0]])
            elif et == 13 and len(ext) >= 2:
                sigalgs = [
                    s for s in _u16s(ext[2 : 2 + (ext[0] << 8 | ext[1])]) if not is_grease(s)
                ]

    ja3 = ",".join(
        (
            str(version),
            "-".join(map(str, ciphers)),
            "-".join(map(str, exts)),
            "-".join(map(str, groups)),
            "-".join(map(str, formats)),
        )
    )
    ja3_hash = hashlib.md5(ja3.encode(), usedforsecurity=False).hexdigest()

    top = max(versions) if versions else version
    a = (
        f"{transport}{_JA4_VERSIONS.get(top, '00')}{'d' if has_sni else 'i'}"
        f"{min(len(ciphers), 99):02d}{min(len(exts), 99):02d}"
        f"{_alpn_chars(alpn_first) if has_alpn else '00'}"
    )
    b = _sha12(",".join(f"{c:04x}" for c in sorted(ciphers))) if ciphers else "000000000000"
    sorted_exts = ",".join(f"{e:04x}" for e in sorted(exts) if e not in (0, 16))
    if sorted_exts:
        if sigalgs:
            sorted_exts += "_" + ",".join(f"{s:04x}" for s in sigalgs)
        c = _sha12(sorted_exts)
    else:
        c = "000000000000"
    return TlsClientHello(
        version,
        tuple(versions),
        sni,
        tuple(alpn),
        tuple(ciphers),
        tuple(exts),
        ja3,
        ja3_hash,
        f"{a}_{b}_{c}",
    )


def parse_client_hello(
    payload: bytes, transport: str = "t"
) -> TlsClientHello | Malformed | NeedMore | None:
    """Decode a ClientHello starting at a TLS record boundary; None if this is not one."""
    try:
        hs = _handshake(payload)
        if hs is None or isinstance(hs, NeedMore):
            return hs
        return _parse(hs, transport)
    except Bad as e:
        return Malformed(e.reason)
    except (IndexError, ValueError, StructError):
        return Malformed("tls_truncated")
