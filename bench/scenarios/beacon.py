"""Beaconing (net.beacon, T1071): a C2 agent checking in on a jittered timer, and the
periodic benign traffic that must stay quiet beside it: a throttled download fetched piece
by piece, a software-update poll shared by several hosts, NTP.

Every server is in the attacker namespace on the "outside" address (OUTSIDE_IP, port 8080
for HTTP: port 80 there is the ordinary traffic's); the victim is inside. Extra inside
hosts for the shared polls are addresses added to the victim's interface (POLLERS).

A beacon is caught by its timer, which takes check-ins to see: a 3 s +- 50 % sleep needs
about 15 (`min_jittered_connections` scaled by the jitter seen), so its scenario watches
for 90 s, not the 10 s of a scan. The longer cases are `slow`.

Run as a module, the helpers the namespaces run:
    python -m bench.scenarios.beacon beacon URL --sleep 3 --jitter 0.5
    python -m bench.scenarios.beacon poll URL --sources IP,IP --every 5
    python -m bench.scenarios.beacon ntp-server ADDRESS
    python -m bench.scenarios.beacon ntp-clients SERVER --sources IP,IP --every 4
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from bench.livelab import OUTSIDE_IP, Lab, Scenario, run

ROOT = Path(__file__).resolve().parents[2]
PORT = 8080
URL = f"http://{OUTSIDE_IP}:{PORT}"
POLLERS = [f"10.200.0.{51 + i}" for i in range(8)]  # inside hosts sharing one service


def _module(wrap, *args: str) -> list[str]:
    return wrap(sys.executable, "-m", "bench.scenarios.beacon", *args)


def _www(lab: Lab, tmp: Path) -> list[subprocess.Popen]:
    """python's http.server on OUTSIDE_IP:8080: a small page, and a 512 KB file."""
    www = tmp / "www"
    www.mkdir(parents=True, exist_ok=True)
    (www / "index.html").write_text("<html>ok</html>\n")
    (www / "big.bin").write_bytes(random.Random(5).randbytes(512 * 1024))
    proc = lab.spawn(
        lab.attacker_cmd(sys.executable, "-m", "http.server", str(PORT), "--bind", OUTSIDE_IP,
                         "--directory", str(www))
    )  # fmt: skip
    time.sleep(0.5)
    return [proc]


def _pollers(lab: Lab, tmp: Path) -> list[subprocess.Popen]:
    for ip in POLLERS:
        run("ip", "-n", lab.victim, "addr", "replace", f"{ip}/24", "dev", lab.vif)
    return []


def _beacon(sleep: float, jitter: float):
    def start(lab: Lab, tmp: Path) -> subprocess.Popen:
        return subprocess.Popen(
            _module(lab.victim_cmd, "beacon", f"{URL}/index.html", "--sleep", str(sleep),
                    "--jitter", str(jitter)),
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    return start


def _ranged_download(lab: Lab, tmp: Path) -> subprocess.Popen:
    # curl asks for a 512 KB range at 400 KB/s, pauses, asks for the next: a throttled
    # background download (http.server ignores Range: each answer is the 512 KB file).
    script = (
        "i=0; while :; do "
        f"curl -s --limit-rate 400k -r $((i*524288))-$((i*524288+524287)) -o /dev/null "
        f"{URL}/big.bin; i=$((i+1)); sleep 6; done"
    )
    return lab.spawn(lab.victim_cmd("sh", "-c", script))


def _update_poll(lab: Lab, tmp: Path) -> subprocess.Popen:
    return subprocess.Popen(
        _module(lab.victim_cmd, "poll", f"{URL}/index.html", "--sources", ",".join(POLLERS),
                "--every", "5"),
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _ntp_server(lab: Lab, tmp: Path) -> list[subprocess.Popen]:
    procs = _pollers(lab, tmp)
    procs.append(
        subprocess.Popen(_module(lab.attacker_cmd, "ntp-server", OUTSIDE_IP), cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    )  # fmt: skip
    time.sleep(0.5)
    return procs


def _ntp_clients(lab: Lab, tmp: Path) -> subprocess.Popen:
    return subprocess.Popen(
        _module(lab.victim_cmd, "ntp-clients", OUTSIDE_IP, "--sources", ",".join(POLLERS),
                "--every", "4"),
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _beacon_check(a: dict) -> None:
    assert {"kind": "ip", "value": OUTSIDE_IP}.items() <= next(
        e for e in a["entities"] if e["role"] == "indicator"
    ).items()
    assert a["metrics"]["interval_median_seconds"] > 1.5


def _www_and_pollers(lab: Lab, tmp: Path) -> list[subprocess.Popen]:
    return _pollers(lab, tmp) + _www(lab, tmp)


SCENARIOS = [
    Scenario("python beacon 3 s +- 50 %", "net.beacon", "python3", _beacon(3.0, 0.5),
             setup=_www, watch=90.0, technique="T1071", check=_beacon_check),
]  # fmt: skip

# Minutes each: run with -m slow.
SLOW = [
    Scenario("python beacon 10 s +- 40 %", "net.beacon", "python3", _beacon(10.0, 0.4),
             setup=_www, watch=240.0, technique="T1071", check=_beacon_check, slow=True),
    Scenario("curl ranged download with pauses", None, "curl", _ranged_download,
             setup=_www, watch=120.0, slow=True),
    Scenario("update poll from 8 hosts every 5 s", None, "python3", _update_poll,
             setup=_www_and_pollers, watch=90.0, slow=True),
    # Port 123 is scored here (it is not by default): the shared server keeps it quiet.
    Scenario("NTP from 8 hosts every 4 s", None, "python3", _ntp_clients, setup=_ntp_server,
             watch=90.0, slow=True,
             config="[detectors.beacon]\nignore_ports = [53, 5353]\n"),
]  # fmt: skip


# The helpers, run inside the namespaces ----------------------------------------------------


def _beacon_loop(url: str, sleep: float, jitter: float) -> None:
    """A C2 agent's loop: check in, sleep N s +- jitter (uniform), as Cobalt Strike and
    Sliver do."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while True:
        with contextlib.suppress(Exception), opener.open(url, timeout=5) as r:
            r.read()
        time.sleep(sleep * random.uniform(1 - jitter, 1 + jitter))


def _poll_loop(url: str, sources: list[str], every: float) -> None:
    """Each source polls the update URL every `every` s (+-2 %), from its own address."""
    u = urlsplit(url)

    def one(src: str) -> None:
        time.sleep(random.uniform(0, every))
        while True:
            with contextlib.suppress(Exception):
                c = http.client.HTTPConnection(u.hostname, u.port, timeout=5,
                                               source_address=(src, 0))  # fmt: skip
                c.request("GET", u.path, headers={"User-Agent": "updater/1.0"})
                c.getresponse().read()
                c.close()
            time.sleep(every * random.uniform(0.98, 1.02))

    for s in sources:
        threading.Thread(target=one, args=(s,), daemon=True).start()
    while True:
        time.sleep(1)


def _ntp_serve(address: str) -> None:
    """An NTP server: a mode 4 answer to every mode 3 request."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 123))
    while True:
        data, peer = sock.recvfrom(512)
        if len(data) < 48 or data[0] & 7 != 3:
            continue
        now = time.time() + 2_208_988_800  # NTP era 0
        stamp = struct.pack("!II", int(now), int((now % 1) * 2**32))
        head = bytes([0x24, 2, data[2], 0xE9]) + b"\0" * 8 + b"GPS\0"
        sock.sendto(head + stamp + data[40:48] + stamp + stamp, peer)


def _ntp_loop(server: str, sources: list[str], every: float) -> None:
    """Each source asks the server the time every `every` s, from port 123 as ntpd does."""

    def one(src: str) -> None:
        time.sleep(random.uniform(0, every))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((src, 123))
            s.settimeout(2)
            while True:
                now = time.time() + 2_208_988_800
                req = bytes([0x23, 0, 6, 0xEC]) + b"\0" * 36
                req += struct.pack("!II", int(now), int((now % 1) * 2**32))
                with contextlib.suppress(OSError):
                    s.sendto(req, (server, 123))
                    s.recv(512)
                time.sleep(every * random.uniform(0.99, 1.01))

    for s in sources:
        threading.Thread(target=one, args=(s,), daemon=True).start()
    while True:
        time.sleep(1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="beaconing scenario helpers (in a namespace)")
    sub = ap.add_subparsers(dest="what", required=True)
    b = sub.add_parser("beacon", help="a C2 agent's check-in loop")
    b.add_argument("url")
    b.add_argument("--sleep", type=float, required=True)
    b.add_argument("--jitter", type=float, default=0.0)
    p = sub.add_parser("poll", help="an update poll from several hosts")
    p.add_argument("url")
    p.add_argument("--sources", required=True)
    p.add_argument("--every", type=float, required=True)
    n = sub.add_parser("ntp-server", help="an NTP server")
    n.add_argument("address")
    c = sub.add_parser("ntp-clients", help="NTP clients on several hosts")
    c.add_argument("server")
    c.add_argument("--sources", required=True)
    c.add_argument("--every", type=float, required=True)
    args = ap.parse_args(argv)
    if args.what == "beacon":
        _beacon_loop(args.url, args.sleep, args.jitter)
    elif args.what == "poll":
        _poll_loop(args.url, args.sources.split(","), args.every)
    elif args.what == "ntp-server":
        _ntp_serve(args.address)
    else:
        _ntp_loop(args.server, args.sources.split(","), args.every)


if __name__ == "__main__":
    main()
