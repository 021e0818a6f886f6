"""The collector's private certificate authority.

Identities travel in a URI subject-alternative-name that the collector alone reads:
    vigie:agent/<agent-id>?finess=<F>&ght=<G>&region=<R>
    vigie:analyst/<name>?role=national | role=regional:<region>
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlencode, urlparse

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common import identity as rules


class PkiError(Exception):
    pass


@dataclass(frozen=True)
class Identity:
    """Who a certificate speaks for. Every value is checked (common.identity) when the
    identity is made, so an invalid one can be neither issued nor read from a certificate:
    PkiError."""

    kind: str  # "agent" or "analyst"
    name: str  # agent id or analyst name
    finess: str = ""
    ght: str = ""
    region: str = ""
    role: str = ""  # analysts: "national" or "regional:<code>"

    def __post_init__(self) -> None:
        try:
            if self.kind == "agent":
                rules.check_agent_id(self.name)
                rules.check_site(self.finess, self.ght, self.region)
                if self.role:
                    raise PkiError("an agent identity has no role")
            elif self.kind == "analyst":
                rules.check_analyst_name(self.name)
                rules.check_role(self.role)
                if self.finess or self.ght or self.region:
                    raise PkiError("an analyst identity has no FINESS, GHT or region")
            else:
                raise PkiError(f"identity kind must be agent or analyst: {rules.shown(self.kind)}")
        except rules.InvalidValue as exc:
            raise PkiError(f"invalid {self.kind} identity: {exc}") from None

    def uri(self) -> str:
        if self.kind == "agent":
            q = urlencode({"finess": self.finess, "ght": self.ght, "region": self.region})
        else:
            q = urlencode({"role": self.role})
        return f"vigie:{self.kind}/{quote(self.name, safe='')}?{q}"

    @classmethod
    def from_uri(cls, uri: str) -> Identity:
        u = urlparse(uri)
        if u.scheme != "vigie" or "/" not in u.path:
            raise PkiError(f"not a Vigie identity: {rules.shown(uri)}")
        kind, _, name = u.path.partition("/")
        name = unquote(name)  # uri() quotes it
        values = parse_qs(u.query, keep_blank_values=True)
        if any(len(v) != 1 for v in values.values()):
            raise PkiError(f"ambiguous Vigie identity: {rules.shown(uri)}")
        q = {k: v[0] for k, v in values.items()}
        # The constructor checks every value: a certificate carrying one that the commands
        # would refuse is no valid identity (so the collector refuses its calls).
        if kind == "agent" and all(k in q for k in ("finess", "ght", "region")):
            return cls("agent", name, q["finess"], q["ght"], q["region"])
        if kind == "analyst" and "role" in q:
            return cls("analyst", name, role=q["role"])
        raise PkiError(f"incomplete Vigie identity: {rules.shown(uri)}")

    @classmethod
    def from_certificate(cls, cert: x509.Certificate) -> Identity:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            raise PkiError("certificate has no subject alternative name") from None
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            if uri.startswith("vigie:"):
                return cls.from_uri(uri)
        raise PkiError("certificate carries no Vigie identity")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_private(path: Path, data: bytes) -> None:
    # Created 0600 from the start: never world-readable, not even for an instant.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


class Authority:
    """A CA on disk: ca.key (0600) and ca.crt in one directory."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        try:
            self.cert = x509.load_pem_x509_certificate((self.dir / "ca.crt").read_bytes())
            self.key = serialization.load_pem_private_key(
                (self.dir / "ca.key").read_bytes(), password=None
            )
        except FileNotFoundError:
            raise PkiError(f"no CA in {self.dir}: run 'vigie-collector pki init'") from None
        except ValueError as exc:
            raise PkiError(f"CA in {self.dir} is unreadable: {exc}") from None

    @staticmethod
    def exists(directory: str | Path) -> bool:
        d = Path(directory)
        return (d / "ca.crt").exists() and (d / "ca.key").exists()

    @classmethod
    def create(
        cls, directory: str | Path, name: str = "Vigie collector CA", days: int = 3650
    ) -> Authority:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        _write_private(d / "ca.key", _key_pem(key))
        (d / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(d)

    def sign(
        self,
        csr: x509.CertificateSigningRequest,
        *,
        server_names: list[str] | None = None,
        identity: Identity | None = None,
        days: int = 365,
        seconds: int | None = None,
    ) -> x509.Certificate:
        """Sign a request. The identity and names come from the caller, never from the CSR.

        `seconds`, when given, overrides `days` (short-lived certificates). The start is
        back-dated a little for clock skew, never more than a tenth of the lifetime, so that
        "a third of the lifetime left" means the same thing for every certificate.
        """
        if not csr.is_signature_valid:
            raise PkiError("certificate request signature is invalid")
        check_public_key(csr.public_key())
        if identity is not None:
            identity = replace(identity)  # checked again: never sign what reading would refuse
        now = _now()
        life = dt.timedelta(seconds=seconds) if seconds else dt.timedelta(days=days)
        backdate = min(dt.timedelta(minutes=5), life / 10)
        sans: list[x509.GeneralName] = []
        usage = []
        if server_names:
            usage.append(ExtendedKeyUsageOID.SERVER_AUTH)
            for n in server_names:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(n)))
                except ValueError:
                    sans.append(x509.DNSName(n))
        if identity is not None:
            usage.append(ExtendedKeyUsageOID.CLIENT_AUTH)
            sans.append(x509.UniformResourceIdentifier(identity.uri()))
        cn = identity.name if identity else (server_names or ["vigie"])[0]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - backdate)
            .not_valid_after(now + life)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.cert.public_key()), False
            )
            .sign(self.key, hashes.SHA256())
        )
        return cert

    def issue(
        self,
        out_dir: str | Path,
        stem: str,
        *,
        server_names: list[str] | None = None,
        identity: Identity | None = None,
        days: int = 365,
    ) -> Path:
        """Make a key pair in out_dir and sign it: for the collector's own certificate and
        for development credentials. Real agents make their key themselves (enrollment)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = new_key()
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, stem)]))
            .sign(key, hashes.SHA256())
        )
        cert = self.sign(csr, server_names=server_names, identity=identity, days=days)
        _write_private(out / f"{stem}.key", _key_pem(key))
        (out / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (out / "ca.crt").write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return out / f"{stem}.crt"


def check_public_key(key) -> None:
    """Only keys we would make ourselves: EC P-256/P-384, or RSA of 2048 bits or more."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in ("secp256r1", "secp384r1"):
        return
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
        return
    raise PkiError("certificate request key must be EC P-256/P-384 or RSA >= 2048 bits")


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, lower-case hex: what operators pin."""
    return cert.fingerprint(hashes.SHA256()).hex()


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def trusted_cas(directory: str | Path) -> list[x509.Certificate]:
    """The CAs whose agent certificates the collector accepts: the issuing CA (ca.crt) and
    every CA kept in trusted/ by a rollover, expired ones left out."""
    d = Path(directory)
    paths = [d / "ca.crt", *sorted((d / "trusted").glob("*.crt"))]
    out, seen = [], set()
    now = _now()
    for p in paths:
        if not p.exists():
            continue
        cert = x509.load_pem_x509_certificate(p.read_bytes())
        fp = fingerprint(cert)
        if fp in seen or cert.not_valid_after_utc < now:
            continue
        seen.add(fp)
        out.append(cert)
    return out


def trust_bundle(directory: str | Path) -> bytes:
    return b"".join(pem(c) for c in trusted_cas(directory))


def server_ca_fingerprint(directory: str | Path) -> str:
    """Fingerprint of the CA that signed the server certificate: what a new agent pins."""
    d = Path(directory)
    server = x509.load_pem_x509_certificate((d / "server.crt").read_bytes())
    for ca in trusted_cas(d):
        try:
            server.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return fingerprint(ca)
    raise PkiError(f"the server certificate in {d} was signed by no trusted CA")


def server_chain(directory: str | Path) -> bytes:
    """The server certificate followed by its issuing CA, so a new agent can pin the CA."""
    d = Path(directory)
    fp = server_ca_fingerprint(d)
    ca = next(c for c in trusted_cas(d) if fingerprint(c) == fp)
    return (d / "server.crt").read_bytes() + pem(ca)


def rollover(directory: str | Path) -> Authority:
    """Make a new issuing CA. The old one stays trusted (trusted/) until it expires, so
    agents holding its certificates keep working and get new ones at renewal, with the
    bundle of both CAs. The server certificate is left alone: agents that have not renewed
    yet know only the old CA. `reissue_server` finishes the rollover later."""
    d = Path(directory)
    old = Authority(d)
    trusted = d / "trusted"
    trusted.mkdir(exist_ok=True, mode=0o700)
    stamp = _now().strftime("%Y%m%dT%H%M%S")
    name = f"ca-{stamp}-{fingerprint(old.cert)[:12]}"
    (trusted / f"{name}.crt").write_bytes(pem(old.cert))
    retired = d / "retired"
    retired.mkdir(exist_ok=True, mode=0o700)
    _write_private(retired / f"{name}.key", _key_pem(old.key))
    for f in ("ca.crt", "ca.key"):
        (d / f).unlink()
    return Authority.create(d, name=f"Vigie collector CA {stamp}")


def last_rollover(directory: str | Path) -> float | None:
    """When the newest rollover happened (Unix time), from the name it gave the CA it kept
    in trusted/; None if there never was one. The name holds whole seconds: the end of
    that second is returned, so that a certificate issued in the same second as the
    rollover counts as older (asking for one renewal too many, never one too few)."""
    stamps = [
        dt.datetime.strptime(f.name.split("-")[1], "%Y%m%dT%H%M%S").replace(tzinfo=dt.UTC)
        for f in (Path(directory) / "trusted").glob("ca-*.crt")
    ]
    return max(stamps).timestamp() + 1.0 if stamps else None


def certificate_names(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a server certificate answers for."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in (*san.get_values_for_type(x509.DNSName),
                             *san.get_values_for_type(x509.IPAddress))]  # fmt: skip


def configured_names(server_names: list[str], listen: str) -> list[str]:
    """The names the server certificate must cover: [pki] server_names, then the host of
    `listen` unless it is a wildcard address (0.0.0.0, ::), which no agent dials. Order
    kept, duplicates dropped (an address written two ways counts once)."""
    host = listen.rpartition(":")[0].strip("[]")
    wanted = list(server_names)
    try:
        if host and not ipaddress.ip_address(host).is_unspecified:
            wanted.append(host)
    except ValueError:
        if host:
            wanted.append(host)
    out: list[str] = []
    seen: set[str] = set()
    for n in wanted:
        key = _name_key(n)
        if key not in seen:
            seen.add(key)
            out.append(n)
    return out


def _name_key(name: str) -> str:
    # TLS compares addresses by value and DNS names without case: "::1" and "0:0::1",
    # or "Collector.Test" and "collector.test", are the same name.
    try:
        return str(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        return name.strip().rstrip(".").lower()


def _covers(pattern: str, name: str) -> bool:
    if pattern == name:
        return True
    # A wildcard covers exactly one left-most label (RFC 6125), never an address.
    if pattern.startswith("*.") and "." in name:
        return name.split(".", 1)[1] == pattern[2:] and not _is_ip(name)
    return False


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def server_certificate_names(directory: str | Path) -> list[str]:
    """The names the server certificate in `directory` covers; [] without one."""
    path = Path(directory) / "server.crt"
    if not path.exists():
        return []
    return certificate_names(x509.load_pem_x509_certificate(path.read_bytes()))


def missing_server_names(directory: str | Path, names: list[str]) -> list[str]:
    """Those of `names` that the current server certificate does not cover (agents dialing
    them fail hostname verification); every name when there is no server certificate."""
    have = [_name_key(n) for n in server_certificate_names(directory)]
    return [n for n in names if not any(_covers(h, _name_key(n)) for h in have)]


def reissue_server(directory: str | Path, names: list[str] | None = None) -> x509.Certificate:
    """A new server certificate from the current issuing CA: for `names` (the configured
    ones: see configured_names), or the old certificate's names when None. Used to change
    the names after the first start, and as the last step of a rollover, once every agent
    has renewed and so trusts the new CA."""
    d = Path(directory)
    if names is None:
        names = server_certificate_names(d)
    if not names:
        raise PkiError("no server name to put in the certificate: set [pki] server_names")
    Authority(d).issue(d, "server", server_names=names)
    return x509.load_pem_x509_certificate((d / "server.crt").read_bytes())


def init(directory: str | Path, server_names: list[str]) -> Authority:
    """Create the CA and the collector's server certificate if they do not exist yet."""
    d = Path(directory)
    ca = Authority(d) if Authority.exists(d) else Authority.create(d)
    if not (d / "server.crt").exists():
        ca.issue(d, "server", server_names=server_names)
    return ca


def new_agent_id() -> str:
    return f"agt-{uuid.uuid4().hex[:16]}"
