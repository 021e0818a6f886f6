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
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, urlencode, urlparse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


class PkiError(Exception):
    pass


@dataclass(frozen=True)
class Identity:
    kind: str  # "agent" or "analyst"
    name: str  # agent id or analyst name
    finess: str = ""
    ght: str = ""
    region: str = ""
    role: str = ""  # analysts: "national" or "regional:<code>"

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
            raise PkiError(f"not a Vigie identity: {uri!r}")
        kind, _, name = u.path.partition("/")
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        if kind == "agent" and all(q.get(k) for k in ("finess", "ght", "region")) and name:
            return cls("agent", name, q["finess"], q["ght"], q["region"])
        if kind == "analyst" and name and valid_role(q.get("role", "")):
            return cls("analyst", name, role=q["role"])
        raise PkiError(f"incomplete Vigie identity: {uri!r}")

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


def valid_role(role: str) -> bool:
    return role == "national" or (role.startswith("regional:") and len(role) > len("regional:"))


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
    ) -> x509.Certificate:
        """Sign a request. The identity and names come from the caller, never from the CSR."""
        if not csr.is_signature_valid:
            raise PkiError("certificate request signature is invalid")
        now = _now()
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
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
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


def init(directory: str | Path, server_names: list[str]) -> Authority:
    """Create the CA and the collector's server certificate if they do not exist yet."""
    d = Path(directory)
    ca = Authority(d) if Authority.exists(d) else Authority.create(d)
    if not (d / "server.crt").exists():
        ca.issue(d, "server", server_names=server_names)
    return ca


def new_agent_id() -> str:
    return f"agt-{uuid.uuid4().hex[:16]}"
