"""SSH sessions with known authentication attempts and outcome, for measuring how well
net.bruteforce infers them from packet sizes (bench/sshauth_measure.py runs this in the
attacker namespace of the live lab).

Usage: sshauth_client.py HOST PORT PLAN.json TRUTH.json. PLAN is a list of sessions, each
{"method": "password" | "publickey" | "keyboard-interactive", "user": ...,
"secrets": [password or key file, ...], "right": the one that works or null}; the secrets
are tried in order on one connection until one is accepted or the server disconnects.
TRUTH gets one line per session: the client port, the attempts the client really made
(each answered or not), whether one succeeded.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import paramiko


def session(host: str, port: int, s: dict) -> dict:
    sock = socket.create_connection((host, port), timeout=10)
    cport = sock.getsockname()[1]
    t = paramiko.Transport(sock)
    attempts, ok = 0, False
    try:
        t.start_client(timeout=10)
        for secret in s["secrets"]:
            if not t.is_active():
                break
            attempts += 1
            try:
                if s["method"] == "password":
                    t.auth_password(s["user"], secret, fallback=False)
                elif s["method"] == "publickey":
                    t.auth_publickey(s["user"], paramiko.Ed25519Key.from_private_key_file(secret))
                else:
                    t.auth_interactive(
                        s["user"], lambda _t, _i, prompts, pw=secret: [pw] * len(prompts)
                    )
                ok = True
                break
            except paramiko.AuthenticationException:
                continue
            except (paramiko.SSHException, EOFError, OSError):
                # the server hung up (MaxAuthTries): this attempt was made all the same
                break
        if ok:
            ch = t.open_session()
            ch.exec_command("true")
            ch.recv_exit_status()
            ch.close()
    finally:
        t.close()
    return {"port": cport, "method": s["method"], "attempts": attempts, "success": ok}


def main() -> None:
    host, port, plan, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    rows = []
    for s in json.loads(Path(plan).read_text()):
        rows.append(session(host, port, s))
        time.sleep(0.3)
    with open(out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
