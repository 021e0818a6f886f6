"""Which addresses are internal, for detectors: the anonymisation policy's built-in ranges.

Detectors take packed addresses on the hot path. An IPv4 address is answered from a table
of its first 16 bits (every built-in range but one address is a /16 or wider): no cache
of addresses, which with 100k hosts in view held 65k of them (~6 MB). IPv6 answers are
cached per address.
"""

from __future__ import annotations

import ipaddress

from agent.anonymise.policy import BUILTIN_INTERNAL

_V4 = [n for n in BUILTIN_INTERNAL if n.version == 4]
_V6 = [n for n in BUILTIN_INTERNAL if n.version == 6]
_cache: dict[bytes, bool] = {}


def _slash16_table() -> bytes:
    """Per /16 block: 0 when none of its addresses is internal, 1 when all are, 2 when
    it depends (asked of the ranges)."""
    table = bytearray(65536)
    for n in _V4:
        first, last = int(n.network_address) >> 16, int(n.broadcast_address) >> 16
        for i in range(first, last + 1):
            table[i] = max(table[i], 1 if n.prefixlen <= 16 else 2)
    return bytes(table)


_V4_16 = _slash16_table()


def _lookup(packed: bytes) -> bool:
    ip = ipaddress.ip_address(packed)
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip in n for n in (_V4 if ip.version == 4 else _V6))


def is_internal(packed: bytes) -> bool:
    if len(packed) == 4:
        hit = _V4_16[packed[0] << 8 | packed[1]]
        if hit < 2:
            return hit == 1
    hit = _cache.get(packed)
    if hit is None:
        hit = _lookup(packed)
        if len(_cache) > 65536:
            _cache.clear()
        _cache[packed] = hit
    return hit


def is_unicast(packed: bytes) -> bool:
    if len(packed) == 4:
        return 0 < packed[0] < 224 and packed != b"\xff\xff\xff\xff"
    return packed[0] != 0xFF


def port_list(value: list) -> str | None:
    """Option check: a list of port numbers."""
    for p in value:
        if not isinstance(p, int) or isinstance(p, bool) or not 0 < p < 65536:
            return f"holds {p!r}, which is not a port number"
    return None
