"""Who is calling: read from the client certificate, checked in one interceptor.

Services declare which kind of caller they accept; the interceptor refuses everyone else
before any servicer code runs. Servicers then read the caller with `caller(context)`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import grpc
from cryptography import x509

from collector.pki.ca import Identity, PkiError

# Which identity kind may call which service. Health and reflection: any valid certificate.
SERVICE_KINDS = {
    "/vigie.v1.Ingest/": "agent",
    "/vigie.v1.Analyst/": "analyst",
    "/vigie.v1.Renewal/": "agent",
}


@functools.lru_cache(maxsize=4096)
def _identity_from_pem(pem: bytes) -> Identity:
    return Identity.from_certificate(x509.load_pem_x509_certificate(pem))


def caller(context: grpc.ServicerContext) -> Identity | None:
    pems = context.auth_context().get("x509_pem_cert")
    if not pems:
        return None
    try:
        return _identity_from_pem(pems[0])
    except (PkiError, ValueError):
        return None


def _required_kind(method: str) -> str | None:
    for prefix, kind in SERVICE_KINDS.items():
        if method.startswith(prefix):
            return kind
    return None


class AuthInterceptor(grpc.ServerInterceptor):
    """`revoked(agent_id)` is asked on every call (a cache: see pki.registry)."""

    def __init__(self, revoked: Callable[[str], bool] | None = None) -> None:
        self.revoked = revoked

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):
        handler = continuation(details)
        if handler is None:
            return None
        kind = _required_kind(details.method)

        def check(context: grpc.ServicerContext) -> None:
            who = caller(context)
            if who is None:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "no valid Vigie certificate")
            if who.kind == "agent" and self.revoked is not None and self.revoked(who.name):
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "this agent certificate is revoked")
            if kind is not None and who.kind != kind:
                context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"a {who.kind} certificate cannot call {details.method}",
                )

        return _wrap(handler, check)


class _Undecodable:
    """What a request that is not valid protobuf (bad UTF-8 in a string, truncated field)
    decodes to: the handler answers INVALID_ARGUMENT instead of gRPC's bare INTERNAL."""


UNDECODABLE = _Undecodable()
UNDECODABLE_TEXT = "request is not a valid protobuf message (malformed field or invalid UTF-8)"


def _lenient(deserialize: Callable | None) -> Callable | None:
    if deserialize is None:
        return None

    def decode(data: bytes):
        try:
            return deserialize(data)
        except Exception:  # any parse failure is the client's bad input
            return UNDECODABLE

    return decode


def _checked(requests, context: grpc.ServicerContext):
    for request in requests:
        if request is UNDECODABLE:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, UNDECODABLE_TEXT)
        yield request


def _wrap(handler: grpc.RpcMethodHandler, check: Callable) -> grpc.RpcMethodHandler:
    decode = _lenient(handler.request_deserializer)
    if handler.unary_unary:
        inner = handler.unary_unary

        def unary_unary(request, context):
            check(context)
            if request is UNDECODABLE:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, UNDECODABLE_TEXT)
            return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, decode, handler.response_serializer)
    if handler.unary_stream:
        inner_us = handler.unary_stream

        def unary_stream(request, context):
            check(context)
            if request is UNDECODABLE:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, UNDECODABLE_TEXT)
            yield from inner_us(request, context)

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, decode, handler.response_serializer
        )
    if handler.stream_unary:
        inner_su = handler.stream_unary

        def stream_unary(requests, context):
            check(context)
            return inner_su(_checked(requests, context), context)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, decode, handler.response_serializer
        )
    inner_ss = handler.stream_stream

    def stream_stream(requests, context):
        check(context)
        yield from inner_ss(_checked(requests, context), context)

    return grpc.stream_stream_rpc_method_handler(stream_stream, decode, handler.response_serializer)
