"""The indicator list host detectors and the network IOC detector match against.

Distribution is someone else's job: this side only reads what is there, tolerantly.
`state_dir/intel.json` (if present) looks like
    {"version": 3, "ips": ["203.0.113.7"], "cidrs": ["198.51.100.0/24"], "domains": [...],
     "ja3": [...], "ja4": [...]}
Unknown keys are ignored, bad entries are skipped and counted, a missing or unreadable
file means an empty list; the file is re-read when its mtime changes. Anything with
`ips`/`cidrs` attributes or keys, or a callable returning one, is accepted too.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from common.suffixes import SHORT_SUFFIXES

_Net = ipaddress.IPv4Network | ipaddress.IPv6Network
# An entry that would match (nearly) everything is skipped and counted, as the collector
# refuses it at load: a CIDR shorter than these, a wildcard, a bare top-level domain, a
# second-level public suffix (common/suffixes.py).
MIN_PREFIX = {4: 8, 6: 16}


class Intel:
    """One immutable snapshot of the list; `match` is cached per address."""

    def __init__(
        self,
        ips: Iterable[str] = (),
        cidrs: Iterable[str] = (),
        domains: Iterable[str] = (),
        version: int = 0,
        ja3: Iterable[str] = (),
        ja4: Iterable[str] = (),
    ) -> None:
        self.version = version
        self.skipped = 0
        self.ips: frozenset[str] = frozenset()
        nets: list[_Net] = []
        plain: set[str] = set()
        for item in [*ips, *cidrs]:
            try:
                net = ipaddress.ip_network(str(item).strip(), strict=False)
            except ValueError:
                self.skipped += 1
                continue
            if net.prefixlen < MIN_PREFIX[net.version]:
                self.skipped += 1
            elif net.num_addresses == 1:
                plain.add(str(net.network_address))
            else:
                nets.append(net)
        self.ips = frozenset(plain)
        self.nets = tuple(nets)
        names = [str(d).strip().lower().rstrip(".") for d in domains]
        good = {
            d
            for d in names
            if "." in d and "*" not in d and "" not in d.split(".") and d not in SHORT_SUFFIXES
        }
        self.skipped += len(names) - sum(1 for d in names if d in good)
        self.domains = frozenset(good)
        # TLS fingerprints (network IOC detector): lower-case hex/text, bad ones skipped.
        fps = [str(x).strip().lower() for x in ja3]
        self.ja3 = frozenset(x for x in fps if len(x) == 32)
        self.ja4 = frozenset(x for x in (str(y).strip().lower() for y in ja4) if x)
        self.skipped += sum(1 for x in fps if len(x) != 32)
        self._cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.ips or self.nets)

    def match(self, addr: str) -> bool:
        hit = self._cache.get(addr)
        if hit is not None:
            return hit
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a dual-stack socket spells IPv4 peers this way
        hit = str(ip) in self.ips or any(ip in n for n in self.nets if n.version == ip.version)
        if len(self._cache) > 65536:
            self._cache.clear()
        self._cache[addr] = hit
        return hit

    @classmethod
    def from_mapping(cls, data: Any) -> Intel:
        def items(key: str) -> list:
            v = data.get(key) if isinstance(data, dict) else getattr(data, key, None)
            return list(v) if isinstance(v, list | tuple | set | frozenset) else []

        version = data.get("version", 0) if isinstance(data, dict) else 0
        return cls(
            items("ips"),
            items("cidrs"),
            items("domains"),
            version if isinstance(version, int) else 0,
            items("ja3"),
            items("ja4"),
        )


EMPTY = Intel()


class IntelFile:
    """`state_dir/intel.json`, re-read when it changes (one stat per call)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._intel = EMPTY
        self.errors = 0

    def mark_stale(self) -> None:
        """Re-read the file at the next call even if its stat did not move (a bundle
        written twice within the clock's resolution); safe from any thread."""
        self._stamp = None

    def __call__(self) -> Intel:
        try:
            st = os.stat(self.path)
        except OSError:
            self._stamp, self._intel = None, EMPTY
            return EMPTY
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._intel = Intel.from_mapping(json.loads(self.path.read_text("utf-8")))
            except (OSError, ValueError, RecursionError):
                self.errors += 1  # a half-written file: keep trying on the next change
                self._intel = EMPTY
        return self._intel


def provider(source: Any) -> Callable[[], Intel]:
    """Whatever the caller has (None, a snapshot, a mapping, a callable) as a callable."""
    if source is None:
        return lambda: EMPTY
    if isinstance(source, Intel):
        return lambda: source
    if callable(source):

        def call() -> Intel:
            got = source()
            return got if isinstance(got, Intel) else Intel.from_mapping(got)

        return call
    snap = Intel.from_mapping(source)
    return lambda: snap
