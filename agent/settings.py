"""The agent's settings: every key declared here or by a detector, with default and help."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.detect import registry
from agent.hunt.journal import OPTIONS as JOURNAL_OPTIONS
from agent.logs.options import OPTIONS as LOG_OPTIONS
from common.config import Option, at_least, check_listen, cidrs, host_port, one_of, positive


def _ranges(value: list) -> str | None:
    return cidrs(value, "a CIDR range")


def _bounds(lo: int, hi: int):
    """At least `lo`; at most `hi`, so that a bound (or a buffer size) stays one."""
    low = at_least(lo)

    def check(value: int) -> str | None:
        return low(value) or (None if value <= hi else f"must be at most {hi}, got {value}")

    return check


SCHEMA: dict[str, Any] = {
    "state_dir": Option(
        str, "/var/lib/vigie-agent", "Outbox, pseudonymisation secret and credentials live here."
    ),
    "log_level": Option(
        str, "info", "debug, info, warning or error.", one_of("debug", "info", "warning", "error")
    ),
    "capture": {
        "bpf_filter": Option(
            str, "ip or ip6 or arp", "Kernel (BPF) filter applied to live capture, tcpdump syntax."
        ),
        "snaplen": Option(int, 65535, "Bytes kept of each captured packet.", _bounds(64, 262144)),
        "ring": Option(
            bool,
            True,
            "Receive through a shared-memory ring (PACKET_MMAP TPACKET_V3): several times "
            "fewer system calls and drops at high rates. false: one recv() per packet.",
        ),
        "ring_megabytes": Option(
            int,
            8,
            "Size of the capture ring (1 MB blocks); more absorbs longer bursts.",
            _bounds(2, 4096),
        ),
    },
    "flows": {
        "max_flows": Option(
            int,
            200_000,
            "Flow table bound; oldest flows are evicted first.",
            _bounds(100, 10_000_000),
        ),
        "attempt_timeout_seconds": Option(
            float, 3.0, "An attempt unanswered for this long has failed.", positive
        ),
        "tcp_idle_seconds": Option(float, 300.0, "Idle TCP flows end after this.", positive),
        "udp_idle_seconds": Option(float, 60.0, "Idle UDP flows end after this.", positive),
        "active_timeout_seconds": Option(
            float,
            3600.0,
            "Flows still active after this are reported and go on as a new record.",
            positive,
        ),
    },
    "aggregation": {
        "window_seconds": Option(
            float, 3600.0, "One alert per detector and subject per window.", positive
        ),
        "update_interval_seconds": Option(
            float, 60.0, "How often a growing alert is re-sent.", positive
        ),
    },
    "anonymisation": {
        "secret_file": Option(
            str,
            "",
            "Per-establishment secret (0600, made on first start, never sent). Empty: "
            "state_dir/anon.key for key_epoch 1, state_dir/anon-<epoch>.key after. "
            "A path given here needs {epoch} in it to allow key_epoch > 1.",
        ),
        "key_epoch": Option(
            int,
            1,
            "Raise to roll in a new secret (made on first start): pseudonyms change, "
            "alerts carry the epoch, the old secret file is left alone.",
            at_least(1),
        ),
        "prefix_preserving": Option(
            bool,
            False,
            "Internal IPv4 addresses become Crypto-PAn pseudonyms ('pp:' + dotted quad) "
            "that keep shared prefixes, so hosts of one subnet look related. Reveals the "
            "subnet layout; off: 'p:' + HMAC for every address.",
        ),
        "internal_ranges": Option(
            list,
            [],
            "Public ranges the establishment uses internally: inside for every detector "
            "and the engine (beaconing, exfiltration, lateral movement, medical protocols), "
            "and pseudonymised like private addresses.",
            _ranges,
        ),
        "internal_domains": Option(
            list,
            [],
            "DNS suffixes that name internal machines: inside for every detector (never "
            "counted as DGA or DNS tunnelling), and pseudonymised.",
        ),
        "clear_external_ips": Option(bool, True, "Send public addresses in clear."),
        "clear_external_domains": Option(bool, True, "Send public domain names in clear."),
        "clear_tls_sni": Option(bool, True, "Send public TLS server names in clear."),
        "clear_ja3": Option(bool, True, "Send JA3 fingerprints in clear."),
        "clear_ja4": Option(bool, True, "Send JA4 fingerprints in clear."),
        "clear_hashes": Option(bool, True, "Send file hashes in clear."),
    },
    "collector": {
        "address": Option(str, "localhost:4443", "Collector HOST:PORT (mutual TLS).", host_port),
        "ca": Option(str, "", "Collector CA certificate. Empty: state_dir/tls/ca.crt"),
        "cert": Option(str, "", "This agent's certificate. Empty: state_dir/tls/agent.crt"),
        "key": Option(str, "", "This agent's private key. Empty: state_dir/tls/agent.key"),
        # The collector refuses a batch of more than 1000 alerts.
        "batch_size": Option(int, 200, "Alerts per batch.", _bounds(1, 1000)),
        "heartbeat_seconds": Option(float, 30.0, "Heartbeat period.", positive),
        "drain_timeout_seconds": Option(
            float, 30.0, "replay: how long to wait for the collector's acks.", positive
        ),
    },
    "outbox": {
        "path": Option(str, "", "Durable outbox (SQLite). Empty: state_dir/outbox.db"),
        "max_alerts": Option(
            int,
            100_000,
            "Bound; beyond it the oldest low-severity alerts are shed (counted).",
            _bounds(10, 10_000_000),
        ),
        "memory_alerts": Option(
            int,
            5_000,
            "While the state filesystem is full: alerts held in memory (still sent to the "
            "collector, written out when space returns); beyond it the oldest "
            "low-severity ones are shed (counted).",
            _bounds(10, 1_000_000),
        ),
        "low_space_mb": Option(
            float,
            100.0,
            "Warn (log, STATUS, doctor) when the state filesystem has less free than this.",
            at_least(0),
        ),
        "low_space_percent": Option(
            float,
            5.0,
            "Warn as well when its free space falls under this share of its size.",
            at_least(0),
        ),
    },
    "host": {
        "enabled": Option(
            bool, True, "run: sample processes, sockets and sessions (host detectors)."
        ),
        "interval_seconds": Option(float, 5.0, "Seconds between host samples.", at_least(0.1)),
        "exe_recheck_rounds": Option(
            int,
            1,
            "Re-read every process's binary path every N samples (catches binaries deleted "
            "after start); 0: only when a process is new.",
            at_least(0),
        ),
    },
    "selfguard": {
        "enabled": Option(
            bool,
            True,
            "run: watch the agent's own CPU and memory and shed work above budget "
            "(deep decoding first, then 1 in N new flows), restored when back under.",
        ),
        "cpu_percent": Option(float, 40.0, "CPU budget, percent of one core.", positive),
        "rss_mb": Option(float, 200.0, "Resident memory budget, MB.", positive),
        "interval_seconds": Option(
            float, 5.0, "Seconds between two looks at the agent's own usage.", at_least(0.1)
        ),
    },
    "metrics": {
        "listen": Option(
            str,
            "127.0.0.1:9750",
            "run: Prometheus metrics (GET /metrics) on this HOST:PORT; '' disables. "
            "Keep it on loopback.",
            check_listen,
        ),
    },
    "journal": JOURNAL_OPTIONS,  # agent/hunt/journal.py: the local retro-hunt journal
    "logs": LOG_OPTIONS,  # agent/logs/options.py: the host's logs
    "detectors": {registry.config_key(d): d.schema() for d in registry.DETECTORS},
}

# Keys a SIGHUP applies to the running agent (prefixes); any other change is logged as
# needing a restart and keeps its running value until then.
RELOADABLE = (
    "log_level",
    "detectors.",
    "aggregation.",
    "flows.attempt_timeout_seconds",
    "flows.tcp_idle_seconds",
    "flows.udp_idle_seconds",
    "flows.active_timeout_seconds",
    "flows.max_flows",
    "selfguard.cpu_percent",
    "selfguard.rss_mb",
)


def path(cfg: dict[str, Any], value: str, default: str) -> Path:
    return Path(value) if value else Path(cfg["state_dir"]) / default
