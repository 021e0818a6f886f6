"""The one gate every outgoing alert passes: findings in, anonymised protobuf alerts out.

Nothing downstream (outbox, stream) ever sees a raw finding, and the alert is built here
from an explicit list of fields, so nothing can add a field after this point. Internal
addresses, host and user names, internal domains, AE titles, MACs and process owners
become keyed pseudonyms: HMAC-SHA256 under a per-establishment secret, stable within the
establishment and unlinkable across establishments. External indicators (public
addresses, public domains, SNI, JA3/JA4, hashes) stay in clear: the national service
correlates on them. docs/PRIVACY.md is the data protection officer's version of this.

Pseudonym formats:
    p:<20 hex>          HMAC-SHA256 (80 bits kept), every pseudonymised kind
    pp:<a.b.c.d>        Crypto-PAn, internal IPv4 only, when prefix_preserving is on
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.inside import Inside
from common.pbtime import set_seconds as _set
from vigie.v1 import alert_pb2

# What is inside (built-in and configured ranges and suffixes) is agent/inside.py's `Inside`:
# the anonymiser, the engine and every detector read the same object.

# IPv6 prefixes that carry an IPv4 address in their low 32 bits (NAT64, RFC 6052).
_NAT64 = [ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48")]
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")

# Kinds that always name a person or an internal machine: pseudonymised, no switch.
ALWAYS_PSEUDONYMISED = {
    alert_pb2.KIND_HOSTNAME,
    alert_pb2.KIND_USER,
    alert_pb2.KIND_AE_TITLE,
    alert_pb2.KIND_MAC,
}
_ALWAYS_LABELS = {
    alert_pb2.KIND_HOSTNAME: "host name",
    alert_pb2.KIND_USER: "user name",
    alert_pb2.KIND_AE_TITLE: "DICOM AE title",
    alert_pb2.KIND_MAC: "MAC address",
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

PSEUDONYM_RE = re.compile(r"p:[0-9a-f]{20}|pp:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}")

# What may pass unchanged in the alert's free-form identifiers. Anything else is replaced
# by a keyed hash, so a detector that puts a raw value in an id or a metric name leaks
# nothing.
_SAFE_ID = re.compile(r"[0-9a-f]{32}")
_SAFE_TOKEN = re.compile(r"[a-z][a-z0-9_]{0,63}(\.[a-z][a-z0-9_]{0,63}){0,3}")
_SAFE_TECHNIQUE = re.compile(r"(T\d{4}(\.\d{3})?)?")

# Literals scrubbed from summaries even when no entity names them.
_MAC_TEXT = r"(?<![0-9A-Fa-f:-])[0-9A-Fa-f]{2}(?:[:-][0-9A-Fa-f]{2}){5}(?![0-9A-Fa-f:-])"
_IPV6_TEXT = r"(?<![0-9A-Za-z:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f.]*[0-9A-Fa-f])?"
_IPV4_TEXT = r"(?<!\d)\d{1,3}(?:\.\d{1,3}){3}(?!\d)"
_MAC_RE = re.compile(_MAC_TEXT)
_IPV6_RE = re.compile(_IPV6_TEXT)
_IPV4_RE = re.compile(_IPV4_TEXT)

KIND_NAMES = {
    v.number: v.name.removeprefix("KIND_").lower()
    for v in alert_pb2.EntityKind.DESCRIPTOR.values
    if v.number
}


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


@dataclass(frozen=True)
class Classification:
    internal: bool
    reason: str


@dataclass(frozen=True)
class Decision:
    """How one value of one kind leaves the agent, and why."""

    kind: int
    classification: str  # "internal", "external" or "never personal"
    reason: str
    value: str  # exactly what is sent
    pseudonymised: bool


# Secret ------------------------------------------------------------------------------------


def secret_path(state_dir: str | Path, secret_file: str, key_epoch: int) -> Path:
    """Where the secret of `key_epoch` lives.

    Default: state_dir/anon.key for epoch 1, state_dir/anon-<epoch>.key afterwards, so
    raising the epoch makes a new secret and leaves the old one alone. A configured
    secret_file may hold "{epoch}"; without it only epoch 1 can use it, since a higher
    epoch on the same secret would claim a rotation that did not happen.
    """
    if not secret_file:
        name = "anon.key" if key_epoch == 1 else f"anon-{key_epoch}.key"
        return Path(state_dir) / name
    if "{epoch}" in secret_file:
        return Path(secret_file.replace("{epoch}", str(key_epoch)))
    if key_epoch != 1:
        raise AnonymisationError(
            f"anonymisation.secret_file {secret_file!r} has no {{epoch}} placeholder: "
            f"key_epoch = {key_epoch} would reuse the old secret; add {{epoch}} to the path"
        )
    return Path(secret_file)


def load_secret(path: str | Path) -> bytes:
    """Read an existing secret, refusing one that other users could read."""
    p = Path(path)
    st = p.stat()  # FileNotFoundError is the caller's to handle
    if not stat.S_ISREG(st.st_mode):
        raise AnonymisationError(f"{p}: pseudonymisation secret is not a regular file")
    if st.st_mode & 0o077:
        raise AnonymisationError(
            f"{p}: pseudonymisation secret is readable or writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); it must be 0600: chmod 600 {p}"
        )
    data = p.read_bytes()
    if len(data) < 16:
        raise AnonymisationError(f"{p}: pseudonymisation secret is shorter than 16 bytes")
    return data


def load_or_create_secret(path: str | Path) -> bytes:
    """The establishment's secret: made once at install, 0600, never sent anywhere."""
    p = Path(path)
    try:
        return load_secret(p)
    except FileNotFoundError:
        pass
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Written whole under a temporary name, then linked into place: a crash never leaves a
    # short secret behind, and link() fails if another process got there first.
    tmp = p.with_name(f".{p.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
            os.link(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return load_secret(p)


def _derive(secret: bytes, label: str) -> bytes:
    # One secret file, independent keys per use: knowing one derived key says nothing
    # about the others.
    return hmac.new(secret, b"vigie/anonymise/v1/" + label.encode(), hashlib.sha256).digest()


# Crypto-PAn ---------------------------------------------------------------------------------


class CryptoPAn:
    """Prefix-preserving IPv4 anonymisation (Xu, Fan, Ammar, Moon, ICNP 2002).

    Bit i of the output is bit i of the input XOR the first bit of AES_K(prefix_i || pad
    bits), where prefix_i is the input's first i bits and pad = AES_K(second key half).
    Two addresses sharing their first n bits share exactly the first n bits of their
    images; the mapping is a bijection of the IPv4 space. Same 32-byte key layout as the
    reference implementation, so its published test vectors apply.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("Crypto-PAn needs a 32-byte key")
        # Imported here: cryptography's library is 8 MB resident, and only sites that turn
        # prefix_preserving on need it.
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        self._aes = Cipher(algorithms.AES(key[:16]), modes.ECB()).encryptor()
        self._pad = self._aes.update(key[16:])
        self._pad_int = int.from_bytes(self._pad[:4], "big")

    def anonymise(self, address: int) -> int:
        # The 32 AES inputs depend only on the original address, so they go in one call.
        blocks = bytearray()
        tail = self._pad[4:]
        for i in range(32):
            keep = (0xFFFFFFFF << (32 - i)) & 0xFFFFFFFF
            head = (address & keep) | (self._pad_int & ~keep & 0xFFFFFFFF)
            blocks += head.to_bytes(4, "big") + tail
        out = self._aes.update(bytes(blocks))
        flips = 0
        for i in range(32):
            flips |= (out[16 * i] >> 7) << (31 - i)
        return address ^ flips

    def anonymise_text(self, address: str) -> str:
        v4 = ipaddress.IPv4Address(address)
        return str(ipaddress.IPv4Address(self.anonymise(int(v4))))


# Classification ---------------------------------------------------------------------------


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, str] | None:
    """An IPv4 address an IPv6 address carries, with the name of the embedding."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, "IPv4-mapped IPv6"
    if ip.sixtofour is not None:
        return ip.sixtofour, "6to4"
    if ip.teredo is not None:
        return ip.teredo[1], "Teredo client"
    for net in _NAT64:
        if ip in net:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), f"NAT64 ({net})"
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:
        return ipaddress.IPv4Address(int(ip)), "IPv4-compatible IPv6"
    return None


class Anonymiser:
    def __init__(
        self,
        secret: bytes,
        key_epoch: int = 1,
        internal_ranges: list[str] = (),
        internal_suffixes: list[str] = (),
        clear: dict[str, bool] | None = None,
        prefix_preserving: bool = False,
        inside: Inside | None = None,
    ) -> None:
        """`inside`: the establishment's inside, shared with the pipeline; without it,
        one is made of `internal_ranges` and `internal_suffixes`."""
        self._hmac_key = _derive(secret, "pseudonym")
        self._pan = CryptoPAn(_derive(secret, "crypto-pan")) if prefix_preserving else None
        self.key_epoch = key_epoch
        self.prefix_preserving = prefix_preserving
        if inside is None:
            inside = Inside(internal_ranges, internal_suffixes)
        elif internal_ranges or internal_suffixes:
            raise AnonymisationError("give either `inside` or internal ranges and suffixes")
        self.inside = inside
        unknown = set(clear or {}) - set(CLEAR_SWITCHES.values())
        if unknown:
            raise AnonymisationError(f"unknown clear switch(es): {', '.join(sorted(unknown))}")
        self._clear = {k: True for k in CLEAR_SWITCHES.values()} | (clear or {})
        self._cache: dict[tuple[int, str], str] = {}

    @classmethod
    def from_settings(
        cls, section: dict[str, Any], state_dir: str | Path, create: bool = True
    ) -> Anonymiser:
        """Build from the [anonymisation] settings; `create=False` never writes a secret."""
        path = secret_path(state_dir, section["secret_file"], section["key_epoch"])
        secret = load_or_create_secret(path) if create else load_secret(path)
        return cls(
            secret,
            section["key_epoch"],
            clear={k: v for k, v in section.items() if k.startswith("clear_")},
            prefix_preserving=section.get("prefix_preserving", False),
            inside=Inside.from_settings(section),
        )

    # Classification ----------------------------------------------------------------------

    def _range_of(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
        return self.inside.range_of(ip)

    def classify_ip(self, value: str) -> Classification:
        try:
            ip = ipaddress.ip_address(value)
        except ValueError:
            return self._classify_network(value)
        hit = self._range_of(ip)
        if hit:
            return Classification(True, hit)
        if ip.version == 6 and (inner := _embedded_ipv4(ip)) is not None:
            v4, how = inner
            hit = self._range_of(v4)
            if hit:
                return Classification(True, f"{how} of {v4} ({hit})")
        return Classification(False, "public address: no internal range matches")

    def _classify_network(self, value: str) -> Classification:
        try:
            net = ipaddress.ip_network(value, strict=False)
        except ValueError:
            return Classification(True, "not an address: treated as sensitive")
        hit = self.inside.overlapping(net)
        if hit:
            return Classification(True, f"range overlaps {hit}")
        return Classification(False, "public range: no internal range overlaps")

    def classify_name(self, name: str) -> Classification:
        n = name.lower().rstrip(".")
        try:
            ipaddress.ip_address(n)
        except ValueError:
            pass
        else:  # an address written where a name was expected
            c = self.classify_ip(n)
            return Classification(c.internal, f"address literal, {c.reason}")
        if "." not in n:
            return Classification(True, "single-label name: only meaningful inside")
        hit = self.inside.name_reason(n)
        if hit:
            return Classification(True, hit)
        return Classification(False, "public name: no internal suffix matches")

    def is_internal_ip(self, value: str) -> bool:
        return self.classify_ip(value).internal

    def is_internal_name(self, name: str) -> bool:
        return self.classify_name(name).internal

    # Pseudonyms ---------------------------------------------------------------------------

    def pseudonym(self, kind: int, value: str, internal: bool = False) -> str:
        """The keyed pseudonym of a value; `internal` IPv4 may use Crypto-PAn."""
        key = (kind if not (internal and self._pan) else -kind, value)
        p = self._cache.get(key)
        if p is None:
            norm = _normalise(kind, value)
            v4 = _as_ipv4(norm) if kind == alert_pb2.KIND_IP and internal and self._pan else None
            if v4 is not None:
                p = f"pp:{self._pan.anonymise_text(v4)}"
            else:
                mac = hmac.new(self._hmac_key, f"{kind}\x00{norm}".encode(), hashlib.sha256)
                p = f"p:{mac.hexdigest()[:20]}"
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[key] = p
        return p

    def decide(self, kind: int, value: str) -> Decision:
        """The single policy: alerts and explain-anonymisation both go through here."""
        clear: bool
        if kind in NEVER_PERSONAL:
            return Decision(kind, "never personal", "context, not personal", value, False)
        if kind in ALWAYS_PSEUDONYMISED:
            c = Classification(True, f"{_ALWAYS_LABELS[kind]}: always pseudonymised")
            clear = False
        elif kind == alert_pb2.KIND_IP:
            c = self.classify_ip(value)
            clear = not c.internal and self._clear["clear_external_ips"]
        elif kind in (alert_pb2.KIND_DOMAIN, alert_pb2.KIND_TLS_SNI):
            c = self.classify_name(value)
            clear = not c.internal and self._clear[CLEAR_SWITCHES[kind]]
        elif kind in CLEAR_SWITCHES:
            c = Classification(False, "external indicator")
            clear = self._clear[CLEAR_SWITCHES[kind]]
        else:  # unknown kinds are sensitive until declared otherwise
            c = Classification(True, "undeclared kind: treated as sensitive")
            clear = False
        label = "internal" if c.internal else "external"
        if clear:
            return Decision(kind, label, c.reason, value, False)
        reason = c.reason
        if not c.internal:
            reason += f"; {CLEAR_SWITCHES[kind]} = false"
        return Decision(kind, label, reason, self.pseudonym(kind, value, c.internal), True)

    def entity(self, e: Entity) -> alert_pb2.Entity:
        d = self.decide(e.kind, e.value)
        return alert_pb2.Entity(
            role=e.role, kind=e.kind, value=d.value, pseudonymised=d.pseudonymised
        )

    # Free text ------------------------------------------------------------------------------

    def scrub(self, text: str, entities: list[tuple[Entity, alert_pb2.Entity]] = ()) -> str:
        """Replace pseudonymised entity values and internal address/MAC literals in text.

        One pass over the text, so a pseudonym written in is never rescanned (a "pp:"
        pseudonym is itself a dotted quad).
        """
        hidden = {}
        for raw, out in entities:
            if out.pseudonymised and raw.value:
                hidden[raw.value.lower()] = out.value
        parts = [re.escape(v) for v in sorted(hidden, key=len, reverse=True)]
        parts += [_MAC_TEXT, _IPV6_TEXT, _IPV4_TEXT]
        pattern = re.compile("|".join(f"(?:{p})" for p in parts), re.IGNORECASE)

        def address(s: str) -> str:
            d = self.decide(alert_pb2.KIND_IP, s)
            return d.value if d.pseudonymised else s

        def swap(m: re.Match[str]) -> str:
            s = m.group(0)
            if s.lower() in hidden:
                return hidden[s.lower()]
            if _MAC_RE.fullmatch(s):
                return self.pseudonym(alert_pb2.KIND_MAC, s)
            try:
                ipaddress.ip_address(s)
            except ValueError:
                # Not an IPv6 address after all ("ab:cd:10.1.2.3"): it may still hold
                # an IPv4 one.
                return _IPV4_RE.sub(lambda m4: _valid_v4(m4.group(0), address), s)
            return address(s)

        return pattern.sub(swap, text)

    def alert(self, f: Finding, observed_at: float) -> alert_pb2.Alert:
        entities = [self.entity(e) for e in f.entities]
        a = alert_pb2.Alert(
            id=f.id if _SAFE_ID.fullmatch(f.id) else self._keyed_id(f.id),
            revision=f.revision,
            detector=self._token("detector", f.detector),
            severity=f.severity,
            technique=f.technique if _SAFE_TECHNIQUE.fullmatch(f.technique) else "",
            # Belt and braces: a raw value that slipped into a summary is replaced too.
            summary=self.scrub(f.summary, list(zip(f.entities, entities, strict=True))),
            occurrences=f.occurrences,
            key_epoch=self.key_epoch,
            entities=entities,
        )
        a.metrics.update({self._token("metric", k): v for k, v in f.metrics.items()})
        _set(a.first_seen, f.first_seen)
        _set(a.last_seen, f.last_seen)
        _set(a.observed_at, observed_at)
        return a

    def _keyed_id(self, raw: str) -> str:
        # Stable for one raw id, so later revisions still replace earlier ones.
        return hmac.new(self._hmac_key, b"id\x00" + raw.encode(), hashlib.sha256).hexdigest()[:32]

    def _token(self, what: str, value: str) -> str:
        if _SAFE_TOKEN.fullmatch(value):
            return value
        return f"{what}_{self._keyed_id(value)[:12]}"


def _normalise(kind: int, value: str) -> str:
    if kind == alert_pb2.KIND_IP:
        try:
            ip = ipaddress.ip_address(value)
        except ValueError:
            return value.strip().lower()
        if ip.version == 6 and ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)  # the same host, however the socket spelled it
        return str(ip)
    if kind == alert_pb2.KIND_MAC:
        digits = re.sub(r"[^0-9a-f]", "", value.lower())
        if len(digits) == 12:
            return ":".join(digits[i : i + 2] for i in range(0, 12, 2))
    return value.strip().lower().rstrip(".")


def _valid_v4(s: str, address: Any) -> str:
    try:
        ipaddress.IPv4Address(s)
    except ValueError:
        return s
    return address(s)


def _as_ipv4(norm: str) -> str | None:
    try:
        ip = ipaddress.ip_address(norm)
    except ValueError:
        return None
    return str(ip) if ip.version == 4 else None
