"""Every analyst call is written down: who, what, when, and how it ended.

An interceptor rather than code in each servicer method, so a new RPC cannot forget it.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable

import grpc
from google.protobuf import text_format

from collector.auth import caller
from collector.store import Store
from common import logs

log = logs.get("collector.audit")
AUDITED = "/vigie.v1.Analyst/"


class AuditInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, store: Store) -> None:
        self.store = store

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or not details.method.startswith(AUDITED):
            return handler
        action = details.method.removeprefix(AUDITED)
        record = self._record

        if handler.unary_unary:
            inner = handler.unary_unary

            def unary_unary(request, context):
                context = _Recording(context)
                try:
                    response = inner(request, context)
                except BaseException:
                    record(context, action, request, _outcome(context, "error"))
                    raise
                record(context, action, request, _outcome(context))
                return response

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream and inspect.isasyncgenfunction(handler.unary_stream):
            inner_async = handler.unary_stream

            async def async_unary_stream(request, context):
                await asyncio.to_thread(record, context, action, request, "started")
                async for response in inner_async(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(
                async_unary_stream, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            def unary_stream(request, context):
                record(context, action, request, "started")
                yield from inner_stream(request, context)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        return handler

    def _record(self, context: grpc.ServicerContext, action: str, request, outcome: str) -> None:
        who = caller(context)
        detail = text_format.MessageToString(request, as_one_line=True)
        try:
            self.store.audit(
                who.name if who else "?", who.role if who else "", action, detail, outcome
            )
        except Exception as exc:
            log.error("audit_write_failed", action=action, error=str(exc))
        log.info("analyst_action", who=who.name if who else "?", action=action, outcome=outcome)


class _Recording:
    """The context as a handler sees it, remembering the status the handler set: under the
    asyncio server a plain handler's context cannot tell its code afterwards."""

    def __init__(self, context: grpc.ServicerContext) -> None:
        self._context = context
        self._code: grpc.StatusCode | None = None

    def abort(self, code: grpc.StatusCode, details: str):
        self._code = code
        return self._context.abort(code, details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code
        self._context.set_code(code)

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def __getattr__(self, name: str):
        return getattr(self._context, name)


def _outcome(context: grpc.ServicerContext, default: str = "ok") -> str:
    code = context.code()
    return default if code in (None, grpc.StatusCode.OK) else code.name
