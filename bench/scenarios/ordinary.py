"""Ordinary traffic around every live scenario, and one scenario of ordinary traffic alone.

`ordinary(lab, tmp)` keeps the victim's namespace busy the way a hospital server is while
an attack happens: it downloads files over HTTP from a server outside (OUTSIDE_IP,
python's http.server in the attacker namespace), resolves names through a small DNS
responder on the segment (ATTACKER_IP, the site's resolver: A records, NXDOMAIN for a few
typos) and logs in over SSH with a key to a server outside (OpenSSH on OUTSIDE_IP:22),
running a command whose output varies. Each activity is a Poisson process (exponential
gaps) with varied sizes: what people and ordinary jobs do, not a fixed timer, which would
itself be a beacon. bench/livelab.play runs it as `background=` for every scenario
(tests/test_scenarios_live.py, bench/detections.py); detectors must catch the attack
through it and raise nothing for it.

The processes it starts are returned for play() to stop. While they run, a second call
for the same lab starts nothing more (the quiet scenario below starts it itself, so it is
never an empty check, and the background then adds nothing).

Run as a module, it is the two helpers the namespaces run:
    python -m bench.scenarios.ordinary dns ADDRESS
    python -m bench.scenarios.ordinary client --resolver IP --server IP --key FILE
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import weakref
from pathlib import Path

from bench.livelab import ATTACKER_IP, OUTSIDE_IP, SSHD, Lab, Scenario, run, sshd

ROOT = Path(__file__).resolve().parents[2]
# Names the victim resolves (ordinary: its own services, updates, partners) and the few
# typos a person makes, answered NXDOMAIN.
NAMES = (
    "www.debian.org", "deb.debian.org", "security.debian.org", "ntp.ubuntu.com",
    "sante.gouv.fr", "annuaire.sante.fr", "www.ameli.fr", "esante.gouv.fr",
    "pacs.chu-exemple.lan", "dpi.chu-exemple.lan", "mail.chu-exemple.fr",
    "www.wikipedia.org", "fr.wikipedia.org", "www.google.com", "login.microsoftonline.com",
    "ocsp.digicert.com", "crl.usertrust.com", "github.com", "pypi.org", "files.pythonhosted.org",
)  # fmt: skip
TYPOS = ("www.debain.org", "santee.gouv.fr", "wikipdia.org", "gihtub.com")
# Files served for download (name, bytes): small pages to a few MB.
FILES = (("index.html", 6_000), ("doc.pdf", 240_000), ("update.deb", 1_300_000),
         ("image.bin", 3_500_000))  # fmt: skip
# Mean seconds between two of each activity.
MEAN_GAP = {"dns": 1.5, "http": 4.0, "ssh": 6.0}

STATS = "stats.json"  # the client's counts, in tmp/ordinary/

_running: weakref.WeakKeyDictionary[Lab, list[subprocess.Popen]] = weakref.WeakKeyDictionary()


def ordinary(lab: Lab, tmp: Path) -> list[subprocess.Popen]:
    """Start the ordinary traffic (servers, then the victim's client); the processes to
    stop afterwards. Nothing new when this lab already has it running."""
    if any(p.poll() is None for p in _running.get(lab, ())):
        return []
    missing = [t for t in (SSHD, "ssh", "ssh-keygen") if not shutil.which(t)]
    if missing:
        raise RuntimeError(f"ordinary traffic needs {', '.join(missing)} (./dev installs them)")
    work = tmp / "ordinary"
    (work / "www").mkdir(parents=True, exist_ok=True)
    rng = random.Random()
    for name, size in FILES:
        f = work / "www" / name
        if not f.exists():
            f.write_bytes(rng.randbytes(size))
    key = work / "client_ed25519"
    if not key.exists():
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_module(lab.attacker_cmd, "dns", ATTACKER_IP))
        procs.append(
            lab.spawn(lab.attacker_cmd(sys.executable, "-m", "http.server", "80",
                                       "--bind", OUTSIDE_IP, "--directory", str(work / "www")))
        )  # fmt: skip
        procs.append(_sshd(lab, work, key.with_suffix(".pub")))
        procs.append(
            _module(lab.victim_cmd, "client", "--resolver", ATTACKER_IP,
                    "--server", OUTSIDE_IP, "--key", str(key), "--stats", str(work / STATS))
        )  # fmt: skip
        time.sleep(0.5)
        dead = [p.args for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"ordinary traffic did not start: {dead}")
    except BaseException:
        for p in procs:
            p.kill()
            p.wait()
        raise
    _running[lab] = procs
    return list(procs)


def results(tmp: Path) -> dict[str, int]:
    """What the victim's ordinary activity achieved so far, per kind ("ssh_ok",
    "ssh_failed", "http_ok"...), for the run started with this `tmp`."""
    try:
        return json.loads((tmp / "ordinary" / STATS).read_text())
    except FileNotFoundError:
        return {}


def _module(wrap, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        wrap(sys.executable, "-m", "bench.scenarios.ordinary", *args),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _sshd(lab: Lab, work: Path, pub: Path) -> subprocess.Popen:
    """OpenSSH on OUTSIDE_IP:22 in the attacker namespace, key logins only."""
    keys = work / "authorized_keys"
    work.mkdir(parents=True, exist_ok=True)
    keys.write_text(pub.read_text())
    return sshd(
        lab, work, 22,
        f"AuthorizedKeysFile {keys}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n",
        address=OUTSIDE_IP,
    )  # fmt: skip


# The quiet scenario: ordinary traffic alone ------------------------------------------------


def _alone(lab: Lab, tmp: Path) -> subprocess.Popen:
    # The traffic itself is setup's (or the background's); the "tool" only marks time.
    return lab.spawn(lab.victim_cmd("sleep", "600"))


SCENARIOS = [
    Scenario("ordinary traffic", None, "ssh", _alone, needs=(SSHD,), setup=ordinary,
             watch=20.0),
]  # fmt: skip


# The helpers, run inside the namespaces ----------------------------------------------------


def _dns_server(address: str) -> None:
    """A resolver for the victim: A records for every name (OUTSIDE_IP), NXDOMAIN for
    the typos, an empty answer for other types."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 53))
    answer_ip = socket.inet_aton(OUTSIDE_IP)
    typos = {t.encode() for t in TYPOS}
    while True:
        data, peer = sock.recvfrom(2048)
        if len(data) < 17 or data[2] & 0x80:
            continue
        end, labels = 12, []
        while end < len(data) and data[end]:
            labels.append(data[end + 1 : end + 1 + data[end]])
            end += 1 + data[end]
        end += 5  # the zero label, type, class
        if end > len(data):
            continue
        qtype = int.from_bytes(data[end - 4 : end - 2], "big")
        question = data[12:end]
        name = b".".join(labels).lower()
        if name in typos:
            flags, answers = 0x8183, b""
        elif qtype == 1:
            flags = 0x8180
            answers = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + answer_ip
        else:
            flags, answers = 0x8180, b""
        head = data[:2] + flags.to_bytes(2, "big") + b"\x00\x01"
        head += (1 if answers else 0).to_bytes(2, "big") + b"\x00\x00\x00\x00"
        sock.sendto(head + question + answers, peer)


def _query(name: str) -> bytes:
    qid = random.getrandbits(16).to_bytes(2, "big")
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    return qid + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + qname + b"\x00\x01\x00\x01"


def _client(resolver: str, server: str, key: str, stats: str) -> None:
    """The victim's activity until SIGTERM; what succeeded and failed, per kind, kept in
    the JSON file `stats` (rewritten whole after each)."""
    stop = threading.Event()
    children: list[subprocess.Popen] = []
    counts = {f"{k}_{r}": 0 for k in MEAN_GAP for r in ("ok", "failed")}
    lock = threading.Lock()

    def end(*_: object) -> None:
        stop.set()
        for c in list(children):
            c.kill()
        sys.exit(0)

    signal.signal(signal.SIGTERM, end)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def dns() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(1.0)
            name = random.choice(TYPOS) if random.random() < 0.05 else random.choice(NAMES)
            s.sendto(_query(name), (resolver, 53))
            reply = s.recv(2048)
            if len(reply) < 12 or not reply[2] & 0x80:
                raise ValueError("not a DNS answer")

    def http() -> None:
        name = random.choice(FILES)[0]
        with opener.open(f"http://{server}/{name}", timeout=10) as r:
            if len(r.read()) != dict(FILES)[name]:
                raise ValueError("short download")

    def ssh() -> None:
        size = random.randint(2_000, 150_000)  # a command's output: a log tail, a listing
        cmd = ["ssh", "-i", key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
               "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5",
               f"root@{server}", f"head -c {size} /dev/urandom | base64"]  # fmt: skip
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        children.append(p)
        try:
            if p.wait(30) != 0:
                raise RuntimeError(f"ssh exited {p.returncode}")
        finally:
            children.remove(p)

    def loop(what: str, act) -> None:
        while not stop.is_set():
            try:
                act()
                result = "ok"
            except Exception:  # a server not up yet, a lost reply: ordinary too
                result = "failed"
            with lock:
                counts[f"{what}_{result}"] += 1
                tmp = Path(f"{stats}.tmp")
                tmp.write_text(json.dumps(counts))
                tmp.replace(stats)
            stop.wait(random.expovariate(1 / MEAN_GAP[what]))

    for what, act in (("dns", dns), ("http", http), ("ssh", ssh)):
        threading.Thread(target=loop, args=(what, act), daemon=True).start()
    while not stop.is_set():
        time.sleep(1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="ordinary traffic helpers (in a namespace)")
    sub = ap.add_subparsers(dest="what", required=True)
    d = sub.add_parser("dns", help="the DNS responder")
    d.add_argument("address")
    c = sub.add_parser("client", help="the victim's ordinary activity")
    c.add_argument("--resolver", required=True)
    c.add_argument("--server", required=True)
    c.add_argument("--key", required=True)
    c.add_argument("--stats", required=True, help="JSON file of successes and failures")
    args = ap.parse_args(argv)
    if args.what == "dns":
        _dns_server(args.address)
    else:
        _client(args.resolver, args.server, args.key, args.stats)


if __name__ == "__main__":
    main()
