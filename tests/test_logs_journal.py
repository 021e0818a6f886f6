"""The systemd journal read natively (libsystemd's sd-journal through ctypes). PID 1 is
not systemd here and no journald runs, so the tests make real journal files with
systemd-journal-remote (Debian's systemd-journal-remote), which writes journal export
format from stdin into a .journal file with libsystemd's own writer; the agent reads them
with a cursor, as it reads /var/log/journal on a server."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from agent import settings
from agent.logs.reader import LogReader
from common import config

REMOTE = "/lib/systemd/systemd-journal-remote"
pytestmark = pytest.mark.skipif(
    not os.access(REMOTE, os.X_OK), reason="needs systemd-journal-remote (./dev installs it)"
)
BOOT = "0123456789abcdef0123456789abcdef"
_seq = [0]


def entry(ts: float, **fields: str) -> str:
    _seq[0] += 1
    head = {
        "__REALTIME_TIMESTAMP": str(int(ts * 1e6)),
        "__MONOTONIC_TIMESTAMP": str(_seq[0]),
        "_BOOT_ID": BOOT,
        "_MACHINE_ID": BOOT,
        "_HOSTNAME": "victim",
        "_TRANSPORT": "syslog",
    }
    return "".join(f"{k}={v}\n" for k, v in (head | fields).items()) + "\n"


def sshd_failure(ts: float, n: int, src: str = "10.9.8.7") -> str:
    return entry(ts, SYSLOG_IDENTIFIER="sshd", _COMM="sshd", _PID=str(4000 + n), _UID="0",
                 MESSAGE=f"Failed password for u{n} from {src} port {n} ssh2")  # fmt: skip


def journal(path: Path, *entries: str) -> None:
    r = subprocess.run([REMOTE, "-o", str(path), "-"], input="".join(entries), text=True,
                       capture_output=True)  # fmt: skip
    assert r.returncode == 0, r.stderr


def reader(jdir: Path, state: Path, **over) -> LogReader:
    s = config.defaults(settings.SCHEMA)["logs"]
    s.update(files=[], key_files=[], journal=True, journal_dirs=[str(jdir)], **over)
    return LogReader(s, str(state))


def drain(r: LogReader) -> list:
    b = r.poll()
    b.commit()
    return b.events


def test_entries_fields_and_cursor_across_new_files_and_restarts(tmp_path: Path):
    jdir, st = tmp_path / "journal" / BOOT, tmp_path / "st"
    jdir.mkdir(parents=True)
    now = time.time()
    journal(jdir / "system.journal", *(sshd_failure(now - 5 + i * 0.01, i) for i in range(3)),
            entry(now - 4, SYSLOG_IDENTIFIER="systemd", _PID="1", _UID="0",
                  MESSAGE_ID="39f53479d3a045ac8e11786248231fbf", UNIT="backdoor.service",
                  MESSAGE="Started Totally normal service."))  # fmt: skip
    r = reader(tmp_path / "journal", st)
    got = drain(r)
    assert [(e.outcome, e.user, e.pid, e.uid) for e in got[:3]] == [
        ("failure", f"u{i}", 4000 + i, 0) for i in range(3)
    ]
    assert (got[3].outcome, got[3].detail) == ("unit_started", "backdoor.service")
    assert all(e.origin == f"journal:{tmp_path / 'journal'}" for e in got)
    cursor = json.loads((st / "logs" / "positions.json").read_text())["journal"]
    assert str(tmp_path / "journal") in cursor
    assert drain(r) == []
    # journald rotates: entries appear in a new file beside the old one.
    journal(jdir / "system@2.journal", sshd_failure(now - 2, 3), sshd_failure(now - 1, 4))
    assert [e.user for e in drain(r)] == ["u3", "u4"]
    # A restart reads from the cursor: nothing again, then only what is new.
    r2 = reader(tmp_path / "journal", st)
    assert drain(r2) == []
    journal(jdir / "system@3.journal", sshd_failure(now, 5))
    assert [e.user for e in drain(r2)] == ["u5"]


def test_backlog_older_than_catch_up_is_counted_not_read(tmp_path: Path):
    jdir = tmp_path / "journal"
    jdir.mkdir()
    now = time.time()
    journal(jdir / "system.journal", *(sshd_failure(now - 7200 + i, i) for i in range(4)),
            sshd_failure(now - 10, 9))  # fmt: skip
    r = reader(jdir, tmp_path / "st", catch_up=3600.0)
    assert [e.user for e in drain(r)] == ["u9"]


def test_entries_removed_unread_are_log_tampering(tmp_path: Path):
    """journalctl --vacuum-*: the file holding the cursor's entry goes away; the journal
    left holds little history: host.log_tampering's event."""
    jdir = tmp_path / "journal"
    jdir.mkdir()
    now = time.time()
    journal(jdir / "system@1.journal", sshd_failure(now - 9, 1))
    r = reader(jdir, tmp_path / "st")
    assert [e.user for e in drain(r)] == ["u1"]
    (jdir / "system@1.journal").unlink()
    journal(jdir / "system.journal", sshd_failure(now - 1, 2))
    got = drain(r)
    assert sorted((e.outcome, e.user) for e in got) == [("failure", "u2"), ("journal_removed", "")]
    removed = next(e for e in got if e.outcome == "journal_removed")
    assert float(removed.detail) < 60  # the journal now keeps seconds of history


def test_no_journal_is_said_once_and_files_carry_on(tmp_path: Path):
    log = tmp_path / "auth.log"
    log.write_text("Dec  3 10:00:00 h sshd[1]: Failed password for u from 10.1.1.1 port 1 ssh2\n")
    s = config.defaults(settings.SCHEMA)["logs"]
    s.update(files=[str(log)], key_files=[], journal_dirs=[str(tmp_path / "none")],
             catch_up=1e9)  # fmt: skip
    r = LogReader(s, str(tmp_path / "st"))
    assert r.journal is not None and r.journal.dirs == []
    assert [e.user for e in r.poll().events] == ["u"]


def test_the_same_line_in_the_journal_and_auth_log_counts_once(tmp_path: Path):
    """rsyslog copies the journal's sshd lines into auth.log: read from both, each guess
    is one event; four guesses in one second from one sshd process all stay."""
    jdir = tmp_path / "journal"
    jdir.mkdir()
    now = int(time.time()) - 5
    msgs = [f"Failed password for root from 10.9.8.7 port {p} ssh2" for p in (1, 2, 3, 4)]
    journal(jdir / "system.journal", *(
        entry(now + 0.1 * i, SYSLOG_IDENTIFIER="sshd", _PID="777", MESSAGE=m)
        for i, m in enumerate(msgs)
    ))  # fmt: skip
    stamp = time.strftime("%b %e %H:%M:%S", time.localtime(now))
    log = tmp_path / "auth.log"
    log.write_text("".join(f"{stamp} victim sshd[777]: {m}\n" for m in msgs))
    s = config.defaults(settings.SCHEMA)["logs"]
    s.update(files=[str(log)], key_files=[], journal_dirs=[str(jdir)])
    r = LogReader(s, str(tmp_path / "st"))
    got = drain(r)
    assert [e.outcome for e in got] == ["failure"] * 4
    assert r.stats.duplicates == 4
