"""Deep decoders: application messages (DNS, TLS ClientHello, SMB2/DCE-RPC, DICOM, HL7,
FTP/Telnet/HTTP authentication) for detectors that implement `on_app(msg, flow, packet)`.

Each protocol is a pure function over payload bytes in its own module; `DeepDecoder` picks
the decoder by port or by a cheap signature, so that most packets (bulk TLS, file data)
cost a few comparisons. It never raises: a payload of the right protocol that cannot be
decoded is counted per reason in `DeepStats.malformed`, and anything unexpected is counted
as "decoder_error".

Per-flow state is kept only where a protocol needs it (SMB ids, DCE-RPC contexts, Telnet
prompt, a ClientHello or DICOM PDU spread over segments), in one bounded map keyed by the
flow key; `forget(key)` drops it when the flow ends. Segments are appended in arrival
order (the packet record carries no sequence number): reassembly is best effort, and a
retransmitted first segment restarts it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.decode.deep.auth import (
    HTTP_FIRST,
    FtpMessage,
    FtpState,
    HttpRequest,
    TelnetEvent,
    TelnetState,
    looks_like_http,
    parse_ftp,
    parse_http,
    parse_telnet,
)
from agent.decode.deep.common import Malformed, NeedMore
from agent.decode.deep.dcerpc import DceRpcMessage, looks_like_dcerpc, parse_dcerpc
from agent.decode.deep.dicom import MAX_PDU, DicomAssoc, looks_like_dicom, parse_dicom
from agent.decode.deep.dns import DnsMessage, parse_dns
from agent.decode.deep.hl7 import Hl7Message, looks_like_hl7, parse_hl7
from agent.decode.deep.smb import SmbMessage, SmbState, parse_smb
from agent.decode.deep.tls import MAX_HELLO, TlsClientHello, parse_client_hello

__all__ = [
    "DceRpcMessage",
    "DeepDecoder",
    "DeepStats",
    "DicomAssoc",
    "DnsMessage",
    "FtpMessage",
    "Hl7Message",
    "HttpRequest",
    "Message",
    "SmbMessage",
    "TelnetEvent",
    "TlsClientHello",
]

Message = (
    DnsMessage
    | TlsClientHello
    | SmbMessage
    | DceRpcMessage
    | DicomAssoc
    | Hl7Message
    | FtpMessage
    | TelnetEvent
    | HttpRequest
)

DNS_PORTS = frozenset((53, 5353, 5355))
# Well-known TCP ports decoded whatever the payload looks like (both directions).
TCP_PORTS: dict[int, str] = {
    53: "dns", 5353: "dns", 5355: "dns",
    445: "smb", 139: "smb",
    135: "dcerpc",
    104: "dicom", 11112: "dicom", 4242: "dicom",
    21: "ftp",
    23: "telnet",
}  # fmt: skip

# Message kind -> the protocol name counted in DeepStats.decoded
PROTOCOL_OF_KIND = {
    "dns": "dns",
    "tls_client_hello": "tls",
    "smb": "smb",
    "dcerpc": "dcerpc",
    "dicom_assoc": "dicom",
    "hl7": "hl7",
    "ftp": "ftp",
    "telnet": "telnet",
    "http": "http",
}

ALL_PROTOCOLS = frozenset(PROTOCOL_OF_KIND.values())

MAX_FLOW_STATES = 16384
_EMPTY: list = []


@dataclass(slots=True)
class DeepStats:
    """Messages decoded per protocol, malformed payloads per reason (prefixed by protocol)."""

    inspected: int = 0  # packets with a payload handed to the deep decoder
    decoded: dict[str, int] = field(default_factory=dict)
    malformed: dict[str, int] = field(default_factory=dict)


class _FlowState:
    __slots__ = ("ftp", "pend", "rpc", "smb", "telnet")

    def __init__(self) -> None:
        self.ftp: FtpState | None = None
        self.smb: SmbState | None = None
        self.rpc: dict[int, str] | None = None
        self.telnet: TelnetState | None = None
        # per direction: (protocol, buffered bytes, bytes needed) while a unit is incomplete
        self.pend: list[tuple[str, bytearray, int] | None] = [None, None]


class DeepDecoder:
    """`decoder(packet, flow) -> list[message]`, each with `kind`, `ts` and `flow` set."""

    def __init__(
        self,
        stats: DeepStats | None = None,
        max_flows: int = MAX_FLOW_STATES,
        protocols: frozenset[str] | None = None,
    ) -> None:
        """`protocols`: the protocol names (values of PROTOCOL_OF_KIND) to decode; None:
        all. Payloads of other protocols cost a port or signature comparison and no more.
        DCE-RPC over named pipes needs SMB decoded, so asking for "dcerpc" implies "smb"."""
        self.stats = stats if stats is not None else DeepStats()
        self.max_flows = max_flows
        self._states: dict[Any, _FlowState] = {}
        want = ALL_PROTOCOLS if protocols is None else frozenset(protocols) & ALL_PROTOCOLS
        if "dcerpc" in want:
            want |= {"smb"}
        self.protocols = want
        self._dns = "dns" in want

    def forget(self, key: Any) -> None:
        """The flow ended: drop what was kept for it."""
        self._states.pop(key, None)

    def _bad(self, reason: str) -> None:
        m = self.stats.malformed
        m[reason] = m.get(reason, 0) + 1

    def _state(self, flow: Any) -> _FlowState:
        key = flow.key if flow is not None else None
        st = self._states.get(key)
        if st is None:
            if len(self._states) >= self.max_flows:
                # dicts keep insertion order: the oldest flow's state goes first
                del self._states[next(iter(self._states))]
            st = self._states[key] = _FlowState()
        return st

    def __call__(self, p: Any, flow: Any) -> list:
        payload = p.payload
        if not payload:
            return _EMPTY
        self.stats.inspected += 1
        try:
            if p.proto == 17:
                if self._dns and (p.sport in DNS_PORTS or p.dport in DNS_PORTS):
                    return self._emit([parse_dns(payload)], p, flow)
                return _EMPTY
            if p.proto == 6:
                return self._tcp(p, flow, payload)
            return _EMPTY
        except Exception:
            # Last resort, so that one odd payload never stops the pipeline.
            self._bad("decoder_error")
            return _EMPTY

    def dns(self, p: Any, flow: Any, read: Any) -> DnsMessage | None:
        """A DNS message over UDP the engine already read (`parse_dns`'s tuple, or the
        reason it is malformed), as a message; the engine counted it."""
        if type(read) is str:
            return None
        msg = DnsMessage(*read, False)
        msg.ts = p.ts
        msg.flow = flow
        return msg

    def _emit(self, results: list, p: Any, flow: Any) -> list:
        out = []
        decoded = self.stats.decoded
        for r in results:
            if r is None or type(r) is NeedMore:
                continue
            if type(r) is Malformed:
                self._bad(r.reason)
                continue
            r.ts = p.ts
            r.flow = flow
            proto = PROTOCOL_OF_KIND[r.kind]
            decoded[proto] = decoded.get(proto, 0) + 1
            out.append(r)
        return out

    def _tcp(self, p: Any, flow: Any, payload: bytes) -> list:
        sport, dport = p.sport, p.dport
        d = 0 if flow is None or (p.src == flow.src and sport == flow.sport) else 1
        if flow is not None:
            st = self._states.get(flow.key)
            if st is not None and st.pend[d] is not None:
                return self._continue(st, d, p, flow, payload)
        port = dport if dport in TCP_PORTS else sport if sport in TCP_PORTS else 0
        want = self.protocols
        if port:
            proto = TCP_PORTS[port]
            if proto not in want:
                return _EMPTY
            if proto == "smb":
                st = self._state(flow)
                if st.smb is None:
                    st.smb = SmbState()
                return self._emit(parse_smb(payload, st.smb, dport == port), p, flow)
            if proto == "dns":
                return self._emit([parse_dns(payload, tcp=True)], p, flow)
            if proto == "dcerpc":
                if not looks_like_dcerpc(payload):
                    return _EMPTY
                return self._rpc(p, flow, payload)
            if proto == "ftp":
                st = self._state(flow)
                if st.ftp is None:
                    st.ftp = FtpState()
                return self._emit(parse_ftp(payload, sport == port, st.ftp), p, flow)
            if proto == "telnet":
                st = self._state(flow)
                if st.telnet is None:
                    st.telnet = TelnetState()
                return self._emit(parse_telnet(payload, sport == port, st.telnet), p, flow)
            if proto == "dicom":
                return self._unit("dicom", parse_dicom(payload), d, p, flow, payload)
        first = payload[0]
        if first == 0x16:
            if "tls" in want and len(payload) > 5 and payload[1] == 3 and payload[5] == 1:
                return self._unit("tls", parse_client_hello(payload), d, p, flow, payload)
        elif first == 0x0B:
            if "hl7" in want and looks_like_hl7(payload):
                return self._emit([parse_hl7(payload)], p, flow)
        elif first == 5:
            if "dcerpc" in want and looks_like_dcerpc(payload):
                return self._rpc(p, flow, payload)
        elif first == 1:
            if "dicom" in want and looks_like_dicom(payload):
                return self._unit("dicom", parse_dicom(payload), d, p, flow, payload)
        elif first in HTTP_FIRST and "http" in want and looks_like_http(payload):
            return self._emit([parse_http(payload)], p, flow)
        return _EMPTY

    def _rpc(self, p: Any, flow: Any, payload: bytes) -> list:
        st = self._state(flow)
        if st.rpc is None:
            st.rpc = {}
        return self._emit(parse_dcerpc(payload, st.rpc, "tcp"), p, flow)

    def _unit(self, proto: str, r: Any, d: int, p: Any, flow: Any, payload: bytes) -> list:
        """A length-prefixed unit: decoded now, or buffered until its last segment."""
        if type(r) is NeedMore:
            if flow is None:
                return _EMPTY
            limit = MAX_HELLO if proto == "tls" else MAX_PDU + 6
            if r.total > limit:
                self._bad(f"{proto}_too_large")
                return _EMPTY
            self._state(flow).pend[d] = (proto, bytearray(payload), r.total)
            return _EMPTY
        return self._emit([r], p, flow)

    def _continue(self, st: _FlowState, d: int, p: Any, flow: Any, payload: bytes) -> list:
        proto, buf, total = st.pend[d]  # type: ignore[misc]
        if buf.startswith(payload) or buf.endswith(payload):
            return _EMPTY  # retransmission of what we already hold
        buf += payload
        if len(buf) < total:
            return _EMPTY
        st.pend[d] = None
        data = bytes(buf)
        r = parse_client_hello(data) if proto == "tls" else parse_dicom(data)
        return self._unit(proto, r, d, p, flow, data)
