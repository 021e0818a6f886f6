"""The intel bundle: indicators and detector thresholds, validated strictly at load.

    {"ips": ["203.0.113.7", "198.51.100.0/24"], "domains": ["evil.example"],
     "ja3": ["<32 hex>"], "ja4": ["t13d1516h2_8daaf6152771_b186095e22b6"],
     "hashes": ["<md5|sha1|sha256 hex>"], "thresholds": {"net.portscan.fanout_ports": 50}}

Unknown keys are errors. An entry that would match (nearly) everything is refused: a CIDR
shorter than /8 (IPv4) or /16 (IPv6), an empty domain, a bare top-level domain or a
second-level public suffix (co.uk, gouv.fr: common/suffixes.py), a wildcard.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import time
from pathlib import Path

from common.suffixes import SHORT_SUFFIXES
from vigie.v1 import ingest_pb2

KEYS = ("ips", "domains", "ja3", "ja4", "hashes", "thresholds")
LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)\Z")  # \Z: "$" takes a final newline
JA3_RE = re.compile(r"^[0-9a-f]{32}$")
JA4_RE = re.compile(r"^[tqd][0-9a-z]{2}[di][0-9]{2}[0-9]{2}[0-9a-z]{2}_[0-9a-f]{12}_[0-9a-f]{12}$")
HASH_RE = re.compile(r"^(?:[0-9a-f]{32}|[0-9a-f]{40}|[0-9a-f]{64})$")
THRESHOLD_RE = re.compile(r"^[a-z][a-z0-9_]*\.[a-z0-9_]+\.[a-z0-9_]+$")
MAX_ENTRIES = 200_000
MIN_PREFIX = {4: 8, 6: 16}


class IntelError(ValueError):
    pass


def _strings(doc: dict, key: str) -> list[str]:
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise IntelError(f"{key} must be a list of strings")
    if len(value) > MAX_ENTRIES:
        raise IntelError(f"{key} holds more than {MAX_ENTRIES} entries")
    return [v.strip().lower() for v in value]


def validate(doc: object) -> dict:
    """Return the normalised bundle, or raise IntelError naming the first bad entry."""
    if not isinstance(doc, dict):
        raise IntelError("the bundle must be a JSON object")
    unknown = sorted(set(doc) - set(KEYS))
    if unknown:
        raise IntelError(f"unknown key {unknown[0]!r} (allowed: {', '.join(KEYS)})")
    out: dict = {}
    ips = []
    for i, v in enumerate(_strings(doc, "ips")):
        try:
            net = ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise IntelError(f"ips[{i}] {v!r} is not an address or CIDR range") from None
        if net.prefixlen < MIN_PREFIX[net.version]:
            raise IntelError(
                f"ips[{i}] {v!r} would match far too much: at least "
                f"/{MIN_PREFIX[net.version]} for IPv{net.version}"
            )
        ips.append(str(net.network_address) if net.num_addresses == 1 else str(net))
    out["ips"] = sorted(set(ips))
    domains = []
    for i, v in enumerate(_strings(doc, "domains")):
        d = v.rstrip(".")
        if not d:
            raise IntelError(f"domains[{i}] is empty: it would match every domain")
        labels = d.split(".")
        if len(labels) < 2:
            raise IntelError(
                f"domains[{i}] {v!r} is a bare top-level domain: it would match too much"
            )
        if not all(LABEL_RE.match(label) for label in labels):
            raise IntelError(f"domains[{i}] {v!r} is not a domain name (no wildcards)")
        if d in SHORT_SUFFIXES:
            raise IntelError(f"domains[{i}] {v!r} is a public suffix: it would match too much")
        domains.append(d)
    out["domains"] = sorted(set(domains))
    for key, rx, what in (
        ("ja3", JA3_RE, "a JA3 fingerprint (32 hex)"),
        ("ja4", JA4_RE, "a JA4 fingerprint"),
        ("hashes", HASH_RE, "an MD5, SHA-1 or SHA-256 in hex"),
    ):
        items = _strings(doc, key)
        for i, v in enumerate(items):
            if not rx.match(v):
                raise IntelError(f"{key}[{i}] {v!r} is not {what}")
        out[key] = sorted(set(items))
    thresholds = doc.get("thresholds", {})
    if not isinstance(thresholds, dict):
        raise IntelError("thresholds must be an object of detector.option: number")
    out["thresholds"] = {}
    for k, v in sorted(thresholds.items()):
        if not THRESHOLD_RE.match(k):
            raise IntelError(
                f"thresholds key {k!r} must read detector.option, e.g. net.portscan.fanout_ports"
            )
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise IntelError(f"thresholds[{k!r}] must be a finite number")
        out["thresholds"][k] = float(v)
    return out


def load_file(path: str | Path) -> dict:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IntelError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntelError(f"{path}: not JSON: {exc}") from None
    except RecursionError:
        raise IntelError(f"{path}: not JSON we read: nested too deeply") from None
    except OSError as exc:
        raise IntelError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return validate(doc)
    except IntelError as exc:
        raise IntelError(f"{path}: {exc}") from None


# Look-backs are sent this long after their publication: an agent offline for longer
# than this (and than its journal keeps) has nothing left to search for them.
RETRO_KEEP_SECONDS = 30 * 86400.0
MAX_RETRO_SECONDS = 366 * 86400.0


def to_message(version: int, bundle: dict, retro: list[dict] = ()) -> ingest_pb2.IntelBundle:
    msg = ingest_pb2.IntelBundle(version=version)
    for key in ("ips", "domains", "ja3", "ja4", "hashes"):
        getattr(msg, key).extend(bundle.get(key, []))
    msg.thresholds.update(bundle.get("thresholds", {}))
    for r in retro:
        msg.retro.add(
            version=r["version"], since=r["since"], published_at=r["published_at"],
            ips=r.get("ips", []), domains=r.get("domains", []), ja3=r.get("ja3", []),
            ja4=r.get("ja4", []),
        )  # fmt: skip
    return msg


class IntelSource:
    """The current bundle as a message, re-read from the registry when it changed (looked
    at most every `recheck` seconds). Streams ask it often; it costs a PRAGMA at most."""

    def __init__(self, registry, recheck: float = 1.0) -> None:
        import threading

        self._time = time.monotonic
        self.registry = registry
        self.recheck = recheck
        self._lock = threading.Lock()
        self._next = 0.0
        self.version = 0
        self.message = ingest_pb2.IntelBundle()

    def current(self) -> tuple[int, ingest_pb2.IntelBundle]:
        now = self._time()
        if now >= self._next:
            with self._lock:
                if now >= self._next:
                    if self.registry.changed("intel"):
                        version, bundle = self.registry.current_intel()
                        if version != self.version:
                            retro = self.registry.retro_requests(time.time() - RETRO_KEEP_SECONDS)
                            self.version = version
                            self.message = to_message(version, bundle, retro)
                    self._next = now + self.recheck
        return self.version, self.message
