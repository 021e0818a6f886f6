"""The console's HTTPS listener: the standard library's threading HTTP server behind TLS.

One thread per connection (a live page's event stream holds one for as long as it is
open; analysts number in the tens). Every response carries the security headers; every
POST is checked for its CSRF token; a request presenting an agent certificate, or a
revoked one, is refused before any page code runs.
"""

from __future__ import annotations

import contextlib
import hmac
import http.cookies
import json
import secrets
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cryptography import x509

from collector.console import i18n
from collector.console.accounts import Accounts, Session, Throttle
from collector.pki.ca import Identity, PkiError
from collector.query.scope import Scope
from collector.store import Store
from common import logs

log = logs.get("collector.console")

STATIC = Path(__file__).parent / "static"
SESSION_COOKIE = "__Host-vigie_session"  # __Host-: Secure, Path=/, no Domain (RFC 6265bis)
LOGIN_COOKIE = "__Host-vigie_login"  # the CSRF token of the sign-in form, before a session
MAX_BODY = 256 * 1024
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Strict-Transport-Security": "max-age=31536000",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
STATIC_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}


class HttpError(Exception):
    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    cache: str = "no-store"

    @classmethod
    def redirect(cls, where: str, status: int = 303) -> Response:
        return cls(status, headers=[("Location", where)])


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    cookies: dict[str, str]
    headers: Any
    client: str
    certificate: Identity | None
    session: Session | None = None
    sid: str = ""
    lang: str = i18n.DEFAULT
    tz: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))

    def _(self, text: str) -> str:
        return i18n.translations(self.lang).gettext(text)

    @property
    def scope(self) -> Scope:
        assert self.session is not None
        return Scope(self.session.role)


def valid_zone(name: str) -> bool:
    if not name or len(name) > 64:
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def zone(name: str, default: str = "UTC") -> ZoneInfo:
    return ZoneInfo(name if valid_zone(name) else default)


def _first(values: dict[str, list[str]]) -> dict[str, str]:
    return {k: v[0] for k, v in values.items() if v}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "vigie-console"
    sys_version = ""
    server: ConsoleHTTPServer

    def version_string(self) -> str:
        return "vigie-console"

    def log_message(self, format: str, *args: Any) -> None:
        # No addresses nor paths in the logs (incident keys and filters are the analysts').
        return

    def do_GET(self) -> None:
        self._serve("GET")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        t0 = time.perf_counter()
        try:
            req = self._request(method)
            resp = self.server.app.handle(req, self)
        except HttpError as exc:
            resp = self.server.app.error(exc.status, exc.message, self)
        except (BrokenPipeError, ConnectionResetError):
            return
        except Exception as exc:
            ref = secrets.token_hex(6)
            log.error("console_failed", ref=ref, error=f"{type(exc).__name__}: {exc}"[:500])
            resp = self.server.app.error(500, f"internal error (ref {ref})", self)
        if resp is None:  # streamed (the event stream wrote its own response)
            self.close_connection = True
            return
        self.server.app.timings.append((self.path.split("?")[0], time.perf_counter() - t0))
        self._send(resp, method == "HEAD")

    def _send(self, resp: Response, head_only: bool = False) -> None:
        try:
            self.send_response(resp.status)
            for k, v in SECURITY_HEADERS.items():
                self.send_header(k, v)
            self.send_header("Cache-Control", resp.cache)
            self.send_header("Content-Type", resp.content_type)
            self.send_header("Content-Length", str(len(resp.body)))
            for k, v in resp.headers:
                self.send_header(k, v)
            self.end_headers()
            if not head_only:
                self.wfile.write(resp.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _request(self, method: str) -> Request:
        url = urllib.parse.urlsplit(self.path)
        form: dict[str, str] = {}
        if method == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise HttpError(413, "request too large")
            body = self.rfile.read(length).decode("utf-8", "replace")
            form = _first(urllib.parse.parse_qs(body, keep_blank_values=True))
        cookies: dict[str, str] = {}
        raw = self.headers.get("Cookie")
        if raw:
            jar = http.cookies.SimpleCookie()
            with contextlib.suppress(http.cookies.CookieError):
                jar.load(raw)
            cookies = {k: m.value for k, m in jar.items()}
        return Request(
            method,
            url.path,
            _first(urllib.parse.parse_qs(url.query, keep_blank_values=True)),
            form,
            cookies,
            self.headers,
            self.client_address[0],
            self._certificate(),
        )

    def _certificate(self) -> Identity | None:
        """The identity of a client certificate the TLS layer verified against the
        collector's CA (an unverifiable one never gets this far: the handshake fails)."""
        getpeercert = getattr(self.connection, "getpeercert", None)
        der = getpeercert(binary_form=True) if getpeercert else None
        if not der:
            return None
        try:
            return Identity.from_certificate(x509.load_der_x509_certificate(der))
        except (PkiError, ValueError):
            raise HttpError(403, "this certificate carries no valid Vigie identity") from None


class ConsoleHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64
    app: Console

    def get_request(self):
        sock, addr = super().get_request()
        sock.settimeout(30)
        return sock, addr


def tls_context(cert: Path, key: Path, client_ca: bytes | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if client_ca:
        # Optional: an analyst whose browser holds a Vigie certificate signs in with it;
        # the others use their password and code.
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(cadata=client_ca.decode("ascii"))
    return ctx


class _TlsServer(ConsoleHTTPServer):
    """The TLS handshake runs in the connection's own thread (not in accept, where one
    slow client would hold every other)."""

    ssl_context: ssl.SSLContext

    def finish_request(self, request, client_address) -> None:
        try:
            request = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            request.close()
            return
        super().finish_request(request, client_address)


class Console:
    """The application: routes, sessions, CSRF, the audit of sign-ins and actions."""

    def __init__(
        self,
        cfg: dict[str, Any],
        store: Store,
        *,
        registry=None,
        revoked: Callable[[str], bool] | None = None,
        silent_after: float = 300.0,
        stix: dict | None = None,
    ) -> None:
        from collector.console.pages import Pages

        self.cfg = cfg
        self.store = store
        self.registry = registry
        self.revoked = revoked or (lambda name: False)
        self.silent_after = silent_after
        self.stix = stix or {}
        self.accounts = Accounts(
            store,
            totp_required=cfg["totp"],
            session_seconds=cfg["session_hours"] * 3600,
            idle_seconds=cfg["idle_minutes"] * 60,
            account_failures=cfg["login_failures"],
            lock_seconds=cfg["lock_seconds"],
        )
        self.throttle = Throttle(cfg["address_failures"], 300.0)
        self.default_tz = cfg["time_zone"]
        self.pages = Pages(self)
        self.timings: list[tuple[str, float]] = []  # read by the bench; bounded below
        self._httpd: ConsoleHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.stopping = threading.Event()

    # Lifecycle -------------------------------------------------------------------------

    def start(self, listen: str, ctx: ssl.SSLContext) -> int:
        host, _, port = listen.rpartition(":")
        httpd = _TlsServer((host.strip("[]"), int(port)), Handler)
        httpd.ssl_context = ctx
        httpd.app = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, name="console", daemon=True)
        self._thread.start()
        return httpd.server_address[1]

    def stop(self) -> None:
        self.stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    # Audit -----------------------------------------------------------------------------

    def audit(self, who: str, role: str, action: str, detail: str, outcome: str) -> None:
        """Into the audit trail the gRPC calls write, the door named in the detail."""
        try:
            self.store.audit(who, role, action, f"via=console {detail}".strip(), outcome)
        except Exception as exc:
            log.error("audit_write_failed", action=action, error=str(exc))
        log.info("analyst_action", who=who, action=action, outcome=outcome, via="console")

    # Requests --------------------------------------------------------------------------

    def handle(self, req: Request, handler: Handler) -> Response | None:
        if len(self.timings) > 100_000:
            del self.timings[:50_000]
        cert = req.certificate
        if cert is not None and (cert.kind != "analyst" or self.revoked(cert.name)):
            # An agent's certificate, or a revoked one: nothing, not even the sign-in page.
            raise HttpError(403, "this certificate may not use the console")
        if req.path.startswith("/static/"):
            return self.static(req.path.removeprefix("/static/"))
        req.sid = req.cookies.get(SESSION_COOKIE, "")
        req.session = self.accounts.session(req.sid) if req.sid else None
        if req.session is not None:
            req.lang = req.session.lang
            req.tz = zone(req.session.tz, self.default_tz)
        else:
            req.lang = i18n.pick(req.query.get("lang") or req.form.get("lang"))
            req.tz = zone(self.default_tz)
        if req.method == "POST":
            self._check_csrf(req)
        route = self.pages.route(req)
        if route is None:
            raise HttpError(404)
        page, public = route
        if not public and req.session is None:
            if req.path == "/events":
                raise HttpError(401, "signed out")
            return Response.redirect("/login?next=" + urllib.parse.quote(req.path))
        return page(req, handler)

    def _check_csrf(self, req: Request) -> None:
        """Every POST carries the token of its session (or, before sign-in, of the sign-in
        form's cookie), compared in constant time; and comes from our own origin."""
        origin = req.headers.get("Origin")
        host = req.headers.get("Host", "")
        if origin and origin not in ("null",) and urllib.parse.urlsplit(origin).netloc != host:
            raise HttpError(403, "cross-origin request refused")
        sent = req.form.get("csrf", "")
        if req.session is not None:
            expected = req.session.csrf
        else:
            expected = req.cookies.get(LOGIN_COOKIE, "")
        if not sent or not expected or not hmac.compare_digest(sent, expected):
            raise HttpError(403, "missing or wrong CSRF token: reload the page and try again")

    def static(self, name: str) -> Response:
        path = (STATIC / name).resolve()
        if STATIC.resolve() not in path.parents or not path.is_file():
            raise HttpError(404)
        kind = STATIC_TYPES.get(path.suffix)
        if kind is None:
            raise HttpError(404)
        # Names carry no version: an hour's cache, revalidated after an upgrade.
        return Response(200, path.read_bytes(), kind, cache="private, max-age=3600")

    def error(self, status: int, message: str, handler: Handler) -> Response:
        text = message or HTTPStatus(status).phrase
        body = (
            "<!doctype html><html><head><meta charset=utf-8><title>"
            f"{status}</title><link rel=stylesheet href=/static/console.css></head>"
            f'<body class="error-page"><main><h1>{status}</h1><p>'
            + _escape(text)
            + '</p><p><a href="/">Vigie</a></p></main></body></html>'
        )
        return Response(status, body.encode())

    def json(self, value: Any, status: int = 200) -> Response:
        return Response(status, json.dumps(value).encode(), "application/json")


def _escape(text: str) -> str:
    from collector.console.html import esc

    return str(esc(text))
