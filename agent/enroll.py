"""Enrollment and certificate renewal, agent side.

    vigie-agent enroll --collector HOST:PORT --token TOKEN [--ca-fingerprint SHA256 | --ca FILE]

The agent makes its key here (state_dir/tls/agent.key, 0600, never sent), sends a CSR
with the one-time token and gets back its certificate and the collector's CA bundle.

First contact: the agent trusts nothing yet. It authenticates the collector by pinning
its CA: the SHA-256 fingerprint comes in the token (or --ca-fingerprint), or the CA
itself from --ca. With a fingerprint, the agent opens a TLS connection, reads the chain
the enrollment listener presents (server certificate + issuing CA), keeps the CA whose
fingerprint matches and checks it signed the server certificate; only then does gRPC
connect with that CA as its sole root (hostname checked as usual) and send the token.

Renewal runs over the existing mutual-TLS channel (Renewal.Renew), with a CSR from the
same key: only the certificate file changes, replaced atomically.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.deliver.validity import lifetime_left
from common import logs
from common.files import write_atomic
from vigie.v1 import enroll_pb2, enroll_pb2_grpc

log = logs.get("agent.enroll")
TOKEN_PREFIX = "vgt1"


class EnrollError(Exception):
    pass


# What `vigie-collector token create` prints: vgt1.<16 hex>.<32 of base64url>.<64 hex>.
TOKEN_PARTS = (("id", 16, "0123456789abcdef"), ("secret", 32, None), ("CA fingerprint", 64, None))


def token_fingerprint(token: str) -> str:
    parts = token.strip().split(".")
    if len(parts) not in (3, 4) or parts[0] != TOKEN_PREFIX:
        raise EnrollError("this is not an enrollment token (vgt1.<id>.<secret>[.<fingerprint>])")
    # A token pasted from a terminal or a mail often loses its end: say that, rather than
    # blame a fingerprint or the collector for what is a copy problem.
    for (name, size, alphabet), part in zip(TOKEN_PARTS, parts[1:], strict=False):
        if len(part) != size or (alphabet and part.strip(alphabet)):
            raise EnrollError(
                f"this token looks cut or mistyped: its {name} has {len(part)} of {size} "
                "characters; copy the whole line that 'vigie-collector token create' "
                f"printed (about {len(TOKEN_PREFIX) + 3 + sum(p[1] for p in TOKEN_PARTS)} "
                "characters, one line)"
            )
    return parts[3].lower() if len(parts) == 4 else ""


def _norm_fp(fp: str) -> str:
    out = fp.replace(":", "").strip().lower()
    if len(out) != 64 or any(c not in "0123456789abcdef" for c in out):
        raise EnrollError(f"CA fingerprint {fp!r} is not a SHA-256 in hex")
    return out


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def pin_ca(address: str, fingerprint: str, timeout: float = 10.0) -> bytes:
    """Fetch the CA presented by the collector and return its PEM if it is the pinned one."""
    fingerprint = _norm_fp(fingerprint)
    host, port = _split(address)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # nothing is trusted or sent here: we only read the chain
    ctx.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            chain = [c.public_bytes(ssl._ssl.ENCODING_DER) for c in _chain(tls)]
    except OSError as exc:
        raise EnrollError(
            f"cannot reach the collector's enrollment port {address}: {exc}"
        ) from None
    if not chain:
        raise EnrollError("the collector presented no certificate")
    if len(chain) == 1:
        # The enrollment listener sends its CA with its certificate; the main listener
        # (mutual TLS) does not: this is the operator's most common slip, not an attack.
        host_part, _, port_part = address.rpartition(":")
        nxt = f"{host_part}:{int(port_part) + 1}" if port_part.isdigit() else "its port + 1"
        raise EnrollError(
            f"{address} presented its certificate without its CA: it is probably the "
            f"collector's main port; enrollment listens on a port of its own (by default "
            f"the main port + 1): try --collector {nxt}. Nothing was sent"
        )
    leaf = x509.load_der_x509_certificate(chain[0])
    for der in chain[1:]:
        if hashlib.sha256(der).hexdigest() != fingerprint:
            continue
        ca = x509.load_der_x509_certificate(der)
        try:
            leaf.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            raise EnrollError("the pinned CA did not sign the collector's certificate") from None
        return ca.public_bytes(serialization.Encoding.PEM)
    raise EnrollError(
        "the collector's CA does not match the pinned fingerprint: wrong collector, or an "
        "interception; nothing was sent"
    )


def _chain(tls: ssl.SSLSocket) -> list:
    sslobj = tls._sslobj  # Python 3.11: the chain getters are not public yet (3.13)
    getter = getattr(tls, "get_unverified_chain", None) or sslobj.get_unverified_chain
    return list(getter() or [])


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def csr_pem(key: ec.EllipticCurvePrivateKey, name: str = "vigie-agent") -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def enrolled_as(tls_dir: Path) -> str | None:
    """The identity an earlier enrollment left in tls_dir, in words, or None."""
    from urllib.parse import parse_qs, unquote, urlparse

    try:
        cert = x509.load_pem_x509_certificate((tls_dir / "agent.crt").read_bytes())
    except (OSError, ValueError):
        return None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    until = cert.not_valid_after_utc.strftime("%Y-%m-%d")
    for uri in uris:
        u = urlparse(uri)
        if u.scheme == "vigie" and u.path.startswith("agent/"):
            q = {k: v[0] for k, v in parse_qs(u.query).items()}
            return (
                f"agent {unquote(u.path.removeprefix('agent/'))} (FINESS {q.get('finess', '?')}, "
                f"GHT {q.get('ght', '?')}, region {q.get('region', '?')}), certificate valid "
                f"until {until}"
            )
    return f"a certificate valid until {until}"


def enroll(
    address: str,
    token: str,
    tls_dir: Path,
    ca_fingerprint: str = "",
    ca_file: str = "",
    timeout: float = 30.0,
) -> str:
    """Enroll; write agent.key (0600), agent.crt, ca.crt in tls_dir; return the agent id."""
    embedded = token_fingerprint(token)
    if ca_file:
        try:
            roots = Path(ca_file).read_bytes()
        except OSError as exc:
            raise EnrollError(f"--ca {ca_file}: {exc.strerror}") from None
    else:
        fp = ca_fingerprint or embedded
        if not fp:
            raise EnrollError("give --ca-fingerprint or --ca: the collector must be authenticated")
        if ca_fingerprint and embedded and _norm_fp(ca_fingerprint) != _norm_fp(embedded):
            raise EnrollError("--ca-fingerprint differs from the fingerprint in the token")
        roots = pin_ca(address, fp)
    key = new_key()  # made here, kept here: only the CSR travels
    with grpc.secure_channel(address, grpc.ssl_channel_credentials(roots)) as ch:
        try:
            resp = enroll_pb2_grpc.EnrollmentStub(ch).Enroll(
                enroll_pb2.EnrollRequest(token=token.strip(), csr_pem=csr_pem(key)),
                timeout=timeout,
            )
        except grpc.RpcError as exc:
            raise EnrollError(f"enrollment refused: {exc.code().name}: {exc.details()}") from None
    cert = x509.load_pem_x509_certificate(resp.certificate_pem)
    if cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise EnrollError("the collector returned a certificate for another key")
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Key first, then certificate: a crash in between leaves a key without a matching
    # certificate, which the next enrollment simply replaces.
    write_atomic(tls_dir / "agent.key", key_pem(key), 0o600)
    write_atomic(tls_dir / "agent.crt", resp.certificate_pem)
    write_atomic(tls_dir / "ca.crt", resp.ca_bundle_pem or roots)
    log.info(
        "agent_enrolled",
        agent_id=resp.agent_id,
        not_after=cert.not_valid_after_utc.isoformat(),
    )
    return resp.agent_id


# Renewal ------------------------------------------------------------------------------------
def renew(channel: grpc.Channel, key_path: Path, cert_path: Path, ca_path: Path) -> float:
    """Ask for a new certificate for the same key; replace the files; return seconds left."""
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    resp = enroll_pb2_grpc.RenewalStub(channel).Renew(
        enroll_pb2.RenewRequest(csr_pem=csr_pem(key)), timeout=30
    )
    write_atomic(cert_path, resp.certificate_pem)
    if resp.ca_bundle_pem:
        write_atomic(ca_path, resp.ca_bundle_pem)
    left, _ = lifetime_left(resp.certificate_pem)
    return left
