"""Incident changes POSTed as JSON to an HTTPS receiver, with retries.

Only https:// URLs, and always a verifying TLS context (the system's CAs, or `ca_file`
for a private CA). Connection errors, 5xx and 429 are retried with exponential backoff
(a Retry-After header wins, up to a cap); any other 4xx is final. Redirects are not
followed: a POST must not silently become a GET or go somewhere else. Each request
carries `Idempotency-Key: KEY:SEQ`, and the body carries key and seq too.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from collector.sinks.base import SinkError, https_url, incident_dict
from vigie.v1 import analyst_pb2

MAX_BACKOFF = 60.0  # seconds, the longest wait between two attempts
USER_AGENT = "vigie-collector"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError with the 3xx status


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now)


class WebhookSink:
    name = "webhook"

    def __init__(
        self,
        url: str,
        *,
        ca_file: str = "",
        token_file: str = "",
        timeout: float = 10.0,
        max_attempts: int = 5,
        backoff: float = 1.0,
        sleep: Callable[[float], object] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        problem = https_url(url) if url else "must be set"
        if problem:
            raise ValueError(f"webhook url {problem}")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.url = url
        self.token_file = token_file
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff = backoff
        self._closed = threading.Event()
        self.sleep = self._closed.wait if sleep is None else sleep  # close() cuts a wait short
        self.clock = clock
        context = ssl.create_default_context(cafile=ca_file or None)  # verifies host + chain
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}),  # direct connection, whatever the environment
            urllib.request.HTTPSHandler(context=context),
            _NoRedirect(),
        )
        if token_file:
            self._token()  # fail at start, not at the first incident

    def send(
        self, incident: analyst_pb2.Incident, alerts: Sequence[analyst_pb2.StoredAlert]
    ) -> None:
        body = json.dumps(incident_dict(incident, alerts), ensure_ascii=False).encode("utf-8")
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Idempotency-Key": f"{incident.key}:{incident.seq}",
        }
        if self.token_file:
            headers["Authorization"] = f"Bearer {self._token()}"
        problem, status = "not attempted", None
        for attempt in range(1, self.max_attempts + 1):
            if self._closed.is_set():
                raise SinkError("webhook: sink closed")
            wait = min(MAX_BACKOFF, self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with self._opener.open(request, timeout=self.timeout) as response:
                    response.read()
                    return  # 2xx (urllib raises HTTPError for everything else)
            except urllib.error.HTTPError as exc:
                exc.close()
                problem = f"HTTP {exc.code} {exc.reason}"
                if exc.code != 429 and not 500 <= exc.code < 600:
                    raise SinkError(
                        f"webhook: {self.url} answered {problem}", permanent=True, status=exc.code
                    ) from exc
                hinted = retry_after(exc.headers.get("Retry-After"), self.clock())
                if hinted is not None:
                    if hinted > MAX_BACKOFF:
                        raise SinkError(
                            f"webhook: {self.url} answered {problem}, retry after {hinted:.0f}s",
                            status=exc.code,
                        ) from exc
                    wait = hinted
                status = exc.code
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                reason = getattr(exc, "reason", exc)
                if isinstance(reason, ssl.SSLCertVerificationError):
                    message = f"webhook: {self.url}: TLS verification failed: {reason}"
                    raise SinkError(message) from exc
                problem = f"{type(reason).__name__}: {reason}"
                status = None
            if attempt < self.max_attempts:
                self.sleep(wait)
        raise SinkError(
            f"webhook: {self.url} failed after {self.max_attempts} attempt(s): {problem}",
            status=status,
        )

    def close(self) -> None:
        self._closed.set()

    def _token(self) -> str:
        try:
            token = Path(self.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SinkError(f"webhook: cannot read token_file {self.token_file}: {exc}") from exc
        if not token or any(c in token for c in "\r\n"):
            raise SinkError(f"webhook: token_file {self.token_file} holds no usable token")
        return token
