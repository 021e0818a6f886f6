"""Log lines into events, on lines the real programs wrote (tests/data/logs/README.md)."""

from __future__ import annotations

import io
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

from agent.cli import main
from agent.logs.parse import Parser, ParseStats
from agent.logs.reader import read_files
from common import logs

DATA = Path(__file__).parent / "data" / "logs"


def events(name: str):
    stats = ParseStats()
    return read_files([str(DATA / name)], stats), stats


def test_openssh_with_pam_every_line_read():
    evs, st = events("openssh-9.2-pam.log")
    assert st.unmatched == st.other == st.malformed == 0
    c = Counter((e.outcome, e.user, e.method) for e in evs)
    # hydra: 7 wrong passwords for the account (3 + 3 + 1), then the right one.
    assert c[("failure", "vigieh5c", "password")] == 7
    assert c[("success", "vigieh5c", "password")] == 1
    assert c[("success", "vigieh5c", "publickey")] == 1
    # A missing account: one "Invalid user" per connection, then each guess.
    assert c[("unknown_user", "nosuchuser1", "username")] == 4
    assert c[("invalid_user", "nosuchuser1", "password")] == 8
    # "maximum authentication attempts exceeded" and "Disconnecting ...: Too many".
    assert sum(n for (o, u, _), n in c.items() if o == "max_attempts") == 8
    # PAM's own lines for sshd never count as a second guess.
    assert {o for o, _, m in c if m == "pam"} == {"pam_failure"}
    assert all(e.source == "10.200.0.2" for e in evs if e.source)
    assert {(e.outcome, e.user) for e in evs if e.outcome == "disconnect"} >= {
        ("disconnect", "root"),  # Connection closed by authenticating user root [preauth]
        ("disconnect", "nosuchuser1"),
    }


def test_traditional_format_reads_the_same_and_takes_the_year_from_the_file():
    rfc, _ = events("openssh-9.2-pam.log")
    trad, st = events("openssh-9.2-traditional.log")
    assert st.unmatched == 0
    assert [(e.outcome, e.user, e.source) for e in trad] == [
        (e.outcome, e.user, e.source) for e in rfc
    ]
    assert all(abs(a.ts - b.ts) < 1 for a, b in zip(rfc, trad, strict=True))
    # Lines from December in a file last written in January belong to the year before.
    p = Parser()
    p.reference = time.mktime((2027, 1, 2, 10, 0, 0, 0, 0, -1))
    ev = p.parse_line("Dec 31 23:59:00 h sshd[1]: Failed password for x from 10.0.0.1 port 2 ssh2")
    assert time.localtime(ev.ts).tm_year == 2026


def test_replay_logs_takes_the_year_from_the_file_time(tmp_path: Path, capsys):
    f = tmp_path / "auth.log.1"
    f.write_text((DATA / "openssh-9.2-traditional.log").read_text())
    t = time.mktime((2024, 12, 4, 0, 0, 0, 0, 0, -1))
    os.utime(f, (t, t))
    assert main(["replay-logs", str(f), "--events"]) == 0
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert out and {time.localtime(e["time"]).tm_year for e in out} == {2024}
    assert {"time", "service", "outcome", "user", "source", "method"} <= out[0].keys()


def test_shadow_sudo_su_cron_every_line_read():
    evs, st = events("shadow-sudo-su-cron.log")
    assert st.unmatched == st.other == st.malformed == 0
    got = {(e.service, e.outcome, e.user, e.detail) for e in evs}
    assert got >= {
        ("useradd", "user_added", "h5probe", "1001"),
        ("useradd", "group_added", "", "h5probe"),
        ("usermod", "group_member_added", "h5probe", "sudo"),
        ("groupadd", "group_added", "", "h5grp"),
        ("gpasswd", "group_member_added", "h5probe", "h5grp"),
        ("chpasswd", "password_changed", "h5probe", ""),
        ("sudo", "sudo", "root", "h5probe"),
        ("su", "su", "root", "h5probe"),
        ("useradd", "user_added", "h5root", "0"),
        ("usermod", "uid_changed", "h5probe", "0"),
        ("crontab", "crontab_changed", "h5probe", ""),
    }


def test_audit_records():
    evs, _st = events("audit.log")
    got = [(e.service, e.outcome, e.user, e.source, e.detail) for e in evs]
    assert got == [
        ("sshd", "failure", "vigieh5c", "10.200.0.2", ""),
        ("sshd", "success", "uid:1001", "10.200.0.2", ""),
        ("useradd", "user_added", "backup2", "", ""),
        ("useradd", "group_added", "", "", "backup2"),
        ("usermod", "group_member_added", "backup2", "", "wheel"),
        ("passwd", "password_changed", "root", "", ""),
        ("systemd", "unit_started", "", "", "backdoor"),
        ("at", "exec", "", "", "at"),
        ("auditd", "key_file_changed", "", "", "/root/.ssh/authorized_keys"),
        ("auditd", "audit_disabled", "", "", ""),
        ("auditd", "audit_stopped", "", "", ""),
    ]
    assert evs[0].ts == 1764756000.101


def test_a_line_nothing_reads_is_counted_never_logged():
    buf = io.StringIO()
    logs.setup(buf, "debug")
    try:
        p = Parser()
        secret = "Dec  3 10:00:00 h sshd[1]: weird thing for patient-42 from 10.0.0.1"
        assert p.parse_line(secret) is None
        assert p.parse_line("Dec  3 10:00:00 h someapp[2]: anything at all") is None
        assert p.parse_line("\x00garbage") is None
    finally:
        logs.setup(sys.stderr, "info")
    assert (p.stats.unmatched, p.stats.other, p.stats.malformed) == (1, 1, 1)
    assert p.stats.by_program == {"sshd": 1}
    assert "patient-42" not in buf.getvalue()


def test_journal_fields_go_through_the_same_rules():
    from agent.logs.journal import to_event

    p = Parser(origin="journal:/x")
    e = to_event({"ts": 5.0, "_COMM": "sshd", "_PID": "7", "_UID": "0",
                  "MESSAGE": "Invalid user bob from 192.0.2.1 port 4"}, p)  # fmt: skip
    assert (e.outcome, e.user, e.source, e.pid, e.uid, e.ts) == (
        "unknown_user",
        "bob",
        "192.0.2.1",
        7,
        0,
        5.0,
    )
    audit = to_event({"ts": 6.0, "_TRANSPORT": "audit", "_AUDIT_TYPE_NAME": "ADD_USER",
                      "MESSAGE": "ADD_USER pid=9 uid=0 msg='op=add-user acct=\"x\" "
                      "exe=\"/usr/sbin/useradd\" res=success'"}, p)  # fmt: skip
    assert (audit.outcome, audit.user, audit.service) == ("user_added", "x", "useradd")


def _outcome(p: Parser, evs: list) -> tuple:
    st = p.stats
    return (
        [e.as_dict() for e in evs],
        (st.lines, st.events, st.unmatched, st.other, st.malformed, dict(st.by_program)),
    )


def _both(block: bytes) -> tuple[tuple, tuple]:
    ref, fast = Parser(), Parser()
    ref.reference = fast.reference = 1_764_756_000.0
    return (
        _outcome(ref, ref.parse_block(block.decode("utf-8", "replace"))),
        _outcome(fast, fast.parse_bytes(block)),
    )


# Lines whose header is at the edge of what the parser reads: no host, a bare "prog:",
# a path as the program, "kernel" with and without an audit record, PAM from a program
# no family reads, a non-ASCII byte before the program, a lone digit, invalid UTF-8.
EDGES = [
    "Dec  3 10:00:00 h sshd[1]: Failed password for root from 192.0.2.1 port 22 ssh2",
    "Dec  3 10:00:00 h sshd-session[1]: Accepted publickey for bob from 192.0.2.2 port 5 ssh2",
    "Dec  3 10:00:00 h /usr/sbin/sshd[1]: Invalid user x from 192.0.2.3 port 5",
    "Dec  3 10:00:00 h postfix/smtpd[2]: connect from unknown[192.0.2.33]",
    "Dec  3 10:00:00 h kernel: [1.2] eth0: link up",
    "Dec  3 10:00:00 h kernel: audit: type=1130 audit(1764756000.1:5): pid=1 uid=0",
    "Dec  3 10:00:00 h kernel: [9.9] audit: type=1105 msg=audit(1764756000.1:6): pid=1 uid=0",
    "Dec  3 10:00:00 h vsftpd[3]: pam_unix(vsftpd:auth): authentication failure; logname= "
    "uid=0 euid=0 tty=ftp ruser=x rhost=192.0.2.9 user=ann",
    "Dec  3 10:00:00 h systemd[1]: Started backdoor.service - x.",
    "Dec  3 10:00:00 h systemd[1]: Starting Daily apt download activities...",
    "Dec  3 10:00:00 h sudo:",
    "Dec  3 10:00:00 h sudo:   alice : TTY=pts/0 ; PWD=/ ; USER=root ; COMMAND=/bin/id",
    "Déc  3 10:00:00 h sshd[1]: Failed password for root from 192.0.2.1 port 22 ssh2",
    "Dec  3 10:00:00 hé sshd[1]: Failed password for root from 192.0.2.1 port 22 ssh2",
    "٣ 10:00:00 h sshd[1]: x",
    "2026-12-03T10:00:00.5+00:00 h useradd[4]: new user: name=eve, UID=0, GID=0",
    "2026-12-03T10:00:00.5+00:00 h dbus-daemon[5]: [system] Activated",
    "Xmas 3 10:00:00 h sshd[1]: Failed password for root from 192.0.2.1 port 22 ssh2",
    "type=USER_AUTH msg=audit(1764756000.1:7): pid=1 uid=0 res=failed",
    "type=BROKEN",
    "7",
    "\x00garbage",
    "nohost",
    "Dec  3 10:00:00 h prog[1] no colon",
    "Dec  3 10:00:00 h [1]: empty program",
]


def test_lines_skipped_in_c_are_those_python_would_skip():
    """Parser.parse_bytes (the followers' path, lines nothing reads skipped in C) gives
    the events and counts of parse_block, on every recorded log and on edge cases."""
    for f in sorted(DATA.glob("*.log")):
        ref, fast = _both(f.read_bytes())
        assert fast == ref, f.name
        assert ref[0], f.name  # the file makes events: the comparison can fail
    block = "\n".join(EDGES).encode() + b"\n\nDec  3 10:00:00 h sshd[1]: \xff\xfe bad utf-8\n"
    ref, fast = _both(block)
    assert fast == ref
    assert ref[1][3] >= 3 and ref[1][4] >= 4  # others and malformed among the edges


def test_random_cuts_and_bytes_give_the_same_counts():
    import random

    rnd = random.Random(7)
    corpus = b"".join(f.read_bytes() for f in sorted(DATA.glob("*.log")))
    corpus += "\n".join(EDGES).encode()
    for _ in range(200):
        a = rnd.randrange(len(corpus))
        chunk = bytearray(corpus[a : a + rnd.randrange(1, 3000)])
        for _ in range(rnd.randrange(4)):
            if chunk:
                chunk[rnd.randrange(len(chunk))] = rnd.choice(b" :[]\n\x80\xc3d0t")
        ref, fast = _both(bytes(chunk))
        assert fast == ref, bytes(chunk)
