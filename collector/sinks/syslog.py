"""Incident changes as RFC 5424 syslog messages, over UDP (RFC 5426) or TCP (RFC 6587).

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [vigie@32473 key="..." ...] MSG

The structured-data element carries the incident key and seq (for deduplication), rule,
subject, severity, status, the change (when the incident comes from the change feed), site
and alert counts. Its SD-ID uses 32473, the private enterprise number IANA reserves for
documentation (RFC 5612): replace `PEN` once Vigie has its own. HOSTNAME is the collector's
own host name, never a hospital's.

A UDP datagram holds at most UDP_MAX_BYTES, and the message is built to fit rather than
cut afterwards: a cut inside the structured data would leave a message that RFC 5424
parsers reject. When the element itself is too long, its longest free-text values (key,
subject, ...) are shortened on character boundaries, never inside an escape sequence, and
`truncated="true"` is added; the MSG then gets whatever room is left, cut on a UTF-8
boundary. Over TCP (octet counting) nothing is shortened.
"""

from __future__ import annotations

import datetime as dt
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence

from collector.sinks.base import SinkError, status_name
from common.alertjson import severity_name
from vigie.v1 import alert_pb2, analyst_pb2

PEN = 32473  # IANA example/documentation enterprise number (RFC 5612), a placeholder
SD_ID = f"vigie@{PEN}"
MSGID = "incident"
UDP_MAX_BYTES = 2048  # RFC 5426 §3.2: every receiver SHOULD accept this much
BOM = b"\xef\xbb\xbf"

# Vigie severity -> syslog severity (RFC 5424 table 2).
SYSLOG_SEVERITY = {
    alert_pb2.SEVERITY_CRITICAL: 2,  # critical
    alert_pb2.SEVERITY_HIGH: 3,  # error
    alert_pb2.SEVERITY_MEDIUM: 4,  # warning
    alert_pb2.SEVERITY_LOW: 5,  # notice
    alert_pb2.SEVERITY_INFO: 6,  # informational
}


def sd_escape(value: str) -> str:
    """PARAM-VALUE escaping (RFC 5424 §6.3.3): '"', '\\' and ']' get a backslash."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _header_field(value: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, at most `limit` chars, or '-'."""
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


def _timestamp(now: float) -> str:
    t = dt.datetime.fromtimestamp(now, dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond:06d}Z"


# Values that may be shortened to fit a datagram: free text, possibly long. The numbers and
# the enumerated values (seq, severity, status, counts) are short and always kept whole:
# seq alone still identifies the change when the key had to be shortened.
SHORTENABLE = ("key", "rule", "subject", "change")
TRUNCATED_PARAM = ' truncated="true"'
# When the structured data has to be shortened anyway, keep this much room for the start
# of MSG, which tells a reader the severity, rule and status in words.
MSG_RESERVE = 160


def _escaped_size(char: str) -> int:
    return len(sd_escape(char).encode("utf-8"))


def shorten_param(value: str, budget: int) -> str:
    """The longest prefix of `value` whose escaped UTF-8 form takes at most `budget` bytes.

    Cutting the raw value, character by character, before escaping means the cut can
    never fall inside a backslash escape nor inside a multi-byte character.
    """
    used = 0
    for i, char in enumerate(value):
        used += _escaped_size(char)
        if used > budget:
            return value[:i]
    return value


def _sd_element(params: dict[str, str], truncated: bool) -> bytes:
    body = "".join(f' {k}="{sd_escape(v)}"' for k, v in params.items())
    return ("[" + SD_ID + body + (TRUNCATED_PARAM if truncated else "") + "]").encode("utf-8")


def _fit_params(params: dict[str, str], limit: int) -> dict[str, str]:
    """Shorten the longest SHORTENABLE values until the SD element (with `truncated`) fits.

    Water-filling: find the largest per-value cap, in escaped bytes, that makes the
    element fit, and cut only the values longer than it, so short values stay whole.
    """
    names = [k for k in SHORTENABLE if k in params]
    fixed = len(_sd_element({k: ("" if k in names else v) for k, v in params.items()}, True))
    budget = max(0, limit - fixed)
    sizes = {k: len(sd_escape(params[k]).encode("utf-8")) for k in names}
    cap, rest, remaining = 0, budget, len(names)
    for k in sorted(names, key=sizes.__getitem__):
        share = rest // remaining
        if sizes[k] <= share:  # fits whole: its unused share goes to the longer ones
            rest -= sizes[k]
            remaining -= 1
        else:
            cap = share
            break
    else:
        return dict(params)  # everything fits (the caller checks before calling)
    return {k: shorten_param(v, cap) if k in names else v for k, v in params.items()}


def format_message(
    incident: analyst_pb2.Incident,
    *,
    facility: int = 10,
    app_name: str = "vigie",
    hostname: str | None = None,
    procid: int | None = None,
    now: float | None = None,
    limit: int | None = None,
) -> bytes:
    """The RFC 5424 message for one incident change.

    With `limit` (bytes), the message is shortened to fit, staying a valid RFC 5424
    message: values of the structured data first when the element alone is too long (with
    truncated="true"), then MSG on a UTF-8 boundary, or no MSG at all.
    """
    pri = facility * 8 + SYSLOG_SEVERITY.get(incident.severity, 6)
    params = {
        "key": incident.key,
        "seq": str(incident.seq),
        "rule": incident.rule,
        "subject": incident.subject,
        "severity": severity_name(incident.severity),
        "status": status_name(incident.status),
    }
    if incident.change:  # empty when the incident was read as it stands
        params["change"] = incident.change
    params["sites"] = str(len(incident.sites))
    params["alerts"] = str(incident.alert_count)
    header = " ".join(
        [
            f"<{pri}>1",
            _timestamp(time.time() if now is None else now),
            _header_field(socket.gethostname() if hostname is None else hostname, 255),
            _header_field(app_name, 48),
            _header_field(str(os.getpid() if procid is None else procid), 128),
            MSGID,
        ]
    ).encode("ascii")
    text = (
        f"{severity_name(incident.severity)} {incident.rule} incident "
        f"({status_name(incident.status)}, {len(incident.sites)} site(s)): "
        f"{incident.summary or incident.subject}"
    )
    text = " ".join(text.split())  # one line: no CR/LF inside a message
    bom = b"" if text.isascii() else BOM  # RFC 5424 §6.4: a UTF-8 MSG starts with a BOM
    msg = text.encode("utf-8")

    sd = _sd_element(params, False)
    if limit is None:
        return header + b" " + sd + b" " + bom + msg
    if len(header) + 1 + len(sd) > limit:
        reserve = min(1 + len(bom) + len(msg), MSG_RESERVE)
        sd = _sd_element(_fit_params(params, limit - len(header) - 1 - reserve), True)
    head = header + b" " + sd
    room = limit - len(head) - 1 - len(bom)  # what MSG's text may take after " " and BOM
    msg = truncate_utf8(msg, room) if room > 0 else b""
    return head + (b" " + bom + msg if msg else b"")


def truncate_utf8(data: bytes, limit: int) -> bytes:
    """At most `limit` bytes, cut on a character boundary."""
    if len(data) <= limit:
        return data
    return data[:limit].decode("utf-8", errors="ignore").encode("utf-8")


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


class SyslogSink:
    name = "syslog"

    def __init__(
        self,
        address: str,
        *,
        protocol: str = "udp",
        app_name: str = "vigie",
        facility: int = 10,
        timeout: float = 5.0,
        hostname: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if protocol not in ("udp", "tcp"):
            raise ValueError(f"protocol must be udp or tcp, got {protocol!r}")
        if not 0 <= facility <= 23:
            raise ValueError(f"facility must be between 0 and 23, got {facility}")
        self.host, self.port = parse_address(address)
        self.protocol = protocol
        self.app_name = app_name
        self.facility = facility
        self.timeout = timeout
        self.hostname = socket.gethostname() if hostname is None else hostname
        self.clock = clock
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._peer: tuple | None = None

    def send(
        self, incident: analyst_pb2.Incident, alerts: Sequence[analyst_pb2.StoredAlert]
    ) -> None:
        udp = self.protocol == "udp"
        message = format_message(
            incident,
            facility=self.facility,
            app_name=self.app_name,
            hostname=self.hostname,
            now=self.clock(),
            # RFC 6587 octet counting frames a message of any length: only UDP is bounded.
            limit=UDP_MAX_BYTES if udp else None,
        )
        with self._lock:
            if udp:
                self._send_udp(message)
            else:
                self._send_tcp(message)

    def close(self) -> None:
        with self._lock:
            self._drop()

    # --------------------------------------------------------------------------------

    def _resolve(self, kind: int) -> tuple[int, tuple]:
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=kind)
        except OSError as exc:
            raise SinkError(f"syslog: cannot resolve {self.host}: {exc}") from exc
        family, _, _, _, sockaddr = infos[0]
        return family, sockaddr

    def _send_udp(self, datagram: bytes) -> None:
        try:
            if self._sock is None:
                family, self._peer = self._resolve(socket.SOCK_DGRAM)
                self._sock = socket.socket(family, socket.SOCK_DGRAM)
            self._sock.sendto(datagram, self._peer)
        except OSError as exc:
            self._drop()
            raise SinkError(f"syslog: UDP send to {self.host}:{self.port} failed: {exc}") from exc

    def _send_tcp(self, message: bytes) -> None:
        frame = f"{len(message)} ".encode("ascii") + message  # RFC 6587 §3.4.1
        last: OSError | None = None
        for _ in range(2):  # a stale connection gets one fresh one
            try:
                if self._sock is not None and self._stale():
                    self._drop()
                if self._sock is None:
                    self._connect()
                assert self._sock is not None
                self._sock.sendall(frame)
                return
            except OSError as exc:
                last = exc
                self._drop()
        raise SinkError(f"syslog: TCP send to {self.host}:{self.port} failed: {last}") from last

    def _connect(self) -> None:
        family, sockaddr = self._resolve(socket.SOCK_STREAM)
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(sockaddr)
        except OSError:
            sock.close()
            raise
        self._sock = sock

    def _stale(self) -> bool:
        """True when the receiver has closed the connection (it never sends us data).

        Without this check the first message written after the receiver went away would
        vanish into the kernel buffer; TCP syslog has no acknowledgements, so this is the
        best a sender can do.
        """
        assert self._sock is not None
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
            if not readable:
                return False
            return self._sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _drop(self) -> None:
        if self._sock is not None:
            sock, self._sock = self._sock, None
            sock.close()
