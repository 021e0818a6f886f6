"""The one gate every outgoing alert passes: findings in, anonymised protobuf alerts out.

Nothing downstream (outbox, stream) ever sees a raw finding, so nothing can add a field
after this point. Internal addresses, host and user names, internal domains, AE titles
and process owners become keyed pseudonyms: HMAC-SHA256 under a per-establishment secret,
stable within the establishment and unlinkable across establishments. External
indicators (public addresses, public domains, SNI, JA3/JA4, hashes) stay in clear: the
national service correlates on them.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from vigie.v1 import alert_pb2

from common.pbtime import set_seconds as _set

# Always internal, whatever the establishment declares on top.
BUILTIN_INTERNAL = [
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "0.0.0.0/8",
        "224.0.0.0/4",
        "255.255.255.255/32",
        "::1/128",
        "::/128",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
    )
]
BUILTIN_INTERNAL_SUFFIXES = (
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

# Kinds that always name a person or an internal machine: pseudonymised, no switch.
ALWAYS_PSEUDONYMISED = {
    alert_pb2.KIND_HOSTNAME,
    alert_pb2.KIND_USER,
    alert_pb2.KIND_AE_TITLE,
    alert_pb2.KIND_MAC,
}
# Kinds kept in clear (when external), each with its own switch in [anonymisation].
CLEAR_SWITCHES = {
    alert_pb2.KIND_IP: "clear_external_ips",
    alert_pb2.KIND_DOMAIN: "clear_external_domains",
    alert_pb2.KIND_TLS_SNI: "clear_tls_sni",
    alert_pb2.KIND_JA3: "clear_ja3",
    alert_pb2.KIND_JA4: "clear_ja4",
    alert_pb2.KIND_HASH: "clear_hashes",
}
# Plain context that is never personal: ports, protocol names, process base names.
NEVER_PERSONAL = {alert_pb2.KIND_PORT, alert_pb2.KIND_PROTOCOL, alert_pb2.KIND_PROCESS}


class AnonymisationError(Exception):
    pass


@dataclass
class Entity:
    role: int
    kind: int
    value: str


@dataclass
class Finding:
    """What a detector knows, raw. It never leaves the agent as such."""

    id: str
    revision: int
    detector: str
    severity: int
    technique: str
    summary: str
    first_seen: float
    last_seen: float
    occurrences: int
    entities: list[Entity] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def load_or_create_secret(path: str | Path) -> bytes:
    """The establishment's secret: made once at install, 0600, never sent anywhere."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = secrets.token_bytes(32)
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            return load_or_create_secret(p)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    if len(data) < 16:
        raise AnonymisationError(f"{p}: pseudonymisation secret is shorter than 16 bytes")
    if p.stat().st_mode & 0o077:
        raise AnonymisationError(
            f"{p}: pseudonymisation secret must not be readable by others (chmod 600)"
        )
    return data


class Anonymiser:
    def __init__(
        self,
        secret: bytes,
        key_epoch: int = 1,
        internal_ranges: list[str] = (),
        internal_suffixes: list[str] = (),
        clear: dict[str, bool] | None = None,
    ) -> None:
        self._secret = secret
        self.key_epoch = key_epoch
        self._internal = BUILTIN_INTERNAL + [
            ipaddress.ip_network(r, strict=False) for r in internal_ranges
        ]
        self._suffixes = tuple(s.lower().lstrip(".") for s in internal_suffixes)
        self._clear = {k: True for k in CLEAR_SWITCHES.values()} | (clear or {})
        self._cache: dict[tuple[int, str], str] = {}

    # Classification ----------------------------------------------------------------------

    def is_internal_ip(self, value: str) -> bool:
        try:
            ip = ipaddress.ip_address(value)
        except ValueError:
            return True  # not an address we understand: treat as sensitive
        if ip.version == 6 and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self._internal if net.version == ip.version)

    def is_internal_name(self, name: str) -> bool:
        n = name.lower().rstrip(".")
        if "." not in n:
            return True  # a bare host name only means something inside
        if n.endswith(BUILTIN_INTERNAL_SUFFIXES):
            return True
        return any(n == s or n.endswith("." + s) for s in self._suffixes)

    # Pseudonyms ---------------------------------------------------------------------------

    def pseudonym(self, kind: int, value: str) -> str:
        key = (kind, value)
        p = self._cache.get(key)
        if p is None:
            norm = value.lower() if kind != alert_pb2.KIND_IP else _norm_ip(value)
            mac = hmac.new(self._secret, f"{kind}\x00{norm}".encode(), hashlib.sha256)
            p = f"p:{mac.hexdigest()[:20]}"
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[key] = p
        return p

    def entity(self, e: Entity) -> alert_pb2.Entity:
        kind, value = e.kind, e.value
        if kind in NEVER_PERSONAL:
            clear = True
        elif kind in ALWAYS_PSEUDONYMISED:
            clear = False
        elif kind == alert_pb2.KIND_IP:
            clear = not self.is_internal_ip(value) and self._clear["clear_external_ips"]
        elif kind in (alert_pb2.KIND_DOMAIN, alert_pb2.KIND_TLS_SNI):
            clear = not self.is_internal_name(value) and self._clear[CLEAR_SWITCHES[kind]]
        elif kind in CLEAR_SWITCHES:
            clear = self._clear[CLEAR_SWITCHES[kind]]
        else:
            clear = False  # unknown kinds are sensitive until declared otherwise
        if clear:
            return alert_pb2.Entity(role=e.role, kind=kind, value=value, pseudonymised=False)
        return alert_pb2.Entity(
            role=e.role, kind=kind, value=self.pseudonym(kind, value), pseudonymised=True
        )

    def alert(self, f: Finding, observed_at: float) -> alert_pb2.Alert:
        entities = [self.entity(e) for e in f.entities]
        summary = f.summary
        # Belt and braces: a raw value that slipped into a summary is replaced too.
        for raw, out in zip(f.entities, entities, strict=True):
            if out.pseudonymised and raw.value in summary:
                summary = summary.replace(raw.value, out.value)
        a = alert_pb2.Alert(
            id=f.id,
            revision=f.revision,
            detector=f.detector,
            severity=f.severity,
            technique=f.technique,
            summary=summary,
            occurrences=f.occurrences,
            key_epoch=self.key_epoch,
            entities=entities,
        )
        a.metrics.update(f.metrics)
        _set(a.first_seen, f.first_seen)
        _set(a.last_seen, f.last_seen)
        _set(a.observed_at, observed_at)
        return a


def _norm_ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value
