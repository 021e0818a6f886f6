"""Enrollment and renewal: thin over the CA and the registry.

Enroll runs on a listener with server-side TLS only, reachable without a client
certificate: it serves nothing else. The caller proves itself with a one-time token; the
identity written in the certificate comes from the token, never from the request.
Renew runs on the main mutual-TLS port (the auth interceptor admits only valid, unrevoked
agent certificates); the new certificate carries the caller's identity, unchanged.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from cryptography import x509

from collector.auth import caller
from collector.pki import ca as pki
from collector.pki.registry import Registry, TokenRefused, parse_token
from common import logs
from vigie.v1 import enroll_pb2, enroll_pb2_grpc

log = logs.get("collector.enroll")
MAX_CSR_BYTES = 16 * 1024


def _csr(data: bytes, context: grpc.ServicerContext) -> x509.CertificateSigningRequest:
    if not data or len(data) > MAX_CSR_BYTES:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "csr_pem is missing or too large")
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "csr_pem is not a PEM certificate request")
    if not csr.is_signature_valid:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "csr_pem signature is invalid")
    try:
        pki.check_public_key(csr.public_key())
    except pki.PkiError as exc:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    return csr


class _Issuer:
    def __init__(self, pki_dir: Path, registry: Registry, cert_seconds: int) -> None:
        self.pki_dir = pki_dir
        self.registry = registry
        self.cert_seconds = cert_seconds

    def issue(self, csr: x509.CertificateSigningRequest, ident: pki.Identity, how: str):
        authority = pki.Authority(self.pki_dir)  # re-read: a rollover applies at once
        cert = authority.sign(csr, identity=ident, seconds=self.cert_seconds)
        self.registry.record_certificate(
            cert.serial_number,
            ident.name,
            ident.finess,
            ident.ght,
            ident.region,
            cert.not_valid_after_utc.timestamp(),
            how,
        )
        return pki.pem(cert), pki.trust_bundle(self.pki_dir)


class EnrollmentServicer(enroll_pb2_grpc.EnrollmentServicer):
    def __init__(self, pki_dir: Path, registry: Registry, cert_seconds: int) -> None:
        self.issuer = _Issuer(pki_dir, registry, cert_seconds)
        self.registry = registry

    def Enroll(self, request, context: grpc.ServicerContext):
        csr = _csr(request.csr_pem, context)
        # A fresh agent id at every enrollment: a reinstalled host never collides with
        # its former self, which simply goes silent (and can be revoked).
        agent_id = pki.new_agent_id()
        try:
            token_id, secret, _ = parse_token(request.token)
            binding = self.registry.use_token(token_id, secret, agent_id)
        except TokenRefused as exc:
            log.warning("enroll_refused", reason=str(exc), peer=context.peer())
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "enrollment token unknown, used or expired"
            )
        try:
            # Checked again (common.identity): a token stored before today's rules, or
            # written into the registry by other means, never becomes a certificate.
            ident = pki.Identity("agent", agent_id, binding.finess, binding.ght, binding.region)
        except pki.PkiError as exc:
            log.error("enroll_refused", reason=str(exc), token_id=binding.token_id)
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this enrollment token names an invalid site: ask for a new token",
            )
        cert, bundle = self.issuer.issue(csr, ident, "enroll")
        log.info(
            "agent_enrolled",
            agent_id=agent_id,
            finess=ident.finess,
            ght=ident.ght,
            region=ident.region,
            token_id=binding.token_id,
        )
        return enroll_pb2.EnrollResponse(
            agent_id=agent_id, certificate_pem=cert, ca_bundle_pem=bundle
        )


class RenewalServicer(enroll_pb2_grpc.RenewalServicer):
    def __init__(self, pki_dir: Path, registry: Registry, cert_seconds: int) -> None:
        self.issuer = _Issuer(pki_dir, registry, cert_seconds)

    def Renew(self, request, context: grpc.ServicerContext):
        who = caller(context)  # the interceptor admitted only a valid, unrevoked agent
        csr = _csr(request.csr_pem, context)
        pems = context.auth_context().get("x509_pem_cert") or [b""]
        presented = x509.load_pem_x509_certificate(pems[0])
        if csr.public_key().public_bytes(
            pki.serialization.Encoding.DER, pki.serialization.PublicFormat.SubjectPublicKeyInfo
        ) != presented.public_key().public_bytes(
            pki.serialization.Encoding.DER, pki.serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "renewal must be requested for the key of the certificate presented",
            )
        cert, bundle = self.issuer.issue(csr, who, "renew")
        log.info("agent_renewed", agent_id=who.name, finess=who.finess)
        return enroll_pb2.RenewResponse(certificate_pem=cert, ca_bundle_pem=bundle)
