"""The retro-hunt journal's cost (agent/hunt), three tables:

    .venv/bin/python bench/hunt.py replay [CAPTURE] [--runs 3]
    .venv/bin/python bench/hunt.py search [--hours 336] [--conns 20e6] [--dns 50e6]
    .venv/bin/python bench/hunt.py all    (both, with their defaults)

replay: `vigie-agent replay` of a capture with and without `--journal` (the journal the
running agent keeps), best of N, whole process; the baseline row is the same replay
without the journal (and Suricata 7 with no outputs, when installed: the ratio the
offline bar is about). With no capture given, a flow-heavy one is made (short TCP
sessions and DNS exchanges: the journal's worst case, one record per 2 to 8 packets).
Then bytes per connection and per DNS exchange in the segments that replay wrote.

search: a busy server's 14 days in the journal's format (hourly segments of compressed
blocks with their index; 20 million connections and 50 million DNS exchanges by default,
internal clients, a large pool of external servers and names; `--distinct` hours are
generated, 24 by default, the others copies of them under their own hours), then one
search for 1,000 indicators (IPv4 addresses, CIDR ranges, domains, JA3, JA4; a few of
them present), in a fresh process: CPU seconds of one core, wall time, peak memory. The
baseline row reads every block of every segment (a search without the index).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
PY = ROOT / ".venv" / "bin" / "python"
AGENT = ROOT / ".venv" / "bin" / "vigie-agent"

from agent.hunt import segment as seg  # noqa: E402

sys.path.insert(0, str(HERE))
from offline import SURICATA_YAML, best_of  # noqa: E402  (the same baseline, the same timing)


# A flow-heavy capture -------------------------------------------------------------------
def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def _ip(src: bytes, dst: bytes, proto: int, payload: bytes) -> bytes:
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0x4000, 64, proto, 0, src,
                    dst)  # fmt: skip
    h = h[:10] + struct.pack("!H", _csum(h)) + h[12:]
    return b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02\x08\x00" + h + payload


def _tcp(src, dst, sp, dp, seq, ack, flags, data=b"") -> bytes:
    t = struct.pack("!HHIIBBHHH", sp, dp, seq, ack, 5 << 4, flags, 65535, 0, 0) + data
    return _ip(src, dst, 6, t)


def _udp(src, dst, sp, dp, data) -> bytes:
    return _ip(src, dst, 17, struct.pack("!HHHH", sp, dp, 8 + len(data), 0) + data)


def _dns(qid: int, name: str, answer: bytes | None) -> bytes:
    q = b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\0\0\1\0\1"
    if answer is None:
        return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q
    rr = b"\xc0\x0c\0\1\0\1\0\0\x0e\x10\0\4" + answer
    return struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + q + rr


def make_capture(path: Path, flows: int = 40_000, dns: int = 80_000) -> int:
    """Short TCP sessions (8 packets) and DNS exchanges (2), interleaved; returns packets."""
    rnd = random.Random(7)
    t = 1_700_000_000.0
    n = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))

        def put(frame: bytes) -> None:
            nonlocal t, n
            t += 0.00005
            f.write(struct.pack("<IIII", int(t), int(t % 1 * 1e6), len(frame), len(frame)))
            f.write(frame)
            n += 1

        resolver = bytes([10, 0, 0, 53])
        for i in range(max(flows, dns)):
            c = bytes([10, 0, rnd.randrange(8), rnd.randrange(1, 250)])
            if i < flows:
                s = bytes([203, 0, rnd.randrange(113, 120), rnd.randrange(1, 250)])
                sp, dp = 20000 + i % 40000, (443, 80, 8443)[i % 3]
                put(_tcp(c, s, sp, dp, 1, 0, 0x02))
                put(_tcp(s, c, dp, sp, 9, 2, 0x12))
                put(_tcp(c, s, sp, dp, 2, 10, 0x10))
                put(_tcp(c, s, sp, dp, 2, 10, 0x18, b"x" * 200))
                put(_tcp(s, c, dp, sp, 10, 202, 0x18, b"y" * 1000))
                put(_tcp(c, s, sp, dp, 202, 1010, 0x11))
                put(_tcp(s, c, dp, sp, 1010, 203, 0x11))
                put(_tcp(c, s, sp, dp, 203, 1011, 0x10))
            if i < dns:
                name = f"h{rnd.randrange(5000)}.site{rnd.randrange(2000)}.example"
                qid, sp = i & 0xFFFF, 30000 + i % 30000
                put(_udp(c, resolver, sp, 53, _dns(qid, name, None)))
                put(_udp(resolver, c, 53, sp, _dns(qid, name, bytes([198, 51, 100, i % 250]))))
    return n


def bench_replay(cap: Path | None, runs: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="vigie-hunt-"))
    if cap is None:
        cap = tmp / "flows.pcap"
        packets = make_capture(cap)
    else:
        packets = sum(1 for _ in _records(cap))
    # Old capture times: keep every segment (the age bound counts from the wall clock).
    cfg = tmp / "agent.toml"
    cfg.write_text("[journal]\nmax_age_days = 100000.0\n")
    base = [str(AGENT), "replay", str(cap), "--config", str(cfg)]
    rows: dict[str, float] = {}
    for name, extra, state in (("replay (baseline)", [], tmp / "s0"),
                               ("replay --journal", ["--journal"], tmp / "s1")):  # fmt: skip

        def run(state=state, extra=extra) -> list[str]:
            shutil.rmtree(state, ignore_errors=True)
            return [*base, "--state-dir", str(state), *extra]

        best = float("inf")
        for _ in range(runs):
            argv = run()
            t = time.perf_counter()
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            best = min(best, time.perf_counter() - t)
        rows[name] = best
    if shutil.which("suricata"):
        (tmp / "suricata.yaml").write_text(SURICATA_YAML.format(log=tmp))
        rows["suricata 7 single"] = best_of(
            ["suricata", "-c", str(tmp / "suricata.yaml"), "-r", str(cap), "--runmode", "single",
             "-S", "/dev/null", "-l", str(tmp)], runs,
        )  # fmt: skip
    base_s = rows["replay (baseline)"]
    sur = rows.get("suricata 7 single")
    print(f"\nreplay of {cap.name}: {packets} packets, best of {runs}")
    print(f"{'run':22} {'seconds':>8} {'packets/s':>10} {'÷baseline':>10} {'÷suricata':>10}")
    for name, s in rows.items():
        rs = f"{sur / s:10.2f}" if sur else f"{'-':>10}"
        print(f"{name:22} {s:8.2f} {packets / s:10.0f} {base_s / s:10.2f} {rs}")
    # Bytes on disk per record, from what the journaled replay wrote.
    jdir = tmp / "s1" / "journal"
    size = sum(p.stat().st_size for p in jdir.glob("*.vjs"))
    counts: dict[str, int] = {}
    for p in jdir.glob("*.vjs"):
        with seg.Segment(p) as s:
            for k, v in s.header["counts"].items():
                counts[k] = counts.get(k, 0) + v
    total = sum(counts.values())
    print(f"journal: {size} bytes for {counts.get('c', 0)} connections and "
          f"{counts.get('d', 0)} DNS exchanges: {size / max(total, 1):.1f} bytes a record "
          "(index included)")  # fmt: skip
    shutil.rmtree(tmp, ignore_errors=True)


def _records(cap: Path):
    from agent.capture.pcapfile import read_capture

    return read_capture(str(cap))


# A busy server's fortnight -----------------------------------------------------------------
class Pools:
    """Who a busy server's hosts talk to: a few thousand internal clients, two resolvers,
    300,000 external addresses and 100,000 names (with a few subdomains each)."""

    def __init__(self, seed: int = 1) -> None:
        rnd = random.Random(seed)
        self.clients = [f"10.{i // 250 % 250}.{i % 250}.{1 + i % 200}" for i in range(3000)]
        self.servers = [
            f"{rnd.randrange(1, 223)}.{rnd.randrange(256)}.{rnd.randrange(256)}."
            f"{rnd.randrange(1, 255)}"
            for _ in range(300_000)
        ]
        tlds = ("com", "net", "fr", "org")
        self.names = [
            f"{w}{rnd.randrange(10**6)}.{rnd.choice(tlds)}"
            for w in ("cdn", "api", "www", "mail", "img")
            for _ in range(20_000)
        ]
        self.subs = ("", "www.", "a.", "static.", "eu.")
        self.resolvers = ["10.0.0.53", "10.0.1.53"]


def write_fortnight(d: Path, hours: int, conns: int, dns: int, block: int = 2048) -> float:
    """Hourly segments in the journal's format (the writer's blocks and index, written
    in bulk here: the agent writes the same a record at a time); returns seconds."""
    import ipaddress

    pools = Pools()
    t_start = (time.time() // 3600 - hours) * 3600
    per_c, per_d = conns // hours, dns // hours
    key, domain_keys = seg.key, seg.domain_keys
    addr_key: dict[str, tuple[int, int]] = {}
    name_keys: dict[str, list[int]] = {}
    clients, servers, names, subs = pools.clients, pools.servers, pools.names, pools.subs
    resolvers = pools.resolvers
    nclients, nservers, nnames = len(clients), len(servers), len(names)
    x = 88172645463325252  # a 64-bit LCG: random's methods cost more than the records
    mask = (1 << 64) - 1
    t0 = time.perf_counter()
    for h in range(hours):
        base = t_start + h * 3600
        path = d / "current.open"
        postings: dict[int, set[int]] = {}
        offsets: list[int] = []
        # Connections and DNS exchanges interleaved in time, as they come.
        share = per_c / (per_c + per_d)
        with open(path, "wb") as f:
            f.write(seg.MAGIC)
            n = per_c + per_d
            start = 0
            while start < n:
                stop = min(n, start + block)
                b = len(offsets)
                recs = []
                keys: set[int] = set()
                for k in range(start, stop):
                    x = (x * 6364136223846793005 + 1442695040888963407) & mask
                    ts = round(base + 3600 * k / n, 6)
                    c = clients[(x >> 8) % nclients]
                    if (x >> 40) % 1000 < share * 1000:
                        sv = servers[(x >> 20) % nservers]
                        recs.append(["c", ts, round(ts + (x >> 50) % 30, 6), c,
                                     1024 + (x >> 3) % 60000, sv, 443, 6, "closed",
                                     200 + (x >> 12) % 5000, 500 + (x >> 24) % 200000,
                                     3 + (x >> 33) % 40, 3 + (x >> 45) % 200])  # fmt: skip
                        pair = (c, sv)
                        qname = None
                    else:
                        qname = subs[(x >> 50) % 5] + names[(x >> 20) % nnames]
                        r = resolvers[x & 1]
                        recs.append(["d", ts, c, 1024 + (x >> 3) % 60000, r, 53, qname, 1, 0,
                                     1 + (x >> 45) % 3])  # fmt: skip
                        pair = (c, r)
                    for a in pair:
                        got = addr_key.get(a)
                        if got is None:
                            packed = ipaddress.ip_address(a).packed
                            got = addr_key[a] = (key("i", packed), int.from_bytes(packed, "big"))
                        keys.add(got[0])
                    if qname is not None:
                        ks = name_keys.get(qname)
                        if ks is None:
                            ks = name_keys[qname] = domain_keys(qname)
                        keys.update(ks)
                for k in keys:
                    p = postings.get(k)
                    if p is None:
                        postings[k] = {b}
                    else:
                        p.add(b)
                offsets.append(f.tell())
                seg.write_block(f, recs)
                start = stop
            v4 = {v for k, v in addr_key.values() if k in postings}
            seg.write_index(f, offsets, postings, v4, set(),
                            {"first": base, "last": base + 3600,
                             "counts": {"c": per_c, "d": per_d}})  # fmt: skip
        path.rename(d / f"seg-{int(base)}-{int(base) + 3601}.vjs")
        if h % 24 == 23:
            print(f"  {h + 1} hours written, {time.perf_counter() - t0:.0f} s", flush=True)
    return time.perf_counter() - t0


SEARCH = r"""
import json, sys, time
from pathlib import Path
from agent.hunt.search import Query, search, matcher
from agent.hunt import segment as seg
d, iocs, mode = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text()), sys.argv[3]
q = Query.build(iocs["ips"], iocs["domains"], iocs["ja3"], iocs["ja4"])
c0, w0 = time.process_time(), time.perf_counter()
hits = 0
paths = sorted(d.glob("*.vjs"))
if mode == "index":
    for h in search(d, q):
        hits += 1
else:  # every block of every record checked, no index: on a sample of segments
    paths = paths[:: max(1, len(paths) // 12)]
    m = matcher(q)
    for p in paths:
        with seg.Segment(p) as s:
            for block in s.all_blocks():
                hits += sum(1 for r in block for _ in m(r))
hwm = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM"))
print(json.dumps({"cpu": time.process_time() - c0, "wall": time.perf_counter() - w0,
                  "hits": hits, "rss_mb": hwm / 1024, "segments": len(paths)}))
"""


def indicators(rnd: random.Random, pools: Pools, n: int = 1000, present: int = 10) -> dict:
    """n indicators: `present` of them (addresses, domains) occur in the journal."""
    ips = [f"198.18.{rnd.randrange(256)}.{rnd.randrange(1, 255)}" for _ in range(380)]
    ips += rnd.sample(pools.servers, present // 2)
    ips += [f"100.{64 + i}.{rnd.randrange(256)}.0/24" for i in range(20)]
    domains = [f"c2-{rnd.randrange(10**9)}.bad{rnd.randrange(100)}.net" for _ in range(395)]
    domains += rnd.sample(pools.names, present - present // 2)
    ja3 = [f"{rnd.getrandbits(128):032x}" for _ in range(100)]
    ja4 = [f"t13d1516h2_{rnd.getrandbits(48):012x}_{rnd.getrandbits(48):012x}"
           for _ in range(n - len(ips) - len(domains) - len(ja3))]  # fmt: skip
    return {"ips": ips, "domains": domains, "ja3": ja3, "ja4": ja4}


def bench_search(hours: int, conns: int, dns: int, keep: Path | None, distinct: int) -> None:
    d = keep or Path(tempfile.mkdtemp(prefix="vigie-fortnight-"))
    d.mkdir(parents=True, exist_ok=True)
    distinct = min(distinct, hours)
    per = (conns // hours, dns // hours)
    if not any(d.glob("*.vjs")):
        print(f"writing {distinct} distinct hourly segments of {per[0]:,} connections and "
              f"{per[1]:,} DNS exchanges")  # fmt: skip
        secs = write_fortnight(d, distinct, per[0] * distinct, per[1] * distinct)
        n = (per[0] + per[1]) * distinct
        print(f"written in {secs:.0f} s ({n / secs:,.0f} records/s)")
    made = sorted(d.glob("*.vjs"))[:distinct]
    if len(list(d.glob("*.vjs"))) < hours:
        # The other hours are copies (real files, named an hour apart each, before the
        # generated ones): the search's work per segment is the same, and writing them
        # afresh took hours on the shared bench machine.
        oldest = int(made[0].stem.split("-")[1])
        for h in range(hours - distinct):
            t = oldest - (h + 1) * 3600
            shutil.copyfile(made[h % distinct], d / f"seg-{t}-{t + 3601}.vjs")
        print(f"{hours - distinct} more hours copied from those")
    size = sum(p.stat().st_size for p in d.glob("*.vjs"))
    iocs = indicators(random.Random(2), Pools())
    ioc_file = d / "iocs.json"
    ioc_file.write_text(json.dumps(iocs))
    rows = {}
    for mode in ("index", "scan"):
        out = subprocess.run([str(PY), "-c", SEARCH, str(d), str(ioc_file), mode], cwd=ROOT,
                             capture_output=True, text=True, check=True)  # fmt: skip
        rows[mode] = json.loads(out.stdout)
    n = sum(len(v) for v in iocs.values())
    nseg = len(list(d.glob("*.vjs")))
    print(
        f"\nsearch: {n} indicators over {nseg} segments, {conns + dns:,} records, "
        f"{size / 1e9:.2f} GB ({size / (conns + dns):.1f} bytes a record, index included)"
    )
    print(f"{'search':30} {'cpu s':>8} {'wall s':>8} {'hits':>8} {'peak RSS MB':>12}")
    for mode, label in (("scan", "every block (baseline)"), ("index", "with the segment index")):
        r = rows[mode]
        scale = nseg / r["segments"]  # the baseline ran on a sample: scaled to all
        note = f" (x{scale:.0f})" if scale > 1 else ""
        print(f"{label + note:30} {r['cpu'] * scale:8.1f} {r['wall'] * scale:8.1f} "
              f"{r['hits']:8d} {r['rss_mb']:12.0f}")  # fmt: skip
    if keep is None:
        shutil.rmtree(d, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("replay", "search", "all"))
    ap.add_argument("capture", nargs="?", help="replay: a capture (default: a flow-heavy one)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--hours", type=int, default=336)
    ap.add_argument("--conns", type=float, default=20e6)
    ap.add_argument("--dns", type=float, default=50e6)
    ap.add_argument("--keep", type=Path, help="search: write (or reuse) the journal here")
    ap.add_argument(
        "--distinct", type=int, default=24, help="search: hours generated (the rest copied)"
    )
    args = ap.parse_args()
    if args.what in ("replay", "all"):
        bench_replay(Path(args.capture) if args.capture else None, args.runs)
    if args.what in ("search", "all"):
        bench_search(args.hours, int(args.conns), int(args.dns), args.keep, args.distinct)
    print(
        f"(bench process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
