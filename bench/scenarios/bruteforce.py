"""Password guessing recognised by protocol, not by port, and the sessions that must stay
quiet.

- hydra against sshd on port 2222 with MaxAuthTries 6 and 4 tasks: few connections, each
  trying six passwords inside its encrypted session (the case net.bruteforce was tuned on);
- held out, not tuned on: paramiko trying five passwords per connection on port 8022
  (bench/sshauth_client.py), and medusa (libssh2, a "none" probe before every password)
  on port 8022;
- quiet: an automation job logging in with its key every 2 s, each session succeeding at
  once (short sessions: counted by their shape, as on port 22 before, they would fire);
- PostgreSQL (a throwaway server run by the `postgres` user): hydra's postgres module (on
  5432: it ignores the port it is given) and a psql guessing loop on port 15432, counted
  by the server's SQLSTATE 28P01 answers; quiet: an application logging in with the right
  password twice a second;
- HTTP: hydra's http-get module against a page behind Basic authentication on port 8081,
  counted by the 401 answers to requests carrying credentials.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.livelab import ATTACKER_IP, SSHD, VICTIM_IP, Lab, Scenario, run, sshd, stop

ROOT = Path(__file__).resolve().parents[2]


def _sshd(lab: Lab, tmp: Path, port: int) -> subprocess.Popen:
    """OpenSSH in the victim namespace: passwords and keys (root, by key only, with the
    scenario's own authorized_keys file), MaxAuthTries 6."""
    work = tmp / f"sshd{port}"
    return sshd(
        lab, work, port,
        f"AuthorizedKeysFile {work / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        "MaxAuthTries 6\nLoginGraceTime 20\n",
    )  # fmt: skip


def _words(tmp: Path, n: int) -> Path:
    words = tmp / "words.txt"
    words.write_text("\n".join(f"guess{i:03d}" for i in range(n)) + "\n")
    return words


def _hydra_2222(lab: Lab, tmp: Path) -> subprocess.Popen:
    return lab.spawn(
        lab.attacker_cmd("hydra", "-l", "root", "-P", str(_words(tmp, 48)), "-t", "4", "-I",
                         f"ssh://{VICTIM_IP}:2222"),
        cwd=tmp,  # hydra writes its restore file here
    )  # fmt: skip


def _paramiko_8022(lab: Lab, tmp: Path) -> subprocess.Popen:
    plan = tmp / "plan.json"
    tries = [
        {"method": "password", "user": "root", "secrets": [f"try{c}{i}" for i in range(5)]}
        for c in range(4)
    ]
    plan.write_text(json.dumps(tries))
    return lab.spawn(
        lab.attacker_cmd(sys.executable, str(ROOT / "bench" / "sshauth_client.py"), VICTIM_IP,
                         "8022", str(plan), str(tmp / "truth.jsonl")),
    )  # fmt: skip


def _medusa_8022(lab: Lab, tmp: Path) -> subprocess.Popen:
    return lab.spawn(
        lab.attacker_cmd("medusa", "-h", VICTIM_IP, "-n", "8022", "-u", "root",
                         "-P", str(_words(tmp, 48)), "-M", "ssh", "-t", "2"),
    )  # fmt: skip


def _automation(lab: Lab, tmp: Path) -> subprocess.Popen:
    """An automation job: a key login running one command, every 2 s (a cron job's
    minute, compressed: 15 sessions in the 30 s watched, over the threshold had each one
    failed once, and each a short session), each session succeeding at once."""
    key = tmp / "job_key"
    ssh = (
        f"ssh -p 8022 -i {key} -o BatchMode=yes -o IdentitiesOnly=yes "
        f"-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null root@{VICTIM_IP}"
    )
    return lab.spawn(lab.attacker_cmd("sh", "-c", f"while true; do {ssh} uptime; sleep 2; done"))


def _sshd_2222(lab: Lab, tmp: Path) -> list[subprocess.Popen]:
    return [_sshd(lab, tmp, 2222)]


def _sshd_8022(lab: Lab, tmp: Path) -> list[subprocess.Popen]:
    return [_sshd(lab, tmp, 8022)]


def _sshd_job(lab: Lab, tmp: Path) -> list[subprocess.Popen]:
    proc = _sshd(lab, tmp, 8022)
    key = tmp / "job_key"
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    (tmp / "sshd8022" / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
    return [proc]


def _ssh_on(port: int):
    def check(a: dict) -> None:
        ent = {(e["kind"], e["value"]) for e in a["entities"]}
        assert ("port", str(port)) in ent and ("protocol", "ssh") in ent, a["entities"]
        assert a["metrics"]["ssh_attempts"] >= 10, a["metrics"]
        assert any(e["role"] == "source" for e in a["entities"])
        assert ATTACKER_IP not in json.dumps(a)  # internal addresses leave pseudonymised

    return check


SCENARIOS = [
    Scenario("hydra ssh 2222 MaxAuthTries 6 -t 4", "net.bruteforce", "hydra", _hydra_2222,
             needs=(SSHD,), setup=_sshd_2222, technique="T1110", check=_ssh_on(2222)),
    Scenario("paramiko ssh 8022 5 passwords per connection", "net.bruteforce", "ssh",
             _paramiko_8022, needs=(SSHD,), setup=_sshd_8022, technique="T1110",
             check=_ssh_on(8022)),
    Scenario("medusa ssh 8022", "net.bruteforce", "medusa", _medusa_8022, needs=(SSHD,),
             setup=_sshd_8022, technique="T1110", check=_ssh_on(8022)),
    Scenario("ssh automation job (key, succeeds)", None, "ssh", _automation, needs=(SSHD,),
             setup=_sshd_job, watch=30.0),
]  # fmt: skip


PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_PASSWORD = "Not-guessable-7"


def _postgres(port: int):
    def setup(lab: Lab, tmp: Path) -> list[subprocess.Popen]:
        """A throwaway PostgreSQL in the victim namespace, run by the `postgres` system
        user from a temporary data directory (the test's own is not reachable by that
        user), removed when the scenario stops its processes: passwords checked with
        SCRAM for every address of the lab."""
        work = Path(tempfile.mkdtemp(prefix="vigie-pg-"))
        work.chmod(0o755)
        # stopped after the server (play() stops them in order): removes the directory
        cleaner = subprocess.Popen(
            ["sh", "-c", f"trap 'rm -rf {work}; exit 0' TERM; while :; do sleep 1; done"]
        )
        pw = work / "pw"
        pw.write_text(PG_PASSWORD + "\n")
        data = work / "data"
        run("chown", "postgres", str(work), str(pw))
        run("runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(data),
            "-U", "postgres", "-A", "scram-sha-256", f"--pwfile={pw}", timeout=120)  # fmt: skip
        with open(data / "pg_hba.conf", "a") as f:
            f.write("host all all 10.200.0.0/24 scram-sha-256\n")
        proc = subprocess.Popen(
            lab.victim_cmd("runuser", "-u", "postgres", "--", str(PG_BIN / "postgres"),
                           "-D", str(data), "-k", str(work), "-p", str(port), "-h", VICTIM_IP),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(2.0)
        if proc.poll() is not None:
            stop(cleaner)
            raise RuntimeError(f"postgres did not start: {proc.stderr.read()}")
        return [proc, cleaner]

    return setup


def _hydra_postgres(lab: Lab, tmp: Path) -> subprocess.Popen:
    # hydra's postgres module connects to 5432 whatever port it is given
    return lab.spawn(
        lab.attacker_cmd("hydra", "-l", "postgres", "-P", str(_words(tmp, 60)), "-t", "4",
                         "-I", f"postgres://{VICTIM_IP}"),
        cwd=tmp,
    )  # fmt: skip


def _psql(port: int, password: str, gap: float):
    """psql logging in again and again: a guessing script (`password` with the attempt's
    number, $i, no pause) or an application's job (the right one, every `gap` s)."""

    def start(lab: Lab, tmp: Path) -> subprocess.Popen:
        loop = (
            f"i=0; while :; do i=$((i+1)); PGPASSWORD={password} PGCONNECT_TIMEOUT=5"
            f" psql -h {VICTIM_IP} -p {port} -U postgres -c 'select 1' postgres;"
            f" sleep {gap}; done"
        )
        return lab.spawn(lab.attacker_cmd("sh", "-c", loop))

    return start


def _pg_on(port: int, failures: int):
    """The alert names PostgreSQL and the port, and counts the server's 28P01 answers
    (hydra also opens a connection without a word before each logon: a short session,
    counted by port)."""

    def check(a: dict) -> None:
        ent = {(e["kind"], e["value"]) for e in a["entities"]}
        assert ("port", str(port)) in ent and ("protocol", "postgresql") in ent, a["entities"]
        assert a["metrics"]["protocol_failures"] >= failures, a["metrics"]

    return check


PG = str(PG_BIN / "postgres")
SCENARIOS += [
    Scenario("hydra postgres", "net.bruteforce", "hydra", _hydra_postgres, needs=(PG,),
             setup=_postgres(5432), technique="T1110", check=_pg_on(5432, 5)),
    Scenario("psql guessing 15432", "net.bruteforce", "psql", _psql(15432, "guess$i", 0.0),
             needs=(PG,), setup=_postgres(15432), technique="T1110", check=_pg_on(15432, 10)),
    Scenario("postgres application logins (succeed)", None, "psql",
             _psql(5432, PG_PASSWORD, 0.5), needs=(PG,), setup=_postgres(5432), watch=20.0),
]  # fmt: skip


BASIC_SERVER = """
import base64, http.server, socketserver, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        want = "Basic " + base64.b64encode(b"admin:Not-guessable-7").decode()
        ok = self.headers.get("Authorization") == want
        body = b"welcome\\n" if ok else b"denied\\n"
        self.send_response(200 if ok else 401)
        if not ok:
            self.send_header("WWW-Authenticate", 'Basic realm="admin"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
# socketserver's, not http.server's: that one looks its own name up in the DNS first
socketserver.ThreadingTCPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
"""


def _basic_server(lab: Lab, tmp: Path) -> list[subprocess.Popen]:
    """An administration page behind HTTP Basic authentication on port 8081."""
    proc = subprocess.Popen(
        lab.victim_cmd(sys.executable, "-c", BASIC_SERVER, VICTIM_IP, "8081"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1.0)
    if proc.poll() is not None:
        raise RuntimeError(f"HTTP server did not start: {proc.stderr.read()}")
    return [proc]


def _hydra_http(lab: Lab, tmp: Path) -> subprocess.Popen:
    return lab.spawn(
        lab.attacker_cmd("hydra", "-l", "admin", "-P", str(_words(tmp, 60)), "-t", "4",
                         "-s", "8081", "-I", f"http-get://{VICTIM_IP}/admin/"),
        cwd=tmp,
    )  # fmt: skip


def _http_check(a: dict) -> None:
    ent = {(e["kind"], e["value"]) for e in a["entities"]}
    assert ("port", "8081") in ent and ("protocol", "http") in ent, a["entities"]
    assert a["metrics"]["protocol_failures"] >= 10, a["metrics"]


SCENARIOS.append(
    Scenario("hydra http-get basic auth 8081", "net.bruteforce", "hydra", _hydra_http,
             setup=_basic_server, technique="T1110", check=_http_check)
)  # fmt: skip
