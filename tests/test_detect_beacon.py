"""net.beacon: recorded C2 (Merlin over HTTP/3-QUIC, 15 s check-ins), synthesized C2 with
uniform jitter (Cobalt Strike / Sliver style sleeps), and the periodic benign traffic that
must stay quiet: a throttled ranged download (BITS), an update poll shared by many hosts,
NTP, irregular browsing.

Captures are synthesized with a seeded RNG and written as a capture tool with a short snap
length writes them: headers kept, wire length whole (a 512 KB range costs 54 bytes a
segment in the file).
"""

from __future__ import annotations

import random
import struct
from pathlib import Path
from socket import inet_aton

from agent.detect.beacon import Pair, assess, band_share, pack_single, unpack_single
from tests.detect_support import corpus, entity, latest, pseudonym, replay
from vigie.v1 import alert_pb2

C2 = "198.51.100.9"  # outside (TEST-NET-2)
MSS = 1448


_ETH = bytes.fromhex("0200000000010200000000050800")  # dst, src MAC; IPv4
_FLAGS = {"S": 0x02, "SA": 0x12, "A": 0x10, "PA": 0x18, "FA": 0x11}


def frame(src: str, dst: str, proto: int, sport: int, dport: int, flags: str, n: int) -> bytes:
    """Ethernet, IPv4 and TCP/UDP headers for `n` bytes of payload (left out: the capture
    keeps headers only)."""
    l4 = (
        struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 0x50, _FLAGS[flags], 65535, 0, 0)
        if proto == 6
        else struct.pack("!HHHH", sport, dport, 8 + n, 0)
    )
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4) + n, 0, 0x4000, 64, proto, 0,
                     inet_aton(src), inet_aton(dst))  # fmt: skip
    return _ETH + ip + l4


class Capture:
    """A pcap written packet by packet: TCP sessions and UDP exchanges between hosts."""

    def __init__(self) -> None:
        self.records: list[tuple[float, bytes, int]] = []
        self.ports = 40000

    def add(self, ts: float, head: bytes, n: int) -> None:
        self.records.append((ts, head, len(head) + n))

    def session(self, t: float, src: str, dst: str, dport: int) -> TcpSession:
        self.ports += 1
        return TcpSession(self, t, src, dst, self.ports, dport)

    def udp(self, t: float, src: str, dst: str, sport: int, dport: int, req: int, resp: int):
        self.add(t, frame(src, dst, 17, sport, dport, "", req), req)
        self.add(t + 0.02, frame(dst, src, 17, dport, sport, "", resp), resp)

    def write(self, path: Path) -> Path:
        with open(path, "wb") as f:
            f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
            for ts, raw, wire in sorted(self.records, key=lambda r: r[0]):
                sec = int(ts)
                f.write(struct.pack("<IIII", sec, int((ts - sec) * 1e6), len(raw), wire))
                f.write(raw)
        return path


class TcpSession:
    """One TCP connection: handshake, then request/response exchanges, then FIN."""

    def __init__(self, cap: Capture, t: float, src: str, dst: str, sport: int, dport: int):
        self.cap, self.src, self.dst, self.sport, self.dport = cap, src, dst, sport, dport
        self._out(t, "S")
        self._in(t + 0.01, "SA")
        self._out(t + 0.02, "A")

    def _out(self, t, flags, n=0):
        self.cap.add(t, frame(self.src, self.dst, 6, self.sport, self.dport, flags, n), n)

    def _in(self, t, flags, n=0):
        self.cap.add(t, frame(self.dst, self.src, 6, self.dport, self.sport, flags, n), n)

    def exchange(self, t: float, req: int, resp: int, rate: float = 10e6) -> float:
        """A request of `req` bytes and its response of `resp` bytes at `rate` bytes/s
        (the client acknowledging every other segment); returns when it ended."""
        for i in range(0, req, MSS):
            self._out(t, "PA", min(MSS, req - i))
        t += 0.03
        for k, i in enumerate(range(0, resp, MSS)):
            n = min(MSS, resp - i)
            self._in(t, "PA", n)
            if k % 2:
                self._out(t + 0.001, "A")
            t += n / rate
        return t

    def close(self, t: float) -> None:
        self._out(t, "FA")
        self._in(t + 0.01, "FA")
        self._out(t + 0.02, "A")


def jittered(rnd: random.Random, start: float, sleep: float, jitter: float, until: float):
    """Check-in times of a sleep of `sleep` s with uniform +-`jitter` (Cobalt Strike's and
    Sliver's jitter), from `start` until `until`."""
    t = start
    while t < until:
        yield t
        t += sleep * rnd.uniform(1 - jitter, 1 + jitter)


def http_beacon(cap, rnd, src, sleep, jitter, duration, dport=80, req=(180, 220),
                resp=(240, 300), start=1000.0):  # fmt: skip
    """A C2 agent polling over HTTP, one new connection per check-in."""
    for t in jittered(rnd, start, sleep, jitter, start + duration):
        s = cap.session(t, src, C2, dport)
        s.close(s.exchange(t + 0.03, rnd.randint(*req), rnd.randint(*resp)))


def beacons(path: Path, **detectors) -> list:
    return latest(replay(path, detectors or None), "net.beacon")


# C2 that must be caught ---------------------------------------------------------------


def test_merlin_quic_beacon_fires():
    found = beacons(corpus("beacon/merlin_c2_http3_quic_beacon_15s.pcapng"))
    assert len(found) == 1
    a = found[0]
    assert a.technique == "T1071"
    assert entity(a, alert_pb2.ROLE_SOURCE) == [pseudonym("10.0.0.4")]
    assert entity(a, alert_pb2.ROLE_INDICATOR) == ["24.199.110.233"]  # external: in clear
    assert entity(a, alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PORT) == ["443"]
    assert 14.5 < a.metrics["interval_median_seconds"] < 15.5
    assert a.metrics["new_connections"] == 1  # one QUIC connection, 13 check-ins inside it
    assert a.metrics["check_ins"] == 13
    assert "10.0.0.4" not in a.summary and "24.199" not in a.summary


def test_too_few_connections_do_not_score():
    merlin = corpus("beacon/merlin_c2_http3_quic_beacon_15s.pcapng")
    assert not beacons(merlin, beacon={"min_connections": 20, "min_jittered_connections": 20})


def test_a_3s_beacon_with_50pct_uniform_jitter_is_caught_within_two_minutes(tmp_path):
    cap, rnd = Capture(), random.Random(3)
    http_beacon(cap, rnd, "10.9.0.5", 3.0, 0.5, 120.0)
    found = replay(cap.write(tmp_path / "b.pcap"))
    hits = [a for a in found if a.detector == "net.beacon"]
    assert hits and len({a.id for a in hits}) == 1  # one alert, revised
    first, last = hits[0], latest(found, "net.beacon")[0]
    assert first.first_seen.ToSeconds() - 1000 <= 90  # within the first minute and a half
    assert entity(last, alert_pb2.ROLE_INDICATOR) == [C2]
    assert 2.5 < last.metrics["interval_median_seconds"] < 3.5
    assert 0.3 < last.metrics["jitter"] < 0.7  # a uniform +-50 % sleep: spread ~0.5
    assert last.metrics["new_connections"] == last.metrics["check_ins"]  # one per check-in
    assert last.metrics["fan_in"] == 1


def test_a_60s_beacon_with_30pct_jitter_over_an_hour_is_caught(tmp_path):
    cap, rnd = Capture(), random.Random(60)
    http_beacon(cap, rnd, "10.9.0.7", 60.0, 0.3, 3600.0, dport=443, req=(500, 700),
                resp=(3800, 4200))  # fmt: skip
    found = beacons(cap.write(tmp_path / "b.pcap"))
    assert len(found) == 1
    m = found[0].metrics
    assert 55 < m["interval_median_seconds"] < 65 and 0.15 < m["jitter"] < 0.45
    assert m["check_ins"] >= 55  # the whole hour
    # found after the check-ins a 30 % jitter needs (about 15), not at the end
    assert found[0].first_seen.ToSeconds() - 1000 < 20 * 60


def test_held_out_keepalive_tls_beacon_with_tasking_is_caught(tmp_path):
    """Not tuned on: a 10 s +- 40 % sleep over one kept-alive TLS session on 8443, other
    sizes, and now and then a tasking answer of 20-200 KB."""
    cap, rnd = Capture(), random.Random(8443)
    s = cap.session(5000.0, "172.20.1.30", C2, 8443)
    end = 0.0
    for i, t in enumerate(jittered(rnd, 5000.1, 10.0, 0.4, 5000.0 + 400)):
        tasking = i % 9 == 4
        end = s.exchange(t, rnd.randint(900, 1300), rnd.randint(20_000, 200_000) if tasking
                         else rnd.randint(600, 900))  # fmt: skip
    s.close(end + 1)
    found = beacons(cap.write(tmp_path / "b.pcap"))
    assert len(found) == 1
    m = found[0].metrics
    assert m["new_connections"] == 1 and m["check_ins"] >= 20
    assert 8 < m["interval_median_seconds"] < 12
    assert entity(found[0], alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PORT) == ["8443"]


# Periodic benign traffic that must stay quiet --------------------------------------------


def bits_download(cap, rnd, src, server, pause, rng_bytes, ranges, new_connections):
    """A throttled ranged download of one large file: a range of `rng_bytes` at 400 KB/s,
    a pause of `pause` s (+-10 %), again; on one kept-alive connection (BITS) or a new one
    per range (a loop of curl -r)."""
    t = 2000.0
    s = None if new_connections else cap.session(t, src, server, 80)
    for _ in range(ranges):
        conn = cap.session(t, src, server, 80) if new_connections else s
        end = conn.exchange(t + 0.03, 350, rng_bytes, rate=400_000)
        if new_connections:
            conn.close(end)
        t = end + pause * rnd.uniform(0.9, 1.1)
    if s is not None:
        s.close(t)


def test_bits_ranged_download_on_one_connection_is_a_transfer(tmp_path):
    cap = Capture()
    bits_download(cap, random.Random(1), "10.9.0.12", "203.0.113.80", 7.0, 524_288, 30,
                  new_connections=False)  # fmt: skip
    path = cap.write(tmp_path / "bits.pcap")
    assert not beacons(path)
    # what keeps it quiet is its size: counted as check-ins, its timer is a beacon's
    assert beacons(path, beacon={"transfer_bytes": 10_000_000})


def test_range_request_loop_with_pauses_is_a_transfer(tmp_path):
    """Held out: a new connection per 100 KB range, every 6 s."""
    cap = Capture()
    bits_download(cap, random.Random(2), "10.9.0.13", "203.0.113.81", 6.0, 100_000, 40,
                  new_connections=True)  # fmt: skip
    assert not beacons(cap.write(tmp_path / "ranges.pcap"))


def update_poll(cap, rnd, hosts, every, duration):
    """Every host polls one update server every `every` s (+-2 %), phases at random."""
    for h in range(hosts):
        src = f"10.20.{h // 200}.{h % 200 + 10}"
        t = 3000.0 + rnd.uniform(0, every)
        while t < 3000.0 + duration:
            s = cap.session(t, src, "203.0.113.50", 443)
            s.close(s.exchange(t + 0.03, rnd.randint(700, 760), rnd.randint(5200, 5300)))
            t += every * rnd.uniform(0.98, 1.02)


def test_update_poll_shared_by_30_hosts_is_quiet(tmp_path):
    cap = Capture()
    update_poll(cap, random.Random(30), 30, 300.0, 3600.0)
    path = cap.write(tmp_path / "update.pcap")
    assert not beacons(path)
    # each host's timer alone is a beacon's: the fan-in is what tells the service apart
    assert len(beacons(path, beacon={"shared_service_hosts": 1000})) == 30


def test_ntp_from_several_hosts_is_quiet(tmp_path):
    cap, rnd = Capture(), random.Random(123)
    for h in range(8):
        t = 4000.0 + rnd.uniform(0, 64)
        while t < 4000.0 + 3 * 3600:
            cap.udp(t, f"10.30.0.{h + 10}", "203.0.113.123", 123, 123, 48, 48)
            t += 64 * rnd.uniform(0.99, 1.01)
    path = cap.write(tmp_path / "ntp.pcap")
    assert not beacons(path)  # port 123 is not scored by default
    # scored anyway, the eight hosts polling one server are a shared service
    assert not beacons(path, beacon={"ignore_ports": [53, 5353]})


def test_irregular_connections_do_not_fire(tmp_path):
    rnd = random.Random(7)
    cap, t = Capture(), 1000.0
    for _i in range(40):
        t += rnd.expovariate(1 / 20.0) + 6  # human-like gaps
        cap.udp(t, "10.9.0.5", C2, 50000, 443, rnd.randint(50, 1400), rnd.randint(50, 1400))
    assert not beacons(cap.write(tmp_path / "irregular.pcap"))


# The measures ------------------------------------------------------------------------


def test_band_share_holds_a_uniform_sleep_and_not_random_gaps():
    rnd = random.Random(11)
    uniform = [rnd.uniform(1.5, 4.5) for _ in range(40)]
    assert band_share(uniform, 3.3) == 1.0
    poisson = [rnd.expovariate(1 / 3) for _ in range(40)]
    assert band_share(poisson, 3.3) < 0.7


def test_pair_keeps_its_last_samples():
    p = Pair(8, 0)
    for i in range(20):
        p.add(i * 60.0, new=i == 0)
        p.add_size(300, 200)
    assert len(p.times) == 8 and len(p.outs) == 8 and p.total == 20 * 500
    m = assess(p, 0.5)
    assert m["interval_median_seconds"] == 60.0 and m["jitter"] == 0.0 and m["in_band"] == 1.0
    assert m["check_ins"] == 8 and m["new_connections"] == 1 and m["bytes_out_median"] == 300


def test_jitter_estimate_is_the_uniform_jitter():
    """Intervals spread evenly over 60 s +- 30 %: the estimate reads 0.3."""
    p = Pair(64, 0)
    t = 0.0
    p.add(t, new=True)
    for k in range(40):
        t += 60 * (1 + 0.3 * (2 * k / 39 - 1))
        p.add(t, new=True)
    assert abs(assess(p, 0.5)["jitter"] - 0.3) < 0.02


def test_a_lone_check_in_packs_exactly():
    for new, out, inb in ((True, 0, 0), (False, 412, 5_301), (True, 2**26 - 1, 1)):
        assert unpack_single(pack_single(new, out, inb)) == (new, out, inb)
    assert unpack_single(pack_single(False, 10**9, 10**9)) == (False, 2**26 - 1, 2**26 - 1)


def test_forgotten_pairs_leave_no_fan_in(tmp_path):
    from agent.detect.beacon import Beacon
    from common.config import defaults

    d = Beacon(defaults(Beacon.schema()), lambda **k: None)
    a, x = bytes([10, 0, 0, 1]), bytes([198, 51, 100, 9])
    for i in range(4):
        d.on_activity([(100.0 + 10 * i, a, x, 443, None, True)])
    assert sum(d.fan_in.values()) == 1 and len(d.pairs) == 1
    d.on_tick(100.0 + 10 * 4 + d.settings["series_idle_seconds"] + 1)
    assert not d.fan_in and not len(d.pairs) and not len(d.singles)
