"""What the establishment calls inside: one answer for the anonymiser, the engine and every
detector.

Built once from the [anonymisation] section: the built-in ranges (private, loopback,
link-local, multicast...) and suffixes (.local, .lan...), plus the establishment's
`internal_ranges` and `internal_domains`. Many university and regional hospitals number
their inside with public addresses; declaring those ranges makes them inside everywhere:
pseudonymised by the anonymiser, and internal for beaconing, exfiltration, lateral
movement, medical protocols, DNS names and the engine's activity and outbound counters.
The pipeline hands its anonymiser's `Inside` to the engine and to every detector
(`Detector.use_inside`), so nothing can disagree with what leaves the agent.

Detectors ask on packed addresses on their hot paths. An IPv4 address is answered from a
table of its first 16 bits: 0 when no address of the /16 is inside, 1 when all are, 2 when
it depends on a range narrower than /16; then from that /16's table of third octets, the
same way; and for a /24 only partly inside (a range narrower than /24), from its table of
last octets: three byte lookups at most, 256 bytes per partly covered /16 or /24. No cache
of addresses: with 100k hosts in view a cache held 65k of them, ~6 MB.
IPv6 answers are cached per address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Always inside, whatever the establishment declares on top: (range, why).
BUILTIN_RANGES: list[tuple[Network, str]] = [
    (ipaddress.ip_network(n), why)
    for n, why in (
        ("10.0.0.0/8", "private, RFC 1918"),
        ("172.16.0.0/12", "private, RFC 1918"),
        ("192.168.0.0/16", "private, RFC 1918"),
        ("100.64.0.0/10", "shared address space (carrier NAT), RFC 6598"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("0.0.0.0/8", "'this network', RFC 1122"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),
        ("::1/128", "IPv6 loopback"),
        ("::/128", "IPv6 unspecified"),
        ("fc00::/7", "IPv6 unique local (ULA), RFC 4193"),
        ("fe80::/10", "IPv6 link-local"),
        ("ff00::/8", "IPv6 multicast"),
    )
]
BUILTIN_SUFFIXES = (
    ".local",
    ".lan",
    ".internal",
    ".localdomain",
    ".home.arpa",
    ".in-addr.arpa",
    ".ip6.arpa",
    ".corp",
    ".intranet",
)
CONFIGURED = "configured internal range"
_CACHE_MAX = 65536


class Inside:
    """The establishment's inside: built-in ranges and suffixes plus configured ones."""

    def __init__(self, ranges: Iterable[str] = (), domains: Iterable[str] = ()) -> None:
        configured = [ipaddress.ip_network(str(r).strip(), strict=False) for r in ranges]
        self.configured: tuple[Network, ...] = tuple(configured)
        self.ranges: tuple[tuple[Network, str], ...] = tuple(
            BUILTIN_RANGES + [(n, CONFIGURED) for n in configured]
        )
        # Configured domains, lower case, no dots at either end ("chu-exemple.fr").
        self.domains: tuple[str, ...] = tuple(
            d for d in (str(s).lower().strip().strip(".") for s in domains) if d
        )
        self._v4 = [n for n, _ in self.ranges if n.version == 4]
        self._v6 = [n for n, _ in self.ranges if n.version == 6]
        self._table, self._by24, self._by32 = _tables(self._v4)
        self._cache: dict[bytes, bool] = {}

    @classmethod
    def from_settings(cls, section: dict[str, Any]) -> Inside:
        """From the [anonymisation] section (`internal_ranges`, `internal_domains`)."""
        return cls(section.get("internal_ranges", ()), section.get("internal_domains", ()))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Inside)
            and self.configured == other.configured
            and self.domains == other.domains
        )

    def __hash__(self) -> int:
        return hash((self.configured, self.domains))

    def __repr__(self) -> str:
        return f"Inside(ranges={[str(n) for n in self.configured]}, domains={list(self.domains)})"

    # Addresses --------------------------------------------------------------------------

    def is_internal(self, packed: bytes) -> bool:
        """Whether a packed address (4 or 16 bytes) is inside. IPv4-mapped IPv6 addresses
        are answered as their IPv4 address."""
        if len(packed) == 4:
            block = packed[0] << 8 | packed[1]
            hit = self._table[block]
            if hit < 2:
                return hit == 1
            hit = self._by24[block][packed[2]]
            if hit < 2:
                return hit == 1
            return self._by32[block << 8 | packed[2]][packed[3]] == 1
        hit = self._cache.get(packed)
        if hit is None:
            ip = ipaddress.ip_address(packed)
            if ip.version == 6 and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            hit = self.range_of(ip) is not None
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[packed] = hit
        return hit

    def range_of(self, ip: Address) -> str | None:
        """ "<range>: <why>" of the first range holding `ip`; None when it is outside."""
        for net, why in self.ranges:
            if net.version == ip.version and ip in net:
                return f"{net}: {why}"
        return None

    def overlapping(self, net: Network) -> str | None:
        """ "<range>: <why>" of the first inside range that overlaps `net`; None if none."""
        for inner, why in self.ranges:
            if inner.version == net.version and net.overlaps(inner):
                return f"{inner}: {why}"
        return None

    def engine_nets(self) -> list[tuple[bytes, int]]:
        """The ranges as the engine takes them (`Engine.configure(internal_nets=...)`)."""
        return [(n.network_address.packed, n.prefixlen) for n, _ in self.ranges]

    # Names ----------------------------------------------------------------------------------

    def name_reason(self, name: str) -> str | None:
        """Why a DNS name is inside (built-in suffix, configured domain); None if not.
        Single labels and address literals are the anonymiser's business."""
        n = name.lower().rstrip(".")
        for s in BUILTIN_SUFFIXES:
            if n.endswith(s):
                return f"built-in internal suffix {s}"
        for d in self.domains:
            if n == d or n.endswith("." + d):
                return f"configured internal domain .{d}"
        return None

    def is_internal_name(self, name: str) -> bool:
        return self.name_reason(name) is not None

    @property
    def suffixes(self) -> tuple[str, ...]:
        """Every inside suffix, dot first (".local", ".chu-exemple.fr"), for counters that
        match name endings (agent/engine/dnsstat.c)."""
        return (*BUILTIN_SUFFIXES, *(f".{d}" for d in self.domains))


def _tables(
    v4: list[ipaddress.IPv4Network],
) -> tuple[bytes, dict[int, bytes], dict[int, bytes]]:
    """The lookup tables, one byte per entry: 0 when no address under it is inside, 1 when
    all are, 2 when only some are. Per /16 block; for blocks at 2, per third octet; for
    /24s at 2, per last octet (0 or 1)."""
    table = bytearray(65536)
    by24: dict[int, bytearray] = {}
    by32: dict[int, bytearray] = {}
    for n in sorted(v4, key=lambda n: n.prefixlen):  # wider first: they settle the rest
        lo, hi = int(n.network_address), int(n.broadcast_address)
        if n.prefixlen <= 16:
            table[lo >> 16 : (hi >> 16) + 1] = b"\x01" * ((hi >> 16) - (lo >> 16) + 1)
            continue
        if table[lo >> 16] == 1:
            continue
        table[lo >> 16] = 2
        third = by24.setdefault(lo >> 16, bytearray(256))
        if n.prefixlen <= 24:
            third[lo >> 8 & 0xFF : (hi >> 8 & 0xFF) + 1] = b"\x01" * ((hi >> 8) - (lo >> 8) + 1)
            continue
        if third[lo >> 8 & 0xFF] == 1:
            continue
        third[lo >> 8 & 0xFF] = 2
        last = by32.setdefault(lo >> 8, bytearray(256))
        last[lo & 0xFF : (hi & 0xFF) + 1] = b"\x01" * (hi - lo + 1)
    return (
        bytes(table),
        {b: bytes(t) for b, t in by24.items()},
        {b: bytes(t) for b, t in by32.items()},
    )


BUILTIN = Inside()  # the built-in inside alone: immutable, a detector's default
