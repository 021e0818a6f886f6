"""Searching the journal for indicators: addresses and CIDR ranges, domains (and their
subdomains), JA3 and JA4 fingerprints. A DNS record matches by its answers too: an
address it resolved to ("answer"), a CNAME target ("cname").

A closed segment outside the time range is skipped by its name; one whose Bloom filter
holds none of the indicators' keys (and whose address arrays hold nothing inside the
CIDR ranges) is skipped after reading its header; otherwise only the blocks the key table
lists are decompressed, and each record in them is checked exactly (a Bloom false
positive or another record of the block is not a match). The open segment, which has no
index yet, is read whole.
"""

from __future__ import annotations

import bisect
import ipaddress
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agent.hunt import segment as seg
from agent.hunt.journal import OPEN_NAME, answer_address, segments, span

_Net = ipaddress.IPv4Network | ipaddress.IPv6Network
# Where each record type keeps its two addresses and the name it resolves or contacts.
_ADDRS = {"c": (3, 5), "d": (2, 4), "t": (2, 4), "h": (2, 4), "s": (2, 4), "r": (2, 4)}
_NAME = {"d": ("dns", 6), "t": ("sni", 6), "h": ("http", 6)}
ADDR, NAME, FP = 1, 2, 4  # which kinds of indicator selected a block


class QueryError(ValueError):
    pass


@dataclass
class Query:
    ips: set[str] = field(default_factory=set)
    nets: list[_Net] = field(default_factory=list)
    domains: set[str] = field(default_factory=set)
    ja3: set[str] = field(default_factory=set)
    ja4: set[str] = field(default_factory=set)
    since: float = 0.0
    until: float = float("inf")

    @classmethod
    def build(
        cls,
        ips: Iterable[str] = (),
        domains: Iterable[str] = (),
        ja3: Iterable[str] = (),
        ja4: Iterable[str] = (),
        since: float = 0.0,
        until: float = float("inf"),
    ) -> Query:
        """From what a user or a bundle gives; a bad value raises QueryError naming it."""
        q = cls(since=since, until=until)
        for v in ips:
            try:
                net = ipaddress.ip_network(str(v).strip(), strict=False)
            except ValueError:
                raise QueryError(f"{v!r} is not an address or CIDR range") from None
            if net.num_addresses == 1:
                ip = net.network_address
                if ip.version == 6 and ip.ipv4_mapped is not None:
                    ip = ip.ipv4_mapped
                q.ips.add(str(ip))
            else:
                q.nets.append(net)
        for d in domains:
            d = str(d).strip().lower().rstrip(".")
            if "." not in d or "" in d.split("."):
                raise QueryError(f"{d!r} is not a domain name (two labels or more)")
            q.domains.add(d)
        for h in ja3:
            h = str(h).strip().lower()
            if len(h) != 32 or any(c not in "0123456789abcdef" for c in h):
                raise QueryError(f"{h!r} is not a JA3 hash (32 hex digits)")
            q.ja3.add(h)
        q.ja4 = {str(x).strip().lower() for x in ja4 if str(x).strip()}
        return q

    def __bool__(self) -> bool:
        return bool(self.ips or self.nets or self.domains or self.ja3 or self.ja4)

    def keys(self) -> list[tuple[int, int]]:
        """The index keys of the exact indicators, each with the kind it selects."""
        out = [(seg.key("i", ipaddress.ip_address(a).packed), ADDR) for a in self.ips]
        out += [(seg.key("d", d), NAME) for d in self.domains]
        out += [(seg.key("3", h), FP) for h in self.ja3]
        out += [(seg.key("4", h), FP) for h in self.ja4]
        return out


@dataclass(frozen=True)
class Hit:
    record: list
    what: str  # "ip", "dns", "answer", "cname", "sni", "http", "ja3", "ja4"
    value: str  # the indicator as listed (the address, the listed domain, the hash)

    @property
    def type(self) -> str:
        return self.record[0]

    @property
    def first(self) -> float:
        return self.record[1]

    @property
    def last(self) -> float:
        return self.record[2] if self.record[0] == "c" else self.record[1]


def listed_domain(name: str, domains: set[str]) -> str:
    name = name.rstrip(".").lower()
    while "." in name:
        if name in domains:
            return name
        name = name.split(".", 1)[1]
    return ""


def matcher(q: Query) -> Callable[[list], list[tuple[str, str]]]:
    """The exact test of one record: the (what, indicator) pairs it matches."""
    ips, nets, domains, ja3, ja4 = q.ips, q.nets, q.domains, q.ja3, q.ja4
    # IPv4 ranges as sorted integer bounds (ipaddress per record is far too slow for a
    # block of thousands); IPv6 ranges, rare, through ipaddress.
    v4 = sorted((int(n.network_address), int(n.broadcast_address), str(n))
                for n in nets if n.version == 4)  # fmt: skip
    starts = [r[0] for r in v4]
    reach = []  # the highest end among ranges 0..i: the back-scan stops below it
    for r in v4:
        reach.append(max(r[1], reach[-1] if reach else -1))
    v6 = [n for n in nets if n.version == 6]
    cache: dict[str, str] = {}

    def in_nets(a: str) -> str:
        if ":" in a:
            ip = ipaddress.ip_address(a)
            return next((str(n) for n in v6 if ip in n), "")
        try:
            x = int.from_bytes(socket.inet_aton(a), "big")
        except OSError:
            return ""
        i = bisect.bisect_right(starts, x) - 1
        while i >= 0 and reach[i] >= x:  # a range containing x may start earlier
            if v4[i][1] >= x:
                return v4[i][2]
            i -= 1
        return ""

    def addr_hit(a: str) -> str:
        if a in ips:
            return a
        if not nets:
            return ""
        got = cache.get(a)
        if got is None:
            got = in_nets(a)
            if len(cache) > 100_000:
                cache.clear()
            cache[a] = got
        return got

    def match(rec: list) -> list[tuple[str, str]]:
        t = rec[0]
        out = []
        i, j = _ADDRS[t]
        for a in (rec[i], rec[j]):
            v = addr_hit(a)
            if v:
                out.append(("ip", v))
        if t == "d" and len(rec) > 10:
            for a in rec[10]:
                if answer_address(a) is not None:
                    if v := addr_hit(a):
                        out.append(("answer", v))
                elif domains and (d := listed_domain(a, domains)):
                    out.append(("cname", d))
        name = _NAME.get(t)
        if name and domains:
            host = rec[name[1]]
            if t == "h":
                host = host.split(":", 1)[0]
            d = listed_domain(host, domains) if host else ""
            if d:
                out.append((name[0], d))
        if t == "t":
            if rec[7] in ja3:
                out.append(("ja3", rec[7]))
            if rec[8] in ja4:
                out.append(("ja4", rec[8]))
        return out

    return match


def _in_time(rec: list, q: Query) -> bool:
    last = rec[2] if rec[0] == "c" else rec[1]
    return last >= q.since and rec[1] <= q.until


def search_segment(
    path: Path, q: Query, keys: list[tuple[int, int]] | None = None
) -> Iterator[Hit]:
    """Hits in one closed segment: only the blocks its index lists for the query's keys,
    each record checked for the kinds of indicator that selected its block."""
    keys = q.keys() if keys is None else keys
    with seg.Segment(path) as s:
        why: dict[int, int] = {}
        for k, kind in keys:
            for b in s.blocks_of(k):
                why[b] = why.get(b, 0) | kind
        # Addresses wanted, as written in records, with the indicator each stands for: a
        # CIDR becomes the segment's own addresses inside it.
        want = {a: a for a in q.ips}
        for net in q.nets:
            for packed in s.addresses_in(net):
                want.setdefault(str(ipaddress.ip_address(packed)), str(net))
                for b in s.blocks_of(seg.key("i", packed)):
                    why[b] = why.get(b, 0) | ADDR
        domains, ja3, ja4 = q.domains, q.ja3, q.ja4
        for b in sorted(why):
            mask = why[b]
            for rec in s.block(b):
                if not _in_time(rec, q):
                    continue
                t = rec[0]
                if mask & ADDR:
                    i, j = _ADDRS[t]
                    if (v := want.get(rec[i])) is not None:
                        yield Hit(rec, "ip", v)
                    if (v := want.get(rec[j])) is not None:
                        yield Hit(rec, "ip", v)
                if t == "d" and len(rec) > 10 and rec[10]:
                    yield from _answer_hits(rec, mask, want, domains)
                if mask & NAME and t in _NAME:
                    what, at = _NAME[t]
                    host = rec[at].split(":", 1)[0] if t == "h" else rec[at]
                    if host and (d := listed_domain(host, domains)):
                        yield Hit(rec, what, d)
                if mask & FP and t == "t":
                    if rec[7] in ja3:
                        yield Hit(rec, "ja3", rec[7])
                    if rec[8] in ja4:
                        yield Hit(rec, "ja4", rec[8])


def _answer_hits(rec: list, mask: int, want: dict[str, str], domains: set[str]) -> Iterator[Hit]:
    """A DNS record's hits by its answers (addresses wanted, listed CNAME targets)."""
    for a in rec[10]:
        # `want` holds addresses as written: a name never equals one unless it is one
        if mask & ADDR and (v := want.get(a)) is not None:
            yield Hit(rec, "answer", v)
        elif mask & NAME and (d := listed_domain(a, domains)) and answer_address(a) is None:
            yield Hit(rec, "cname", d)


def search_open(directory: Path, q: Query) -> Iterator[Hit]:
    """Hits in the open segment (no index: every block)."""
    match = matcher(q)
    path = directory / OPEN_NAME
    if not path.exists():
        return
    try:
        for _, records in seg.read_blocks(path):
            for rec in records:
                if _in_time(rec, q):
                    for what, value in match(rec):
                        yield Hit(rec, what, value)
    except FileNotFoundError:  # closed (renamed) while we read
        return


def closed_segments(directory: Path, q: Query) -> list[Path]:
    """The closed segments whose time span meets the query's, oldest first."""
    return [p for p in segments(directory) if span(p)[1] >= q.since and span(p)[0] <= q.until]


def search(directory: Path, q: Query, include_open: bool = True) -> Iterator[Hit]:
    """Every hit of `q` in the journal, oldest segment first."""
    if not q:
        return
    keys = q.keys()
    for path in closed_segments(directory, q):
        try:
            yield from search_segment(path, q, keys)
        except FileNotFoundError:  # dropped by retention meanwhile
            continue
    if include_open:
        yield from search_open(directory, q)
