"""Flow table: accounting against tshark, TCP attempt outcomes, timeouts, bounded size."""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.capture.pcapfile import read_capture
from agent.decode import DecodeStats, make_decoder
from agent.decode.packet import ACK, FIN, ICMP, RST, SYN, TCP, UDP, Packet
from agent.engine import EV_END, EV_OUTCOME, Engine
from agent.flows.table import (
    REJECTED,
    S_ESTABLISHED,
    S_REJECTED,
    SUCCESS,
    UNANSWERED,
    Flow,
)
from tests.conftest import CORPUS

A, B, C = b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02", b"\x0a\x00\x00\x03"


class Recorder:
    def __init__(self) -> None:
        self.outcomes: list[tuple[tuple, str, float]] = []
        self.ended: list[Flow] = []

    def outcome(self, flow: Flow, outcome: str, ts: float) -> None:
        self.outcomes.append((flow.key, outcome, ts))

    def end(self, flow: Flow) -> None:
        self.ended.append(flow)


class Table:
    """The engine's flow table, with its events handed to a Recorder as they come."""

    def __init__(self, rec: Recorder, **kw) -> None:
        self.engine = Engine(**kw)
        self.rec = rec

    def _drain(self) -> None:
        for ev in self.engine.events():
            if ev[0] == EV_OUTCOME:
                self.rec.outcome(ev[1], ev[2], ev[3])
            elif ev[0] == EV_END:
                self.rec.end(ev[1])

    def packet(self, p: Packet) -> Flow | None:
        f = self.engine.packet(p)
        self._drain()
        return f

    def tick(self, now: float) -> None:
        self.engine.tick(now)
        self._drain()

    def flush(self, now: float) -> None:
        self.engine.flush()
        self._drain()

    def get(self, key: tuple) -> Flow | None:
        return self.engine.get(key)

    def __len__(self) -> int:
        return len(self.engine)

    def __getattr__(self, name: str):
        return getattr(self.engine, name)


def table(rec: Recorder, **kw) -> Table:
    return Table(rec, **kw)


def tcp(ts: float, src: bytes, sport: int, dst: bytes, dport: int, flags: int, n: int = 60):
    return Packet(ts, n, 4, src, dst, TCP, sport, dport, flags)


def udp(ts: float, src: bytes, sport: int, dst: bytes, dport: int, n: int = 80):
    return Packet(ts, n, 4, src, dst, UDP, sport, dport)


# -- accounting against tshark's conversation statistics ----------------------------


def _tshark_bytes(n: str, unit: str) -> tuple[int, int]:
    """(value, tolerance) of a tshark size: exact in bytes, rounded in kB/MB."""
    v = int(n)
    scale = {"bytes": 1, "kB": 1000, "MB": 1000_000, "GB": 1000_000_000}[unit]
    return v * scale, (0 if scale == 1 else scale)


def tshark_conversations(pcap: Path, proto: str) -> dict[frozenset, dict]:
    out = subprocess.run(
        ["tshark", "-n", "-r", str(pcap), "-q", "-z", f"conv,{proto}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = re.compile(
        r"^(\S+):(\d+)\s+<->\s+(\S+):(\d+)\s+(\d+) (\d+) (bytes|kB|MB)\s+(\d+) (\d+) (bytes|kB|MB)"
    )
    convs: dict[frozenset, dict] = {}
    for text in out.splitlines():
        m = line.match(text)
        if not m:
            continue
        a = (ipaddress.ip_address(m[1]).packed, int(m[2]))
        b = (ipaddress.ip_address(m[3]).packed, int(m[4]))
        key = frozenset((a, b))
        c = convs.setdefault(key, {"a": a, "pkts": {a: 0, b: 0}, "bytes": {a: [0, 0], b: [0, 0]}})
        # "<-" columns: frames from B to A; "->" columns: frames from A to B.
        for sender, frames, num, unit in ((b, m[5], m[6], m[7]), (a, m[8], m[9], m[10])):
            size, tol = _tshark_bytes(num, unit)
            c["pkts"][sender] += int(frames)
            c["bytes"][sender][0] += size
            c["bytes"][sender][1] += tol
    return convs


def our_flows(pcap: Path) -> list[Flow]:
    rec = Recorder()
    t = table(rec, tcp_idle=1e9, udp_idle=1e9, active_timeout=1e12)
    decode = make_decoder(DecodeStats())
    for ts, lt, wl, frame in read_capture(pcap):
        p = decode(ts, lt, wl, frame)
        if p is not None and not p.frag:
            t.packet(p)
    t.flush(0)
    return rec.ended


@pytest.mark.parametrize(
    "name",
    [
        "benign/benign_windows_host_web_tls_ocsp.pcap",
        "benign/benign_mixed_ssh_http_ftp_dns_ntp.pcap",
    ],
)
def test_flow_accounting_matches_tshark_conversations(name: str) -> None:
    if not shutil.which("tshark"):
        pytest.skip("tshark is not installed (./dev test installs it)")
    pcap = CORPUS / name
    if not pcap.exists():
        pytest.skip(f"capture corpus not found at {CORPUS}")
    flows = {(f.proto, frozenset(((f.src, f.sport), (f.dst, f.dport)))): f for f in our_flows(pcap)}
    checked = 0
    for proto, pname in ((TCP, "tcp"), (UDP, "udp")):
        convs = tshark_conversations(pcap, pname)
        assert convs, f"tshark found no {pname} conversation in {name}"
        ours = {k[1] for k in flows if k[0] == proto}
        assert ours == set(convs), f"{pname} flows differ from tshark's conversations"
        for key, conv in convs.items():
            f = flows[(proto, key)]
            orig, resp = (f.src, f.sport), (f.dst, f.dport)
            assert (f.pkts_o, f.pkts_r) == (conv["pkts"][orig], conv["pkts"][resp]), key
            for side, ours_bytes in ((orig, f.bytes_o), (resp, f.bytes_r)):
                want, tol = conv["bytes"][side]
                assert abs(ours_bytes - want) <= tol, (key, side, ours_bytes, want)
            checked += 1
    assert checked >= 10


# -- TCP attempt outcomes on hand-built packets ----------------------------------


def test_handshake_completed() -> None:
    rec = Recorder()
    t = table(rec)
    f = t.packet(tcp(1.0, A, 40000, B, 22, SYN))
    t.packet(tcp(1.1, B, 22, A, 40000, SYN | ACK))
    t.packet(tcp(1.2, A, 40000, B, 22, ACK, n=100))
    assert f is not None and f.state == S_ESTABLISHED
    assert [o for _, o, _ in rec.outcomes] == [SUCCESS]
    assert (f.src, f.sport, f.pkts_o, f.pkts_r, f.bytes_o, f.bytes_r) == (A, 40000, 2, 1, 160, 60)
    t.tick(100.0)  # the answered attempt never turns into "unanswered"
    assert [o for _, o, _ in rec.outcomes] == [SUCCESS]


def test_handshake_rejected_by_rst() -> None:
    rec = Recorder()
    t = table(rec)
    f = t.packet(tcp(1.0, A, 40001, B, 23, SYN))
    t.packet(tcp(1.01, B, 23, A, 40001, RST | ACK))
    assert f is not None and f.state == S_REJECTED
    assert rec.outcomes == [(f.key, REJECTED, 1.01)]
    t.tick(10.0)
    assert len(rec.outcomes) == 1


def test_handshake_unanswered_after_attempt_timeout() -> None:
    rec = Recorder()
    t = table(rec, attempt_timeout=3.0)
    f = t.packet(tcp(1.0, A, 40002, B, 445, SYN))
    t.tick(3.5)
    assert rec.outcomes == []
    t.tick(4.0)
    assert f is not None and rec.outcomes == [(f.key, UNANSWERED, 4.0)]


def test_udp_answer_and_icmp_unreachable() -> None:
    rec = Recorder()
    t = table(rec)
    f1 = t.packet(udp(1.0, A, 5000, B, 53))
    t.packet(udp(1.1, B, 53, A, 5000))
    f2 = t.packet(udp(2.0, A, 5001, C, 161))
    # port unreachable: 4 unused bytes, then the quoted IPv4 header and UDP ports
    quoted = b"\x45" + bytes(8) + b"\x11" + bytes(2) + A + C + (5001).to_bytes(2, "big")
    quoted += (161).to_bytes(2, "big") + bytes(4)
    t.packet(Packet(2.1, 70, 4, C, A, ICMP, 3, 3, 0, bytes(4) + quoted))
    t.packet(udp(3.0, A, 5002, C, 514))  # no answer: no outcome for UDP
    t.tick(100.0)
    assert f1 and f2
    assert rec.outcomes == [(f1.key, SUCCESS, 1.1), (f2.key, REJECTED, 2.1)]


def test_bidirectional_key_and_vlan() -> None:
    rec = Recorder()
    t = table(rec)
    f1 = t.packet(udp(1.0, B, 53, A, 5000))
    f2 = t.packet(udp(1.1, A, 5000, B, 53))
    f3 = t.packet(Packet(1.2, 80, 4, A, B, UDP, 5000, 53, vlan=10))
    assert f1 is f2 and f3 is not f1 and len(t) == 2
    assert f1 is not None and (f1.src, f1.pkts_o, f1.pkts_r) == (B, 1, 1)


# -- timeouts and bounded size ------------------------------------------------------


def test_idle_timeouts_per_protocol() -> None:
    rec = Recorder()
    t = table(rec, tcp_idle=300.0, udp_idle=60.0, sweep_interval=1.0)
    tf = t.packet(tcp(0.0, A, 1, B, 80, SYN))
    t.packet(tcp(0.1, B, 80, A, 1, SYN | ACK))
    uf = t.packet(udp(0.0, A, 2, B, 53))
    t.tick(59.0)
    assert rec.ended == []
    t.tick(61.0)
    assert rec.ended == [uf] and len(t) == 1
    t.tick(301.0)
    assert rec.ended == [uf, tf] and len(t) == 0 and t.expired == 2


def test_active_timeout_reports_and_restarts_long_flows() -> None:
    rec = Recorder()
    t = table(rec, active_timeout=3600.0, sweep_interval=1.0)
    f = t.packet(tcp(0.0, A, 40000, B, 443, SYN))
    t.packet(tcp(0.1, B, 443, A, 40000, SYN | ACK))
    for i in range(1, 4000):
        t.packet(tcp(float(i), A, 40000, B, 443, ACK, n=1000))
        t.tick(float(i))
    assert f is not None and t.restarted == 1 and rec.ended == [f]
    assert f.first == 0.0 and 3599.0 <= f.last < 3601.0
    assert f.pkts_o + f.pkts_r >= 3600
    cont = t.get(f.key)
    assert cont is not None
    assert cont is not f
    # The continuation keeps the originator and the settled outcome, counts afresh.
    assert (cont.src, cont.sport, cont.state, cont.outcome) == (A, 40000, S_ESTABLISHED, SUCCESS)
    assert cont.pkts_o == 3999 - int(cont.first) and cont.pkts_r == 0
    assert [o for _, o, _ in rec.outcomes] == [SUCCESS]
    t.packet(tcp(4000.0, B, 443, A, 40000, ACK | FIN))
    assert cont.pkts_r == 1  # direction still right after the restart
    t.flush(4000.0)
    assert rec.ended == [f, cont]


def test_bounded_size_evicts_oldest_and_counts() -> None:
    rec = Recorder()
    t = table(rec, max_flows=100)
    flows = [t.packet(udp(float(i), A, 10000 + i, B, 53)) for i in range(250)]
    assert len(t) <= 100
    assert t.evicted == len(rec.ended) >= 150
    assert rec.ended[0] is flows[0] and rec.ended[1] is flows[1]  # oldest first
    assert flows[-1] is not None and t.get(flows[-1].key) is flows[-1]
    assert t.created == 250
