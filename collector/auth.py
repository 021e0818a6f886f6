"""Who is calling: read from the client certificate, checked in one interceptor.

Services declare which kind of caller they accept; the interceptor refuses everyone else
before any servicer code runs. Servicers then read the caller with `caller(context)`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import uuid
from collections.abc import Callable

import grpc
from cryptography import x509

from collector.pki.ca import Identity, PkiError
from common import logs

log = logs.get("collector.auth")

# Which identity kind may call which service. Health and reflection: any valid certificate.
SERVICE_KINDS = {
    "/vigie.v1.Ingest/": "agent",
    "/vigie.v1.Analyst/": "analyst",
    "/vigie.v1.Renewal/": "agent",
}


@functools.lru_cache(maxsize=4096)
def _identity_from_pem(pem: bytes) -> Identity:
    return Identity.from_certificate(x509.load_pem_x509_certificate(pem))


@functools.lru_cache(maxsize=1024)
def _refused(pem: bytes) -> None:
    """Say once per certificate why a certificate signed by a trusted CA is refused (an
    identity that the shared rules of common.identity refuse, say). Only the serial
    number: the registry maps it to the agent, and log lines carry no names."""
    try:
        serial = f"{x509.load_pem_x509_certificate(pem).serial_number:x}"
    except ValueError:
        serial = "unreadable"
    log.warning("certificate_refused", serial=serial, reason="no valid Vigie identity")


def caller(context: grpc.ServicerContext) -> Identity | None:
    """The caller's identity, or None when its certificate carries no valid one: a value
    that fails the checks of common.identity makes the whole certificate invalid."""
    pems = context.auth_context().get("x509_pem_cert")
    if not pems:
        return None
    try:
        return _identity_from_pem(pems[0])
    except (PkiError, ValueError):
        _refused(pems[0])
        return None


def _required_kind(method: str) -> str | None:
    for prefix, kind in SERVICE_KINDS.items():
        if method.startswith(prefix):
            return kind
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """`revoked(agent_id)` is asked on every call (a cache: see pki.registry)."""

    def __init__(
        self,
        revoked: Callable[[str], bool] | None = None,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.revoked = revoked
        # Told the reason of each refused call (a metric label: unauthenticated, revoked,
        # permission_denied).
        self.on_refused = on_refused or (lambda reason: None)

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None:
            return None
        kind = _required_kind(details.method)

        def refusal(context: grpc.ServicerContext) -> tuple[grpc.StatusCode, str] | None:
            who = caller(context)
            if who is None:
                self.on_refused("unauthenticated")
                return grpc.StatusCode.UNAUTHENTICATED, "no valid Vigie certificate"
            if who.kind == "agent" and self.revoked is not None and self.revoked(who.name):
                self.on_refused("revoked")
                return grpc.StatusCode.UNAUTHENTICATED, "this agent certificate is revoked"
            if kind is not None and who.kind != kind:
                self.on_refused("permission_denied")
                return (
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"a {who.kind} certificate cannot call {details.method}",
                )
            return None

        return _wrap(handler, refusal, details.method)


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


class Undecodable(Exception):
    """Raised by an asyncio handler's request iterator on a message that is not valid
    protobuf. The handler lets it out and the wrapper answers INVALID_ARGUMENT: aborting
    from inside the iterator would fail when a task other than the handler's reads it."""


async def _checked_async(requests):
    async for request in requests:
        if request is UNDECODABLE:
            raise Undecodable(UNDECODABLE_TEXT)
        yield request


def _internal(method: str, exc: BaseException) -> str:
    """What a caller is told of a failure of ours: a reference to the log line that holds
    the detail, never the exception itself (paths, SQL, values of other sites)."""
    ref = uuid.uuid4().hex[:12]
    log.error("call_failed", method=method, ref=ref, error=f"{type(exc).__name__}: {exc}"[:500])
    return f"internal error in the collector (ref {ref}); the operator can look it up"


def _wrap(handler: grpc.RpcMethodHandler, refusal: Callable, method: str) -> grpc.RpcMethodHandler:
    """The handler, behind the caller check and the lenient decoding, its unexpected
    failures answered INTERNAL with a reference. Handlers written for asyncio (the
    agents' stream, every watch) stay coroutines; the others run in the server's thread
    pool, where the context's abort() raises instead of being awaited."""
    decode = _lenient(handler.request_deserializer)

    def check(context: grpc.ServicerContext) -> None:
        refused = refusal(context)
        if refused is not None:
            context.abort(*refused)

    if handler.stream_stream and inspect.isasyncgenfunction(handler.stream_stream):
        inner_ass = handler.stream_stream

        async def async_stream_stream(requests, context):
            refused = refusal(context)
            if refused is not None:
                await context.abort(*refused)
            try:
                async for response in inner_ass(_checked_async(requests), context):
                    yield response
            except Undecodable:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, UNDECODABLE_TEXT)
            except (grpc.aio.AbortError, asyncio.CancelledError):
                raise
            except Exception as exc:
                await context.abort(grpc.StatusCode.INTERNAL, _internal(method, exc))

        return grpc.stream_stream_rpc_method_handler(
            async_stream_stream, decode, handler.response_serializer
        )
    if handler.unary_stream and inspect.isasyncgenfunction(handler.unary_stream):
        inner_aus = handler.unary_stream

        async def async_unary_stream(request, context):
            refused = refusal(context)
            if refused is not None:
                await context.abort(*refused)
            if request is UNDECODABLE:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, UNDECODABLE_TEXT)
            try:
                async for response in inner_aus(request, context):
                    yield response
            except (grpc.aio.AbortError, asyncio.CancelledError):
                raise
            except Exception as exc:
                await context.abort(grpc.StatusCode.INTERNAL, _internal(method, exc))

        return grpc.unary_stream_rpc_method_handler(
            async_unary_stream, decode, handler.response_serializer
        )
    if handler.unary_unary:
        inner = handler.unary_unary

        def unary_unary(request, context):
            check(context)
            if request is UNDECODABLE:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, UNDECODABLE_TEXT)
            try:
                return inner(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                context.abort(grpc.StatusCode.INTERNAL, _internal(method, exc))

        return grpc.unary_unary_rpc_method_handler(unary_unary, decode, handler.response_serializer)
    if handler.unary_stream:
        inner_us = handler.unary_stream

        def unary_stream(request, context):
            check(context)
            if request is UNDECODABLE:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, UNDECODABLE_TEXT)
            try:
                yield from inner_us(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                context.abort(grpc.StatusCode.INTERNAL, _internal(method, exc))

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, decode, handler.response_serializer
        )
    if handler.stream_unary:
        inner_su = handler.stream_unary

        def stream_unary(requests, context):
            check(context)
            try:
                return inner_su(_checked(requests, context), context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                context.abort(grpc.StatusCode.INTERNAL, _internal(method, exc))

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, decode, handler.response_serializer
        )
    inner_ss = handler.stream_stream

    def stream_stream(requests, context):
        check(context)
        try:
            yield from inner_ss(_checked(requests, context), context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            context.abort(grpc.StatusCode.INTERNAL, _internal(method, exc))

    return grpc.stream_stream_rpc_method_handler(stream_stream, decode, handler.response_serializer)
