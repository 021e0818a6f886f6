"""Which addresses are internal, for detectors: the anonymisation policy's built-in ranges.

Detectors take packed addresses on the hot path; the answer is cached per address.
"""

from __future__ import annotations

import ipaddress

from agent.anonymise.policy import BUILTIN_INTERNAL

_V4 = [n for n in BUILTIN_INTERNAL if n.version == 4]
_V6 = [n for n in BUILTIN_INTERNAL if n.version == 6]
_cache: dict[bytes, bool] = {}


def is_internal(packed: bytes) -> bool:
    hit = _cache.get(packed)
    if hit is None:
        ip = ipaddress.ip_address(packed)
        if ip.version == 6 and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        hit = any(ip in n for n in (_V4 if ip.version == 4 else _V6))
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
