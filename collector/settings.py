"""The collector's settings: every key declared here, with its default and help."""

from __future__ import annotations

from collector.console.settings import OPTIONS as CONSOLE
from collector.correlate.rules import OPTIONS as CORRELATION
from collector.sinks import OPTIONS as SINKS
from common.config import Option, at_least, check_listen, host_port, one_of, positive


def _storage_url(value: str) -> str | None:
    if value and not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
        return f"must start with sqlite:/// or postgresql://, got {value!r}"
    return None


SCHEMA = {
    "listen": Option(
        str, "127.0.0.1:4443", "Address the gRPC (mutual TLS) server listens on.", host_port
    ),
    "state_dir": Option(
        str, "/var/lib/vigie-collector", "Where the store and the PKI live unless set below."
    ),
    "storage": Option(
        str,
        "",
        "Store URL: sqlite:///PATH, or postgresql://USER@HOST/DB shared by several replicas.\n"
        "Empty: sqlite:///state_dir/vigie.db.",
        _storage_url,
    ),
    "sqlite_synchronous": Option(
        str,
        "full",
        "SQLite durability: 'full' survives power loss, 'normal' a crash.",
        one_of("full", "normal"),
    ),
    "silent_after_seconds": Option(
        float, 300.0, "An agent without heartbeat for this long is shown silent.", positive
    ),
    "log_level": Option(
        str, "info", "debug, info, warning or error.", one_of("debug", "info", "warning", "error")
    ),
    "pki": {
        "dir": Option(str, "", "CA, server certificate and key. Empty: state_dir/pki."),
        "auto_init": Option(
            bool, True, "Create a CA and server certificate at first start if missing."
        ),
        "server_names": Option(
            list,
            ["localhost", "127.0.0.1", "::1"],
            "Names and addresses put in the server certificate.",
        ),
        "agent_cert_seconds": Option(
            int,
            90 * 86400,
            "Lifetime of agent certificates (enrollment and renewal); agents renew when a "
            "third is left. Seconds-long values are for tests.",
            at_least(5),
        ),
    },
    "enroll": {
        "listen": Option(
            str,
            "auto",
            "Enrollment listener (server TLS only, serves nothing but Enroll): HOST:PORT, "
            "'auto' for the main port + 1 (skipped with a warning if taken), '' for none.",
        ),
    },
    "ingest": {
        "max_batches_in_flight": Option(
            int, 8, "Unacknowledged batches an agent may send.", at_least(1)
        ),
        "max_alerts_per_second": Option(
            int, 2000, "Backlog drain rate told to each agent.", at_least(1)
        ),
        "max_message_bytes": Option(
            int, 4 * 1024 * 1024, "Largest gRPC message accepted.", at_least(65536)
        ),
        "max_streams": Option(
            int,
            5000,
            "Agent streams served at once. Beyond this a new stream is refused at once\n"
            "(RESOURCE_EXHAUSTED), so its agent backs off and retries, or the balancer picks\n"
            "a replica.",
            at_least(1),
        ),
        "max_alerts_buffered": Option(
            int,
            200_000,
            "Alerts read from all agents and not yet stored, at most (each takes about a\n"
            "kilobyte). Past this the collector stops reading, and gRPC flow control holds\n"
            "the agents back until the store catches up.",
            at_least(1),
        ),
        "workers": Option(
            int,
            64,
            "Threads serving analyst queries and certificate renewals. Agents' streams hold\n"
            "none: one event loop serves them all.",
            at_least(2),
        ),
    },
    "metrics": {
        "listen": Option(
            str,
            "127.0.0.1:9751",
            "Prometheus metrics (GET /metrics) on this HOST:PORT; '' disables. "
            "Keep it on loopback or behind the monitoring network's firewall.",
            check_listen,
        ),
    },
    "console": CONSOLE,
    "correlation": CORRELATION,
    "retention": {
        "alert_days": Option(
            float, 365.0, "Alerts and closed incidents older than this are purged (GDPR).", positive
        ),
        "check_interval_seconds": Option(float, 3600.0, "How often the purge runs.", positive),
    },
    **SINKS,
}
