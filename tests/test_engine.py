"""The engine's contract with Python: which packets it hands up, and the events and
per-tick counters detectors read instead of packets."""

from __future__ import annotations

import pytest

from agent.detect.base import PAIR_ICMP, PAIR_SYN, PAIR_TCP, PAIR_UDP
from agent.engine import (
    END_SESSIONS,
    END_UNRESOLVED,
    EV_CLOSE,
    EV_DNS,
    EV_END,
    EV_OUTCOME,
    EV_PACKET,
    Engine,
    Packet,
    parse_dns,
)

A, B = b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02"  # internal
X = b"\x5d\xb8\xd8\x22"  # external (93.184.216.34)
NETS = [(b"\x0a\x00\x00\x00", 8)]


def tcp(ts, src, sport, dst, dport, flags, payload=b"", n=60):
    return Packet(ts, n, 4, src, dst, 6, sport, dport, flags, payload)


def udp(ts, src, sport, dst, dport, payload=b"", n=80):
    return Packet(ts, n, 4, src, dst, 17, sport, dport, 0, payload)


def codes(e: Engine) -> list[int]:
    return [ev[0] for ev in e.events()]


def test_nothing_is_handed_up_unless_asked() -> None:
    e = Engine()
    e.packet(udp(1.0, A, 5000, B, 53, b"\x00" * 20))
    e.packet(Packet(1.1, 98, 4, A, B, 1, 8, 0, 0, b"x" * 56))
    assert codes(e) == []
    e.configure(deep={"dns"}, icmp=True)
    e.packet(udp(2.0, A, 5001, B, 53, b"\x00" * 20))
    e.packet(udp(2.1, A, 5002, B, 9999, b"\x00" * 20))  # not a DNS port
    e.packet(Packet(2.2, 98, 4, A, B, 1, 8, 0, 0, b"x" * 56))
    evs = e.events()
    # DNS over UDP goes up read (what parse_dns returns), for the deep decoder only
    assert [ev[0] for ev in evs] == [EV_DNS, EV_PACKET]
    assert (evs[0][1].dport, evs[0][1].payload, evs[0][2].dport) == (53, b"\x00" * 20, 53)
    assert evs[0][3] == parse_dns(b"\x00" * 20) and evs[0][4] is False
    assert evs[1][1].proto == 1 and evs[1][2] is not None  # ICMP, with its flow
    assert evs[1][3] is True  # an on_packet asked for ICMP


def test_declared_signatures_hand_up_matching_payloads_only() -> None:
    e = Engine()
    e.configure(signatures=[({6}, {443}, b"SSH-2.0-")])
    e.packet(tcp(1.0, A, 40000, X, 443, 0x18, b"SSH-2.0-OpenSSH_9.2"))
    e.packet(tcp(1.1, A, 40000, X, 443, 0x18, b"\x17\x03\x03 bulk"))
    e.packet(tcp(1.2, A, 40001, X, 80, 0x18, b"SSH-2.0-OpenSSH_9.2"))
    evs = e.events()
    assert [(ev[0], ev[1].ts, ev[3]) for ev in evs] == [(EV_PACKET, 1.0, True)]


def test_pairs_count_per_source_destination_and_class() -> None:
    e = Engine()
    e.configure(pairs=True)
    for i in range(3):
        e.packet(tcp(1.0 + i, A, 40000 + i, B, 80, 0x02))
    e.packet(tcp(4.0, B, 80, A, 40000, 0x12))
    e.packet(udp(5.0, A, 5000, X, 53, n=90))
    e.packet(Packet(6.0, 98, 4, A, X, 1, 8, 0, 0, b"x" * 56))
    pairs = {(r[0], r[1], r[2]): r[3:] for r in e.pairs()}
    assert pairs == {
        (A, B, PAIR_SYN): (3, 180, 3.0, 80),
        (B, A, PAIR_TCP): (1, 60, 4.0, 40000),
        (A, X, PAIR_UDP): (1, 90, 5.0, 53),
        (A, X, PAIR_ICMP): (1, 98, 6.0, 0),
    }
    assert len(e.pairs()) == 0  # each tick's counters are delivered once


def test_pairs_past_the_table_count_under_other_sources() -> None:
    e = Engine()
    e.configure(pairs=True)
    n = 65536 + 1000
    for i in range(n):
        src = bytes((11, (i >> 16) & 255, (i >> 8) & 255, i & 255))
        e.packet(tcp(1.0, src, 1024, B, 443, 0x02))
    recs = e.pairs()
    named = [r for r in recs if r[0]]
    other = [r for r in recs if not r[0]]
    assert len(named) == 65536
    assert len(other) == 1 and other[0][1:4] == (B, PAIR_SYN, 1000)
    assert recs[-1] == recs[len(recs) - 1]
    assert e.stats()["pairs_overflow"] == 1000
    assert sum(r[3] for r in recs) == n  # no packet lost from the counts


def test_pairs_come_in_the_order_of_their_last_packets() -> None:
    """Detectors pour pairs as they would have packet by packet: by last packet, and
    pairs whose last packets share a time in the order they were first seen."""
    e = Engine()
    e.configure(pairs=True)
    e.packet(tcp(1.0, A, 40000, B, 80, 0x02))
    e.packet(udp(1.5, A, 5000, X, 53))
    e.packet(tcp(2.0, B, 80, A, 40000, 0x12))
    e.packet(udp(2.0, X, 53, A, 5000))
    e.packet(tcp(3.0, A, 40000, B, 80, 0x02))  # the first pair's last packet is now latest
    recs = e.pairs()
    order = [(A, X, 1.5), (B, A, 2.0), (X, A, 2.0), (A, B, 3.0)]
    assert [(r[0], r[1], r[5]) for r in recs] == order
    with pytest.raises(IndexError):
        recs[4]


def test_bursts_of_watched_flows_start_with_the_flow_and_after_a_silence() -> None:
    e = Engine()
    e.configure(activity=True, activity_ignore={53}, internal_nets=NETS, activity_gap=5.0)
    e.packet(udp(10.0, A, 5000, X, 443))
    e.packet(udp(10.2, X, 443, A, 5000))
    e.packet(udp(10.5, A, 5001, X, 53))  # ignored port
    e.packet(udp(10.6, X, 5002, A, 443))  # external originator
    e.packet(udp(10.7, A, 5003, B, 443))  # internal responder
    e.packet(udp(14.0, A, 5000, X, 443, n=70))  # 3.8 s of silence: the same burst
    # a check-in 11 s later: the burst ends with its bytes each way, the next starts (on a
    # known flow: not new)
    e.packet(udp(25.0, A, 5000, X, 443, n=100))
    assert list(e.activity()) == [
        (10.0, A, X, 443, None, True),
        (14.0, A, X, 443, 80 + 70, 80),
        (25.0, A, X, 443, None, False),
    ]
    assert len(e.activity()) == 0
    e.flush()  # the flow ends: so does its burst
    assert list(e.activity()) == [(25.0, A, X, 443, 100, 0)]
    e.configure(activity=True, activity_ignore={53}, activity_internal=True, internal_nets=NETS)
    e.packet(udp(30.0, A, 5004, B, 443))
    assert [r[2] for r in e.activity()] == [B]
    with pytest.raises(ValueError, match="activity_gap"):
        e.configure(activity=True, activity_gap=-1.0)


def test_a_burst_ends_at_the_silence_not_when_the_session_expires() -> None:
    """A check-in over TCP: its bytes each way are known once the link falls silent, long
    before the idle session leaves the table (5 minutes)."""
    e = Engine()
    e.configure(activity=True, internal_nets=NETS, activity_gap=5.0)
    e.packet(tcp(10.0, A, 40000, X, 443, 0x02))
    e.packet(tcp(10.1, X, 443, A, 40000, 0x12))
    e.packet(tcp(10.2, A, 40000, X, 443, 0x10, n=400))
    assert list(e.activity()) == [(10.0, A, X, 443, None, True)]
    e.tick(12.0)  # 1.8 s of silence: the burst goes on
    assert len(e.activity()) == 0
    e.tick(20.0)
    assert list(e.activity()) == [(10.2, A, X, 443, 60 + 400, 60)]
    assert len(e) == 1  # the session itself is still there
    # TCP keep-alive probes and the close of the idle session are no check-ins (a
    # keep-alive every 45 s would otherwise be a perfect timer)
    for t in (55.0, 100.0):
        e.packet(tcp(t, A, 40000, X, 443, 0x10))
        e.packet(tcp(t + 0.1, X, 443, A, 40000, 0x10))
    e.packet(tcp(150.0, A, 40000, X, 443, 0x11))
    e.tick(200.0)
    assert len(e.activity()) == 0
    e.packet(tcp(210.0, A, 40000, X, 443, 0x18, b"x" * 240, n=300))  # data: a check-in
    assert list(e.activity()) == [(210.0, A, X, 443, None, False)]


def test_close_event_for_established_sessions_on_watched_ports() -> None:
    e = Engine()
    e.configure(close_ports={22})
    for sport, dport in ((40000, 22), (40001, 80)):
        e.packet(tcp(1.0, A, sport, B, dport, 0x02))
        e.packet(tcp(1.1, B, dport, A, sport, 0x12))
        e.packet(tcp(1.2, A, sport, B, dport, 0x11))  # FIN
        e.packet(tcp(1.3, B, dport, A, sport, 0x11))
    evs = e.events()
    closes = [(ev[1].dport, ev[2]) for ev in evs if ev[0] == EV_CLOSE]
    assert closes == [(22, 1.2)]  # once, and only for the watched port
    assert [ev[0] for ev in evs].count(EV_OUTCOME) == 2


def test_flow_objects_are_live_then_keep_their_final_values() -> None:
    e = Engine(max_flows=10)
    f = e.packet(tcp(1.0, A, 40000, B, 22, 0x02))
    e.packet(tcp(1.1, B, 22, A, 40000, 0x12))
    assert (f.pkts_o, f.pkts_r, f.outcome) == (1, 1, "success")
    e.flush()
    ended = [ev[1] for ev in e.events() if ev[0] == EV_END]
    assert ended == [f]
    e.packet(tcp(2.0, A, 40000, B, 22, 0x02))  # same key, a new flow in the same slot
    assert (f.pkts_o, f.pkts_r, f.last) == (1, 1, 1.1)
    del e
    assert (f.src, f.dport, f.bytes_o) == (A, 22, 60)  # outlives its engine


def test_bad_configuration_is_refused_with_the_reason() -> None:
    e = Engine()
    for kw, words in (
        ({"close_ports": [70000]}, "port 70000"),
        ({"signatures": [({6}, {80}, b"x" * 17)]}, "16 bytes"),
        ({"internal_nets": [(b"\x0a\x00", 8)]}, "internal_nets"),
    ):
        try:
            e.configure(**kw)
        except ValueError as exc:
            assert words in str(exc)
        else:
            raise AssertionError(f"{kw} accepted")


def test_flow_ends_reported_are_the_ones_asked_for() -> None:
    e = Engine()
    e.configure(ends=END_UNRESOLVED | END_SESSIONS, close_ports={22})
    e.packet(udp(1.0, A, 5000, B, 53))
    e.packet(udp(1.1, B, 53, A, 5000))  # answered: an outcome, no end event
    silent = e.packet(udp(1.2, A, 5001, B, 514))  # never answered
    ssh = e.packet(tcp(1.3, A, 40000, B, 22, 0x02))
    e.packet(tcp(1.4, B, 22, A, 40000, 0x12))
    e.packet(tcp(1.5, A, 40001, B, 80, 0x02))
    e.packet(tcp(1.6, B, 80, A, 40001, 0x12))  # established, not on a watched port
    closed = e.packet(tcp(1.7, A, 40002, B, 22, 0x02))
    e.packet(tcp(1.8, B, 22, A, 40002, 0x12))
    e.packet(tcp(1.9, A, 40002, B, 22, 0x11))  # its close went to on_close: no end too
    e.events()
    assert closed.closed and not ssh.closed
    e.flush()
    assert [ev[1] for ev in e.events() if ev[0] == EV_END] == [silent, ssh]
    assert e.stats()["created"] == 5


def test_table_grows_as_flows_come_and_keeps_every_one() -> None:
    e = Engine(max_flows=20_000)
    flows = []
    for i in range(15_000):  # past the first allocation, through several doublings
        src = bytes((10, 1, i >> 8, i & 255))
        flows.append(e.packet(udp(1.0 + i / 1e4, src, 5000, X, 53)))
    assert len(e) == 15_000 and e.stats()["evicted"] == 0
    assert all(e.get(f.key) is f for f in flows)  # found again after every rehash
    for i in range(15_000, 21_000):
        e.packet(udp(3.0, bytes((10, 2, i >> 8 & 255, i & 255)), 5000, X, 53))
    assert len(e) <= 20_000 and e.stats()["evicted"] >= 1_000


def test_outcomes_without_listeners_are_kept_on_the_flow_only() -> None:
    e = Engine()
    e.configure(outcomes=False)
    e.packet(tcp(1.0, A, 40000, B, 22, 0x02))
    e.packet(tcp(1.1, B, 22, A, 40000, 0x12))
    assert e.events() == []
    f = e.get((6, 0, A, 40000, B, 22))
    assert f is not None and f.outcome == "success"


def test_http_requests_no_reader_needs_are_counted_not_handed_up() -> None:
    e = Engine()
    e.configure(deep={"http"}, http_first=b"GP", ends=0, outcomes=False)
    e.configure_http(methods=["GET", "POST"], headers=["Authorization"], max_headers=8192)
    plain = b"GET /index.html HTTP/1.1\r\nHost: intranet\r\nAccept: */*\r\n\r\n"
    auth = b"GET /admin HTTP/1.1\r\nHost: intranet\r\n  AUTHORIZATION : Basic dTpw\r\n\r\n"
    late = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nAuthorization: Basic dTpw\r\n"  # in the body
    bad = b"GET /a b c HTTP/1.1\r\n\r\n"
    for i, payload in enumerate((plain, auth, late, bad, b"POST /form\n\n", b"GETX / HTTP/1.1")):
        e.packet(tcp(1.0 + i, A, 40000 + i, X, 80, 0x18, payload))
    evs = e.events()
    # the request with the header, and what is not a request (the deep decoder says so)
    assert [ev[1].payload for ev in evs] == [auth, b"GETX / HTTP/1.1"]
    st = e.read_stats()
    assert st["decoded"]["http"] == 3  # plain, late, and an HTTP/0.9-style POST
    assert st["malformed"] == {"http_bad_request_line": 1}
    e.configure_http(methods=["GET", "POST"], headers=[])  # a reader that wants them all
    e.packet(tcp(9.0, A, 41000, X, 80, 0x18, plain))
    assert [ev[1].payload for ev in e.events()] == [plain]


def test_outcomes_handed_up_only_for_the_declared_tcp_ports() -> None:
    e = Engine()
    e.configure(outcomes=False, outcome_ports={22})
    e.packet(tcp(1.0, A, 40000, B, 22, 0x02))
    e.packet(tcp(1.1, B, 22, A, 40000, 0x12))  # success on 22
    e.packet(tcp(1.2, A, 40001, B, 22, 0x02))
    e.packet(tcp(1.3, B, 22, A, 40001, 0x14))  # rejected on 22
    e.packet(tcp(1.4, A, 40002, B, 80, 0x02))
    e.packet(tcp(1.5, B, 80, A, 40002, 0x12))  # not a declared port
    e.packet(udp(1.6, A, 5000, B, 22))
    e.packet(udp(1.7, B, 22, A, 5000))  # UDP: not TCP
    evs = [ev for ev in e.events() if ev[0] == EV_OUTCOME]
    assert [(ev[1].dport, ev[2]) for ev in evs] == [(22, "success"), (22, "rejected")]
    assert e.get((17, 0, A, 5000, B, 22)).outcome == "success"  # still set on the flow


def test_pairs_counted_only_for_what_readers_want() -> None:
    from agent.engine import PAIRS_FLOODS, PAIRS_OUTBOUND

    def counted(want: int) -> set:
        e = Engine()
        e.configure(pairs=True, internal_nets=NETS, pairs_want=want)
        e.packet(tcp(1.0, A, 40000, X, 443, 0x02))  # SYN, internal -> external
        e.packet(tcp(1.1, X, 443, A, 40000, 0x12))  # SYN-ACK, external -> internal
        e.packet(tcp(1.2, A, 40000, X, 443, 0x18, b"x" * 100))  # data out
        e.packet(udp(1.3, X, 5000, A, 53))  # UDP in
        e.packet(udp(1.4, A, 5001, B, 53))  # UDP, internal -> internal
        return {(r[0], r[1], r[2]) for r in e.pairs()}

    every = counted(0)
    assert len(every) == 5
    assert counted(PAIRS_FLOODS) == {
        (A, X, PAIR_SYN), (X, A, PAIR_UDP), (A, B, PAIR_UDP)
    }  # fmt: skip
    assert counted(PAIRS_OUTBOUND) == {(A, X, PAIR_SYN), (A, X, PAIR_TCP)}
    assert counted(PAIRS_FLOODS | PAIRS_OUTBOUND) == {
        (A, X, PAIR_SYN), (A, X, PAIR_TCP), (X, A, PAIR_UDP), (A, B, PAIR_UDP)
    }  # fmt: skip


def _ring_block(frames: list) -> tuple[bytearray, int]:
    """A TPACKET_V3 block's frames as the kernel lays them out: tpacket3_hdr (native byte
    order), the frame at tp_mac, the 802.1Q tag (if any) taken off into tp_vlan_tci."""
    import struct

    out = bytearray(b"\xee" * 16)  # whatever precedes the first frame
    for i, (sec, nsec, frame, wirelen, tag) in enumerate(frames):
        mac = 66  # the kernel's alignment puts the frame a little after the header
        size = (mac + len(frame) + 15) & ~15
        status, tci, tpid = 0, 0, 0
        if tag is not None:
            tci, tpid = tag
            status = 0x10 | (0x40 if tpid else 0)  # VLAN_VALID, VLAN_TPID_VALID
        nxt = size if i + 1 < len(frames) else 0
        hdr = struct.pack("=IIIIIIHHIIHH", nxt, sec, nsec, len(frame), wirelen, status, mac,
                          mac + 14, 0, tci, tpid, 0)  # fmt: skip
        out += hdr + b"\xee" * (mac - len(hdr)) + frame + b"\xee" * (size - mac - len(frame))
    return out, 16


def test_the_engine_walks_a_ring_block_as_the_python_walker_does() -> None:
    """Live capture: the engine reads each ring frame's header, clips it to the snaplen
    and puts back the VLAN tag the kernel took off, as ring_frames does."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether

    from agent.capture.live import ring_frames

    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    frames = []
    for i in range(40):
        ip = IP(src=f"10.0.{i % 3}.1", dst="93.184.216.34")
        l4 = TCP(sport=40000 + i % 5, dport=443, flags="S") if i % 2 else UDP(dport=53)
        raw = bytes(eth / ip / l4 / (b"x" * (i * 37 % 300)))
        tag = [None, (7, 0), (4094 | 0x2000, 0x88A8), (12, 0x8100)][i % 4]
        frames.append((1_700_000_000 + i // 7, i * 123_456_789 % 10**9, raw, len(raw) + 4, tag))
    frames.append((1_700_000_010, 5, b"\x02\x00\x00\x00", 60, (9, 0)))  # shorter than 12
    block, first = _ring_block(frames)
    snaplen = 200  # some frames are clipped

    python = Engine()
    for rec in ring_frames(block, first, len(frames), snaplen):
        python.feed(*rec)
    engine = Engine()
    off, num, tick_at = first, len(frames), 1_700_000_002.5
    while num:  # stops at each tick time, goes on from there
        off, num, n, status = engine.feed_ring(block, off, num, snaplen, tick_at, 1 << 20)
        assert n and status in (0, 1)
        tick_at += 2.0
    assert engine.stats() == python.stats() and engine.last_ts == python.last_ts
    assert engine.stats()["bytes"] == sum(f[3] for f in frames) + 31 * 4  # the tags back

    def ended(e: Engine) -> list:
        e.flush()
        return sorted(
            (f.key, f.first, f.last, f.pkts_o, f.pkts_r, f.bytes_o, f.bytes_r)
            for code, f, *_ in e.events()
            if code == EV_END
        )

    flows = ended(engine)
    assert flows == ended(python) and {k[1] for k, *_ in flows} == {0, 7, 4094, 12}
    with pytest.raises(ValueError, match="outside its block"):
        engine.feed_ring(block[:200], first, 5, snaplen, 1e300, 10)
