"""What every incident sink shares: the protocol, the canonical JSON form, the config schema.

A sink is a plain class, one file, that pushes one incident (and the alerts behind it) to
one destination. The collector's dispatcher reads the incident change feed and calls
`send` once per change; when `send` raises `SinkError`, the dispatcher retries later with
the same incident. Every output carries the incident key and its change sequence `seq`,
so a consumer can drop the duplicates that at-least-once delivery produces.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from common.alertjson import iso, severity_name
from common.config import (
    ConfigError,
    Option,
    at_least,
    between,
    host_port,
    one_of,
    positive,
    validate,
)
from common.identity import status_name
from vigie.v1 import alert_pb2, analyst_pb2

SCHEMA_VERSION = 1

# Entity kinds that name an external observable worth sharing (when not pseudonymised):
# the agent keeps these in clear so the national service can correlate across GHTs.
INDICATOR_KINDS: dict[int, str] = {
    alert_pb2.KIND_IP: "ip",
    alert_pb2.KIND_DOMAIN: "domain",
    alert_pb2.KIND_TLS_SNI: "tls_sni",
    alert_pb2.KIND_JA3: "ja3",
    alert_pb2.KIND_JA4: "ja4",
    alert_pb2.KIND_HASH: "hash",
}


class SinkError(Exception):
    """A delivery failed; the dispatcher should retry later with the same incident.

    `permanent` is True when retrying the same payload cannot succeed (for instance an
    HTTP 400 from the webhook): the dispatcher may then log it and move on rather than
    block the feed. `status` carries the HTTP status when there is one.
    """

    def __init__(self, message: str, *, permanent: bool = False, status: int | None = None):
        super().__init__(message)
        self.permanent = permanent
        self.status = status


@runtime_checkable
class Sink(Protocol):
    name: str

    def send(
        self, incident: analyst_pb2.Incident, alerts: Sequence[analyst_pb2.StoredAlert]
    ) -> None:
        """Deliver one incident change; raise SinkError on failure."""
        ...

    def close(self) -> None:
        """Release files and sockets; the sink is not used afterwards."""
        ...


# The canonical JSON form ---------------------------------------------------------------


def is_pseudonym(entity: alert_pb2.Entity) -> bool:
    return entity.pseudonymised or entity.value.startswith("p:")


# Ranges that are never an external indicator (the agent pseudonymises them; this is a
# second line of defence). Documentation ranges (TEST-NET, 2001:db8::/32) stay usable.
_INTERNAL_NETS = [
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "224.0.0.0/3",
        "::/127",
        "::ffff:0:0/96",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
    )
]


def is_internal_ip(value: str) -> bool:
    """True for private, loopback, link-local, multicast addresses; ValueError if no IP."""
    address = ipaddress.ip_address(value)
    return any(address in net for net in _INTERNAL_NETS if net.version == address.version)


def indicators(alerts: Sequence[analyst_pb2.StoredAlert]) -> list[tuple[str, str]]:
    """(kind, value) of the external observables in the alerts, deduplicated, sorted.

    Pseudonymised values never appear, and a private, loopback, link-local or multicast
    address is left out even if an agent sent it in clear: only external indicators leave.
    """
    found: set[tuple[str, str]] = set()
    for stored in alerts:
        for e in stored.alert.entities:
            kind = INDICATOR_KINDS.get(e.kind)
            if kind is None or not e.value or is_pseudonym(e):
                continue
            value = e.value.strip()
            if kind == "ip":
                try:
                    value = str(ipaddress.ip_address(value))  # one spelling per address
                except ValueError:
                    continue
                if is_internal_ip(value):
                    continue
            elif kind in ("domain", "tls_sni"):
                value = value.rstrip(".").lower()
            elif kind == "hash":
                value = value.lower()
            found.add((kind, value))
    return sorted(found)


def incident_dict(
    incident: analyst_pb2.Incident, alerts: Sequence[analyst_pb2.StoredAlert]
) -> dict[str, Any]:
    """The incident as one JSON object: what the JSONL file and the webhook carry."""
    return {
        "schema_version": SCHEMA_VERSION,
        "key": incident.key,
        "seq": incident.seq,
        "rule": incident.rule,
        "subject": incident.subject,
        "severity": severity_name(incident.severity),
        "status": status_name(incident.status),
        "change": incident.change or None,
        "status_by": incident.status_by,
        "status_at": iso(incident.status_at) if incident.HasField("status_at") else None,
        "status_comment": incident.status_comment,
        "first_seen": iso(incident.first_seen),
        "last_seen": iso(incident.last_seen),
        "summary": incident.summary,
        "sites": [{"finess": s.finess, "ght": s.ght, "region": s.region} for s in incident.sites],
        "alert_count": incident.alert_count,
        "alert_ids": sorted({a.alert.id for a in alerts}),
        "detectors": sorted({a.alert.detector for a in alerts if a.alert.detector}),
        "techniques": sorted({a.alert.technique for a in alerts if a.alert.technique}),
        "indicators": [{"kind": k, "value": v} for k, v in indicators(alerts)],
    }


# Configuration -------------------------------------------------------------------------


def https_url(value: str) -> str | None:
    """An https:// URL with a host; plain http:// is refused (incidents cross networks)."""
    if not value:
        return None  # empty: checked when the sink is enabled
    parts = urlsplit(value)
    if parts.scheme.lower() != "https" or not parts.hostname:
        return f"must be an https:// URL, got {value!r}"
    if parts.username or parts.password:
        return "must not carry credentials; use token_file"
    return None


def _address(value: str) -> str | None:
    return host_port(value) if value else None


OPTIONS = {
    "sinks": {
        "jsonl": {
            "enabled": Option(bool, False, "Append every incident change to a JSON lines file."),
            "path": Option(
                str,
                "",
                "The JSON lines file (one incident change per line). Empty: "
                "state_dir/incidents.jsonl.",
            ),
            "max_bytes": Option(
                int,
                50 * 1024 * 1024,
                "Rotate when the file would grow past this size: FILE -> FILE.1 -> ... .",
                at_least(1024),
            ),
            "backups": Option(
                int, 5, "Rotated files kept (FILE.1 .. FILE.N); 0 keeps none.", between(0, 1000)
            ),
            "fsync": Option(
                bool,
                True,
                "fsync after every line (every line is flushed in any case): a change the\n"
                "dispatcher counts as sent survives a power loss.",
            ),
        },
        "syslog": {
            "enabled": Option(bool, False, "Send every incident change as an RFC 5424 message."),
            "address": Option(
                str, "", "Syslog receiver, HOST:PORT (IPv6 as [ADDR]:PORT).", _address
            ),
            "protocol": Option(
                str,
                "udp",
                "udp (RFC 5426, one datagram per message of at most 2048 bytes: long values\n"
                'are shortened inside the structured data, marked truncated="true") or\n'
                "tcp (RFC 6587 octet-counting framing, reconnects after a failure).",
                one_of("udp", "tcp"),
            ),
            "app_name": Option(str, "vigie", "APP-NAME field of every message."),
            "facility": Option(
                int,
                10,
                "Syslog facility number: 10 is security/authorization (authpriv), 4 auth,\n"
                "13 log audit, 16-23 local0-local7.",
                between(0, 23),
            ),
            "timeout": Option(float, 5.0, "TCP connect and send timeout, in seconds.", positive),
        },
        "webhook": {
            "enabled": Option(bool, False, "POST every incident change as JSON to a URL."),
            "url": Option(str, "", "Receiver URL; https:// only.", https_url),
            "ca_file": Option(
                str, "", "PEM CA bundle for a private CA. Empty: the system's trusted CAs."
            ),
            "token_file": Option(
                str,
                "",
                "File holding a bearer token sent as 'Authorization: Bearer ...' (read at\n"
                "every request, so it can be rotated). Empty: no Authorization header.",
            ),
            "timeout": Option(float, 10.0, "Timeout of one request, in seconds.", positive),
            "max_attempts": Option(
                int,
                5,
                "Attempts per incident change before giving up until the next dispatch\n"
                "(connection errors, 5xx and 429 are retried; other 4xx are not).",
                between(1, 100),
            ),
            "backoff": Option(
                float,
                1.0,
                "First retry delay in seconds, doubled at each attempt (at most 60 s);\n"
                "a Retry-After header from the receiver takes precedence.",
                positive,
            ),
        },
        "stix": {
            "enabled": Option(
                bool,
                False,
                "Write a STIX 2.1 bundle file for every incident change (for CERTs).",
            ),
            "directory": Option(
                str,
                "",
                "Where bundle files go, one per incident change, named by key and seq.\n"
                "Empty: state_dir/stix.",
            ),
            "identity_name": Option(
                str, "Vigie national collector", "Name of the identity that creates the objects."
            ),
            "tlp": Option(
                str,
                "amber",
                "TLP marking put on every STIX object: white, green, amber or red (the TLP 1.0\n"
                "markings STIX 2.1 predefines).",
                one_of("white", "green", "amber", "red"),
            ),
        },
    }
}


def _require(cfg: Mapping[str, Any], sink: str, key: str) -> Any:
    value = cfg[key]
    if not value:
        raise ConfigError(f"key 'sinks.{sink}.{key}' must be set when sinks.{sink} is enabled")
    return value


def build_sinks(
    cfg_section: Mapping[str, Any], *, state_dir: str = "", source: str = "[sinks]"
) -> list[Sink]:
    """The enabled sinks of the `[sinks]` section (cfg["sinks"]), in a fixed order.

    `state_dir` fills in the empty paths (jsonl.path -> state_dir/incidents.jsonl,
    stix.directory -> state_dir/stix); without it those paths must be set. `source`
    names the configuration file in messages. Raises ConfigError, naming the key, when
    an enabled sink lacks something or cannot start (bad CA file, unreadable token);
    opens no network connection.
    """
    from collector.sinks.jsonl import JsonlSink
    from collector.sinks.stix import StixSink
    from collector.sinks.syslog import SyslogSink
    from collector.sinks.webhook import WebhookSink

    def path(c: Mapping[str, Any], sink: str, key: str, leaf: str) -> str:
        if c[key] or not state_dir:
            return _require(c, sink, key)
        return str(Path(state_dir) / leaf)

    builders: dict[str, Callable[[Mapping[str, Any]], Sink]] = {
        "jsonl": lambda c: JsonlSink(
            path(c, "jsonl", "path", "incidents.jsonl"),
            max_bytes=c["max_bytes"],
            backups=c["backups"],
            fsync=c["fsync"],
        ),
        "syslog": lambda c: SyslogSink(
            _require(c, "syslog", "address"),
            protocol=c["protocol"],
            app_name=c["app_name"],
            facility=c["facility"],
            timeout=c["timeout"],
        ),
        "webhook": lambda c: WebhookSink(
            _require(c, "webhook", "url"),
            ca_file=c["ca_file"],
            token_file=c["token_file"],
            timeout=c["timeout"],
            max_attempts=c["max_attempts"],
            backoff=c["backoff"],
        ),
        "stix": lambda c: StixSink(
            path(c, "stix", "directory", "stix"),
            identity_name=c["identity_name"],
            tlp=c["tlp"],
        ),
    }
    # Validating again is harmless for an already validated section, and fills in the
    # defaults when a caller (a test, a tool) passes only part of it.
    cfg = validate(cfg_section, OPTIONS["sinks"], source, prefix="sinks.")
    sinks: list[Sink] = []
    try:
        for name, build in builders.items():
            if not cfg[name]["enabled"]:
                continue
            try:
                sinks.append(build(cfg[name]))
            except ConfigError as exc:
                raise ConfigError(f"{source}: {exc}") from None
            except (SinkError, ValueError, OSError) as exc:  # ssl.SSLError is an OSError
                raise ConfigError(f"{source}: sinks.{name} cannot start: {exc}") from None
    except BaseException:
        for s in sinks:
            s.close()
        raise
    return sinks
