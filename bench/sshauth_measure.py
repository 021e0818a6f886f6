"""How well net.bruteforce infers SSH authentication attempts and their outcome from the
sizes and directions of the encrypted packets (agent/engine/authsvc.c records them,
agent/detect/sshauth.py reads them), measured on real sshd sessions.

    bench/sshauth_measure.py record DIR   # as root: sessions against sshd in the lab
    bench/sshauth_measure.py score DIR... # the confusion table over recorded sessions

`record` starts OpenSSH's sshd (PAM on, keyboard-interactive on, MaxAuthTries 6, port
2222) in the lab's victim namespace for a temporary system user (deleted afterwards),
captures the victim's interface, and runs paramiko sessions with exact ground truth
(bench/sshauth_client.py: password right and wrong, several per connection; publickey
accepted and refused; keyboard-interactive right and wrong), then hydra, then OpenSSH's
own client. Truth for the tools that do not report it comes from sshd's VERBOSE log
("Failed password ... port N", "Accepted ... port N"). DIR gets sessions.pcap and
truth.jsonl (one line per client port).

`score` replays each DIR/sessions.pcap through the engine and compares, per client port,
what was inferred with the truth, per method: attempts exact / off, success right/wrong.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

USER = "vgsshauth"
PASSWORD = "Right-horse-9"


def record(out: Path) -> None:
    from bench.livelab import ATTACKER_IP, SSHD, VICTIM_IP, Lab, run, stop

    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sshauth-"))
    work.chmod(0o755)  # the user's home is inside: sshd reads its authorized_keys as the user
    home = work / "home"
    run("useradd", "--system", "--no-create-home", "-d", str(home), "-s", "/bin/sh", USER)
    procs: list[subprocess.Popen] = []
    lab = Lab("sa").up()
    try:
        subprocess.run(["chpasswd"], input=f"{USER}:{PASSWORD}\n", text=True, check=True)
        (home / ".ssh").mkdir(parents=True)
        good, bad = work / "good", work / "bad"
        for k in (good, bad):
            run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(k))
        (home / ".ssh" / "authorized_keys").write_text((work / "good.pub").read_text())
        os.system(f"chown -R {USER} {home}")
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "host"))
        conf = work / "sshd_config"
        conf.write_text(
            f"ListenAddress {VICTIM_IP}\nPort 2222\nHostKey {work / 'host'}\n"
            f"PidFile {work / 'sshd.pid'}\nUsePAM yes\nPasswordAuthentication yes\n"
            "KbdInteractiveAuthentication yes\nPubkeyAuthentication yes\nMaxAuthTries 6\n"
            "StrictModes no\nMaxStartups 100:30:200\nLogLevel VERBOSE\n"
            # another cipher and MAC (other packet sizes), to test on a server not tuned on
            + os.environ.get("SSHD_EXTRA", "").replace("\\n", "\n")
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        with open(work / "sshd.log", "w") as log:
            procs.append(
                subprocess.Popen(lab.victim_cmd(SSHD, "-D", "-e", "-f", str(conf)), stderr=log)
            )
        pcap = out / "sessions.pcap"
        procs.append(
            subprocess.Popen(
                lab.victim_cmd("tcpdump", "-i", lab.vif, "-s", "0", "-U", "-w", str(pcap),
                               "tcp port 2222"),
                stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
        time.sleep(1.5)
        wrong = [f"wrong{i}" for i in range(8)]
        plan = []
        for k in range(6):  # k wrong passwords, then the right one (k=6: never)
            plan.append(
                {"method": "password", "user": USER,
                 "secrets": wrong[:k] + ([PASSWORD] if k < 6 else [])}
            )  # fmt: skip
        plan.append({"method": "password", "user": USER, "secrets": wrong[:8]})
        plan.append({"method": "password", "user": "nosuchuser", "secrets": wrong[:3]})
        plan.append({"method": "publickey", "user": USER, "secrets": [str(good)]})
        plan.append({"method": "publickey", "user": USER, "secrets": [str(bad)]})
        plan.append({"method": "publickey", "user": USER, "secrets": [str(bad), str(good)]})
        plan.append({"method": "keyboard-interactive", "user": USER, "secrets": [PASSWORD]})
        plan.append({"method": "keyboard-interactive", "user": USER, "secrets": wrong[:2]})
        plan.append(
            {"method": "keyboard-interactive", "user": USER, "secrets": [*wrong[:2], PASSWORD]}
        )
        (work / "plan.json").write_text(json.dumps(plan))
        truth = work / "truth_client.jsonl"
        py = str(ROOT / ".venv" / "bin" / "python")
        subprocess.run(
            lab.attacker_cmd(py, str(ROOT / "bench" / "sshauth_client.py"), VICTIM_IP, "2222",
                             str(work / "plan.json"), str(truth)),
            check=True, timeout=300,
        )  # fmt: skip
        words = work / "words.txt"
        words.write_text("\n".join(f"guess{i:03d}" for i in range(40)) + "\n")
        subprocess.run(
            lab.attacker_cmd("hydra", "-l", USER, "-P", str(words), "-t", "4", "-I",
                             f"ssh://{VICTIM_IP}:2222"),
            cwd=work, capture_output=True, timeout=300,
        )  # fmt: skip
        # OpenSSH's client: a key that works, then password with sshpass when present
        ssh = ["ssh", "-p", "2222", "-o", "StrictHostKeyChecking=no",
               "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"]  # fmt: skip
        subprocess.run(lab.attacker_cmd(*ssh, "-i", str(good), f"{USER}@{VICTIM_IP}", "true"),
                       capture_output=True, timeout=60)  # fmt: skip
        subprocess.run(lab.attacker_cmd(*ssh, "-i", str(bad), f"{USER}@{VICTIM_IP}", "true"),
                       capture_output=True, timeout=60)  # fmt: skip
        if subprocess.run(["which", "sshpass"], capture_output=True).returncode == 0:
            for pw in (PASSWORD, "wrong-one"):
                subprocess.run(
                    lab.attacker_cmd("sshpass", "-p", pw, "ssh", *ssh[1:-2],
                                     "-o", "PubkeyAuthentication=no",
                                     "-o", "NumberOfPasswordPrompts=3",
                                     f"{USER}@{VICTIM_IP}", "true"),
                    capture_output=True, timeout=60,
                )  # fmt: skip
        if subprocess.run(["which", "medusa"], capture_output=True).returncode == 0:
            subprocess.run(
                lab.attacker_cmd("medusa", "-h", VICTIM_IP, "-n", "2222", "-u", USER,
                                 "-P", str(words), "-M", "ssh", "-t", "2"),
                capture_output=True, timeout=300,
            )  # fmt: skip
        if subprocess.run(["which", "ncrack"], capture_output=True).returncode == 0:
            subprocess.run(
                lab.attacker_cmd("ncrack", "-T", "3", "--user", USER, "-P", str(words),
                                 f"ssh://{VICTIM_IP}:2222"),
                capture_output=True, timeout=300,
            )  # fmt: skip
        time.sleep(1.5)
    finally:
        for p in procs:
            stop(p)
        lab.down()
        subprocess.run(["userdel", USER], capture_output=True)
    client = {}
    for line in truth.read_text().splitlines():
        r = json.loads(line)
        r["tool"] = "paramiko"
        client[r["port"]] = r
    rows = dict(client)
    # sshd's log for every other client
    per: dict[int, dict] = {}
    for line in (work / "sshd.log").read_text().splitlines():
        m = re.search(r"(Failed|Accepted) (\S+) for (?:invalid user )?\S+ from "
                      + re.escape(ATTACKER_IP) + r" port (\d+)", line)  # fmt: skip
        if not m:
            continue
        port = int(m.group(3))
        method = m.group(2).split("/")[0]
        r = per.setdefault(port, {"port": port, "method": method, "attempts": 0,
                                  "success": False, "tool": "sshd-log"})  # fmt: skip
        r["attempts"] += 1
        if m.group(1) == "Accepted":
            r["success"] = True
    for port, r in per.items():
        if port not in rows:
            rows[port] = r
    with open(out / "truth.jsonl", "w") as f:
        for port in sorted(rows):
            f.write(json.dumps(rows[port]) + "\n")
    (out / "sshd.log").write_text((work / "sshd.log").read_text())
    print(f"recorded {len(rows)} sessions into {out}")


def clients(pcap: Path) -> dict[int, str]:
    """Per client port, the client software its SSH banner names (paramiko_3.5.1 ...)."""
    from agent.capture.pcapfile import read_capture
    from agent.engine import decode

    out = {}
    for ts, lt, wl, frame in read_capture(pcap):
        p = decode(ts, lt, wl, frame)[0]
        if p is not None and p.payload.startswith(b"SSH-") and p.dport == 2222:
            soft = p.payload.split(b"\r")[0].split(b"\n")[0].decode("ascii", "replace")
            out[p.sport] = soft.split("-", 2)[-1].split(" ")[0]
    return out


def infer(pcap: Path) -> dict[int, tuple[int, bool, tuple[int, ...]]]:
    """Per client port: (attempts, success, sizes) inferred from the capture."""
    from agent.capture.pcapfile import read_capture
    from agent.detect.sshauth import infer_auth
    from agent.engine import EV_END, Engine

    eng = Engine(max_flows=10000)
    eng.configure(ends=1)
    eng.configure_auth(True)
    out = {}
    for ts, lt, wl, frame in read_capture(pcap):
        eng.feed(ts, lt, wl, frame)
    eng.flush()
    for ev in eng.events():
        if ev[0] == EV_END and ev[1].service == "ssh":
            sizes = ev[1].ssh_sizes
            r = infer_auth(sizes)
            out[ev[1].sport] = (r.attempts, r.success, sizes)
    return out


def score(dirs: list[Path], verbose: bool = False) -> dict:
    table: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for d in dirs:
        got = infer(d / "sessions.pcap")
        soft = clients(d / "sessions.pcap")
        truth = [json.loads(line) for line in (d / "truth.jsonl").read_text().splitlines()]
        known = {t["port"] for t in truth}
        # sessions sshd logged no attempt for (a "none" probe, then goodbye): truth 0
        truth += [
            {"port": p, "method": "no attempt", "attempts": 0, "success": False}
            for p in got
            if p not in known
        ]
        for t in truth:
            key = f"{t['method']} ({soft.get(t['port'], '?')})"
            row = table[key]
            row["sessions"] += 1
            row["attempts_true"] += t["attempts"]
            g = got.get(t["port"])
            if g is None:
                row["missed"] += 1
                continue
            n, ok, sizes = g
            row["attempts_inferred"] += n
            row["attempts_exact"] += n == t["attempts"]
            row["success_right"] += ok == t["success"]
            if verbose and (n != t["attempts"] or ok != t["success"]):
                print(f"  {key} port {t['port']}: true {t['attempts']}/{t['success']}"
                      f" inferred {n}/{ok} sizes {sizes}")  # fmt: skip
    print(f"{'method (client)':34} {'sessions':>8} {'attempts true':>13} {'inferred':>8} "
          f"{'exact':>6} {'success right':>13}")  # fmt: skip
    for key in sorted(table):
        r = table[key]
        print(
            f"{key:34} {r['sessions']:>8} {r['attempts_true']:>13} "
            f"{r['attempts_inferred']:>8} {r['attempts_exact']:>6} {r['success_right']:>13}"
        )
    return {k: dict(v) for k, v in table.items()}


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "record":
        record(Path(sys.argv[2]))
    elif len(sys.argv) >= 3 and sys.argv[1] == "score":
        score([Path(p) for p in sys.argv[2:]], verbose=os.environ.get("VERBOSE") == "1")
    else:
        sys.exit(__doc__)
