"""Make a large benchmark capture from real tools, in two private network namespaces.

    sudo .venv/bin/python bench/make_capture.py [--out bench/captures/mixed.pcap] [--scale 1]

Namespace A (server, 10.77.0.1 and 10.77.0.3-5) runs `python -m http.server` and a DNS
responder (dnsmasq when installed, else a tiny Python one); namespace B (client,
10.77.0.2) runs nmap scans (SYN on all ports, connect, UDP, ping sweep), HTTP downloads
(thousands of small pages on fresh connections, some large files) and DNS queries.
tcpdump captures it all on A's veth with a 256-byte snaplen (wire lengths are kept), so
that over a million packets fit in a couple of hundred MB. Nothing leaves the namespaces.
Needs root, iproute2, tcpdump, nmap (ethtool to turn segmentation offload off).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from netns import NetnsPair, available

HERE = Path(__file__).resolve().parent
SERVER_EXTRA = ["10.77.0.3", "10.77.0.4", "10.77.0.5"]

# Client workloads, run with `python -c` inside namespace B.
HTTP_CLIENT = r"""
import sys, threading, urllib.request
base, n, nfiles = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def worker(k):
    for i in range(k, n, 8):
        try:
            urllib.request.urlopen(f"{base}/s{i % nfiles}.html", timeout=5).read()
        except Exception:
            pass
ts = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
[t.start() for t in ts]; [t.join() for t in ts]
"""

DNS_CLIENT = r"""
import random, socket, struct, sys
server, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(7)
words = ["mail", "www", "intranet", "pacs", "ehr", "lab", "api", "cdn", "update", "ntp"]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.2)
sent = 0
while sent < n:
    batch = min(32, n - sent)
    for _ in range(batch):
        if rnd.random() < 0.2:
            alnum = "abcdefghijklmnopqrstuvwxyz0123456789"
            name = "".join(rnd.choice(alnum) for _ in range(rnd.randint(10, 30)))
            name += ".example"
        else:
            name = f"{rnd.choice(words)}{rnd.randint(1, 500)}.hopital.example"
        q = struct.pack("!HHHHHH", rnd.getrandbits(16), 0x0100, 1, 0, 0, 0)
        q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"
        q += struct.pack("!HH", rnd.choice((1, 1, 1, 28, 16)), 1)
        s.sendto(q, (server, 53))
    sent += batch
    for _ in range(batch):
        try:
            s.recv(2048)
        except OSError:
            break
"""

# Fallback DNS responder (when dnsmasq is absent): answers every A query with one address.
DNS_SERVER = r"""
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
while True:
    q, peer = s.recvfrom(2048)
    if len(q) < 12:
        continue
    qd = q[12:]
    ans = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton("10.77.0.99")
    s.sendto(q[:2] + b"\x81\x80" + q[4:6] + b"\x00\x01\x00\x00\x00\x00" + qd + ans, peer)
"""


def make_site(root: Path, nfiles: int, big: int, big_mb: int) -> None:
    rnd = random.Random(1)
    for i in range(nfiles):
        (root / f"s{i}.html").write_bytes(
            b"<html><body>" + os.urandom(rnd.randint(100, 6000)).hex().encode()[:6000] + b"</body>"
        )
    for i in range(big):
        with open(root / f"big{i}.bin", "wb") as f:
            f.write(os.urandom(big_mb << 20))


def wait_port(ns: NetnsPair, host: str, port: int, udp: bool = False) -> None:
    probe = (
        f"import socket,time\nfor _ in range(100):\n"
        f"  try: socket.create_connection(('{host}',{port}),0.2).close(); break\n"
        f"  except OSError: time.sleep(0.1)"
    )
    if not udp:
        ns.run(ns.b, [sys.executable, "-c", probe], check=False)
    else:
        time.sleep(0.5)


def step(label: str, ns: NetnsPair, argv: list[str]) -> None:
    t = time.monotonic()
    ns.run(ns.b, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    print(f"  {label}: {time.monotonic() - t:.1f} s", flush=True)


def count_packets(path: Path) -> int:
    with open(path, "rb") as f:
        data = f.read()
    n, off = 0, 24
    while off + 16 <= len(data):
        caplen = struct.unpack_from("<I", data, off + 8)[0]
        off += 16 + caplen
        n += 1
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(HERE / "captures" / "mixed.pcap"))
    ap.add_argument("--scale", type=float, default=1.0, help="workload multiplier")
    ap.add_argument("--snaplen", type=int, default=256)
    args = ap.parse_args()
    if reason := available():
        print(f"make_capture: {reason}", file=sys.stderr)
        return 1
    for tool in ("tcpdump", "nmap"):
        if not shutil.which(tool):
            print(f"make_capture: {tool} is not installed (bench/setup.sh)", file=sys.stderr)
            return 1
    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    sc = args.scale
    nfiles = 2000
    with tempfile.TemporaryDirectory() as tmp, NetnsPair("cap", extra_a=SERVER_EXTRA) as ns:
        site = Path(tmp) / "www"
        site.mkdir()
        make_site(site, nfiles, big=4, big_mb=20)
        os.chmod(tmp, 0o755)
        procs = []
        try:
            tcpdump = ns.popen(
                ns.a,
                [
                    "tcpdump",
                    "-i",
                    ns.if_a,
                    "-nn",
                    "-s",
                    str(args.snaplen),
                    "-B",
                    "65536",
                    "-w",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            procs.append(tcpdump)
            http = [
                sys.executable,
                "-m",
                "http.server",
                "8080",
                "--bind",
                ns.addr_a,
                "-d",
                str(site),
            ]
            procs.append(ns.popen(ns.a, http, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            if shutil.which("dnsmasq"):
                dns = ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                       "--bind-interfaces", f"--listen-address={ns.addr_a}", "--user=root",
                       "--address=/#/10.77.0.99", "--cache-size=0", "--pid-file="]  # fmt: skip
            else:
                dns = [sys.executable, "-c", DNS_SERVER, ns.addr_a]
            procs.append(ns.popen(ns.a, dns, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_port(ns, ns.addr_a, 8080)
            time.sleep(1.0)  # tcpdump ready
            print(f"capturing to {out}", flush=True)
            targets = [ns.addr_a, *SERVER_EXTRA]
            nmap = ["nmap", "-n", "-Pn", "-T5", "--max-retries", "0"]
            step("nmap ping sweep", ns, ["nmap", "-n", "-sn", "10.77.0.0/24"])
            for _ in range(max(1, round(sc))):
                step("nmap SYN scan, all ports, 4 hosts", ns, [*nmap, "-sS", "-p-", *targets])
            step("nmap connect scan, top 1000", ns, [*nmap, "-sT", "--top-ports", "1000", *targets])
            step("nmap UDP scan, 300 ports", ns, [*nmap, "-sU", "-p", "1-300", ns.addr_a])
            base = f"http://{ns.addr_a}:8080"
            step("HTTP small pages", ns, [sys.executable, "-c", HTTP_CLIENT, base,
                                          str(int(20000 * sc)), str(nfiles)])  # fmt: skip
            for i in range(4):
                step(f"HTTP large file {i}", ns, ["curl", "-s", "-o", "/dev/null",
                                                   f"{base}/big{i}.bin"])  # fmt: skip
            step("DNS queries", ns, [sys.executable, "-c", DNS_CLIENT, ns.addr_a,
                                     str(int(120000 * sc))])  # fmt: skip
            time.sleep(1.0)
        finally:
            for p in reversed(procs):
                p.terminate()
            for p in procs:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        err = tcpdump.stderr.read().decode(errors="replace") if tcpdump.stderr else ""
        print(err.strip())
    n = count_packets(out)
    print(f"{out}: {n} packets, {out.stat().st_size / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
