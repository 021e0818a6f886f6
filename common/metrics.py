"""Prometheus metrics in the text exposition format (0.0.4), served on loopback.

No client library: counters, gauges and histograms with labels, plus callback gauges read
at scrape time (so the hot path pays nothing for values it already keeps, such as the
pipeline's packet counter). `serve("127.0.0.1:9750", registry)` runs a small HTTP server
in a daemon thread answering GET /metrics; '' disables it. A port already in use is logged
and skipped: metrics never stop the service.
"""

from __future__ import annotations

import math
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from common import logs

log = logs.get("metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Labels = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Family:
    kind = "untyped"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help
        self.label_names = tuple(labels)
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {_escape(self.help)}", f"# TYPE {self.name} {self.kind}"]

    def lines(self) -> list[str]:
        raise NotImplementedError


class Counter(_Family):
    kind = "counter"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self._values: dict[Labels, float] = {} if labels else {(): 0}

    def inc(self, amount: float = 1, *labels: str) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0) + amount

    def value(self, *labels: str) -> float:
        return self._values.get(labels, 0)

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.label_names, k)} {_fmt(v)}" for k, v in items]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, *labels: str) -> None:
        with self._lock:
            self._values[labels] = value


class Callback(_Family):
    """A gauge or counter whose samples are read at scrape time:
    `fn()` returns a number (no labels) or an iterable of (label values, number)."""

    def __init__(
        self,
        name: str,
        help: str,
        fn: Callable[[], float | Iterable[tuple[Labels, float]]],
        labels: Sequence[str] = (),
        kind: str = "gauge",
    ) -> None:
        super().__init__(name, help, labels)
        self.fn = fn
        self.kind = kind

    def lines(self) -> list[str]:
        try:
            got = self.fn()
        except Exception as exc:  # a broken source must not break the whole scrape
            log.warning("metric_failed", metric=self.name, error=str(exc))
            return []
        if isinstance(got, int | float):
            return [f"{self.name} {_fmt(got)}"]
        return [f"{self.name}{_labels(self.label_names, k)} {_fmt(v)}" for k, v in sorted(got)]


DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histogram(_Family):
    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        super().__init__(name, help)
        self.buckets = tuple(sorted(buckets))
        self._counts = [0] * (len(self.buckets) + 1)
        self._sum = 0.0
        self._count = 0

    def observe(self, value: float) -> None:
        with self._lock:
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    self._counts[i] += 1
                    break
            else:
                self._counts[-1] += 1
            self._sum += value
            self._count += 1

    @property
    def count(self) -> int:
        return self._count

    def lines(self) -> list[str]:
        with self._lock:
            counts, total, n = list(self._counts), self._sum, self._count
        out, running = [], 0
        for bound, c in zip((*self.buckets, math.inf), counts, strict=True):
            running += c
            out.append(f'{self.name}_bucket{{le="{_fmt(bound)}"}} {running}')
        out += [f"{self.name}_sum {_fmt(total)}", f"{self.name}_count {n}"]
        return out


class Registry:
    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def _add(self, family: _Family) -> _Family:
        if family.name in self._families:
            raise ValueError(f"metric {family.name} registered twice")
        self._families[family.name] = family
        return family

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        return self._add(Counter(name, help, labels))  # type: ignore[return-value]

    def gauge(self, name: str, help: str, labels: Sequence[str] = ()) -> Gauge:
        return self._add(Gauge(name, help, labels))  # type: ignore[return-value]

    def histogram(
        self, name: str, help: str, buckets: Sequence[float] = DEFAULT_BUCKETS
    ) -> Histogram:
        return self._add(Histogram(name, help, buckets))  # type: ignore[return-value]

    def callback(
        self,
        name: str,
        help: str,
        fn: Callable[[], float | Iterable[tuple[Labels, float]]],
        labels: Sequence[str] = (),
        kind: str = "gauge",
    ) -> Callback:
        return self._add(Callback(name, help, fn, labels, kind))  # type: ignore[return-value]

    def render(self) -> str:
        out: list[str] = []
        for family in list(self._families.values()):
            lines = family.lines()
            if lines:
                out += family.header() + lines
        return "\n".join(out) + "\n"


def parse(text: str) -> dict[str, float]:
    """Samples of an exposition text, keyed by `name{labels}` as written (for tests/doctor)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        out[key] = float(value)
    return out


class MetricsServer:
    def __init__(self, server: ThreadingHTTPServer) -> None:
        self.server = server
        host, port = server.server_address[:2]
        self.address = f"{host}:{port}"
        self._thread = threading.Thread(
            target=server.serve_forever, name="vigie-metrics", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve(listen: str, registry: Registry) -> MetricsServer | None:
    """Serve `registry` on `listen` (HOST:PORT); None when disabled or impossible."""
    if not listen:
        return None
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            body = registry.render().encode()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:  # no access log on stdout
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    try:
        server = Server((host, int(port)), Handler)
    except OSError as exc:
        log.warning("metrics_unavailable", listen=listen, error=exc.strerror or str(exc))
        return None
    ms = MetricsServer(server)
    log.info("metrics_listening", address=ms.address)
    return ms
