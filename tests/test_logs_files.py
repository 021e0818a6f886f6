"""Text logs followed as `tail -F` follows them, rotated by the real logrotate (rename,
copytruncate, compression), truncated or deleted by hand, appearing late; positions kept
across a restart and a kill -9 of the real agent; the backlog bounded by catch_up."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from agent import settings
from agent.logs.reader import LogReader
from common import config, logs

LOGROTATE = shutil.which("logrotate") or "/usr/sbin/logrotate"
needs_logrotate = pytest.mark.skipif(not os.access(LOGROTATE, os.X_OK),
                                     reason="needs logrotate (./dev installs it)")  # fmt: skip


def logs_settings(files: list[str], **over) -> dict:
    s = config.defaults(settings.SCHEMA)["logs"]
    s.update({"files": files, "journal": False, "key_files": []} | over)
    return s


def line(n: int, ts: float | None = None, src: str = "10.9.8.7") -> str:
    t = time.strftime("%b %e %H:%M:%S", time.localtime(ts or time.time()))
    return f"{t} host sshd[{1000 + n}]: Failed password for u{n} from {src} port {n} ssh2\n"


def write(path: Path, *lines: str) -> None:
    with open(path, "a") as f:
        f.writelines(lines)


def users(batch) -> list[str]:
    return [e.user for e in batch.events if e.outcome == "failure"]


def drain(reader: LogReader) -> tuple[list[str], list[str]]:
    """Users of the failures read, and the follower's own events (tampering)."""
    b = reader.poll()
    b.commit()
    return users(b), [e.outcome for e in b.events if e.service == "file"]


def rotate(tmp: Path, log: Path, how: str) -> None:
    conf = tmp / "logrotate.conf"
    conf.write_text(f"{log} {{\n  rotate 3\n  {how}\n  missingok\n}}\n")
    r = subprocess.run([LOGROTATE, "-f", "-s", str(tmp / "lr.state"), str(conf)],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr


@needs_logrotate
@pytest.mark.parametrize("how", ["create", "create\n  compress", "copytruncate",
                                 "copytruncate\n  compress"])  # fmt: skip
def test_rotation_reads_every_line_once_and_is_not_tampering(tmp_path: Path, how: str):
    log = tmp_path / "auth.log"
    write(log, *(line(i) for i in range(3)))
    r = LogReader(logs_settings([str(log)]), str(tmp_path / "st"))
    assert drain(r) == (["u0", "u1", "u2"], [])
    write(log, line(3))  # written just before the rotation, not read yet
    rotate(tmp_path, log, how)
    if "create" in how:
        assert log.exists() and log.stat().st_size == 0
    write(log, line(4), line(5))
    got, tamper = drain(r)
    assert got == ["u3", "u4", "u5"] and tamper == []
    rotated = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("auth.log."))
    assert rotated == (["auth.log.1.gz"] if "compress" in how else ["auth.log.1"])
    write(log, line(6))
    assert drain(r) == (["u6"], [])  # the rotated copy is never read again


def test_a_log_cleared_or_deleted_outside_rotation_is_said(tmp_path: Path):
    log = tmp_path / "auth.log"
    write(log, line(0), line(1))
    r = LogReader(logs_settings([str(log)]), str(tmp_path / "st"))
    assert drain(r) == (["u0", "u1"], [])
    os.truncate(log, 0)  # `> auth.log`
    write(log, line(2))
    assert drain(r) == (["u2"], ["log_truncated"])
    # Cleared, then written past the old offset before the next look: still seen.
    write(log, *(line(i) for i in range(3, 9)))
    assert drain(r)[0] == [f"u{i}" for i in range(3, 9)]
    with open(log, "w") as f:
        f.write(line(20) * 12)
    got, tamper = drain(r)
    assert tamper == ["log_truncated"] and got == ["u20"] * 12
    log.unlink()
    assert drain(r) == ([], ["log_deleted"])
    write(log, line(30))  # back: read from its start
    assert drain(r) == (["u30"], [])


def test_a_file_that_appears_later_and_a_glob(tmp_path: Path):
    d = tmp_path / "apps"
    r = LogReader(logs_settings([str(d / "*" / "auth.log")]), str(tmp_path / "st"))
    assert drain(r) == ([], [])
    (d / "a").mkdir(parents=True)
    write(d / "a" / "auth.log", line(1))
    (d / "a" / "auth.log.1").write_text(line(99))  # a rotated copy: never a log of its own
    assert drain(r) == (["u1"], [])


def test_restart_resumes_and_reads_what_was_written_or_rotated_while_down(tmp_path: Path):
    log, st = tmp_path / "auth.log", str(tmp_path / "st")
    write(log, line(0), line(1))
    assert drain(LogReader(logs_settings([str(log)]), st)) == (["u0", "u1"], [])
    saved = json.loads((tmp_path / "st" / "logs" / "positions.json").read_text())
    assert saved["files"][str(log)]["offset"] == log.stat().st_size
    write(log, line(2))  # while the agent is down
    assert drain(LogReader(logs_settings([str(log)]), st)) == (["u2"], [])
    # Down again; the log is rotated by rename meanwhile, with a line before and after.
    write(log, line(3))
    log.rename(tmp_path / "auth.log.1")
    write(log, line(4))
    assert drain(LogReader(logs_settings([str(log)]), st)) == (["u3", "u4"], [])
    # A batch read but not handled (crash before commit) is read again, once.
    r = LogReader(logs_settings([str(log)]), st)
    write(log, line(5))
    assert users(r.poll()) == ["u5"]  # no commit
    assert drain(LogReader(logs_settings([str(log)]), st)) == (["u5"], [])


def test_backlog_beyond_catch_up_is_counted_and_said_once(tmp_path: Path):
    buf = io.StringIO()
    logs.setup(buf, "info")
    try:
        _backlog(tmp_path)
    finally:
        logs.setup(sys.stderr, "info")
    said = [x for x in buf.getvalue().splitlines() if "log_backlog_skipped" in x]
    assert len(said) == 1 and json.loads(said[0])["events"] == 5
    assert "Failed password" not in buf.getvalue()  # counted, never logged in full


def _backlog(tmp_path: Path) -> None:
    log = tmp_path / "auth.log"
    old = time.time() - 7200
    write(log, *(line(i, old) for i in range(5)), line(5), line(6))
    r = LogReader(logs_settings([str(log)], catch_up=3600.0), str(tmp_path / "st"))
    assert drain(r) == (["u5", "u6"], [])
    assert r.stats.backlog_skipped == 5
    write(log, line(7, old))
    drain(r)
    assert r.stats.backlog_skipped == 6


# The real agent, killed -9 between two batches of failures --------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _failures(port: int) -> int:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    for x in body.splitlines():
        if x.startswith('vigie_agent_log_events_total{outcome="failure"}'):
            return int(float(x.split()[-1]))
    return 0


def _agent(cfg: Path, state: Path) -> subprocess.Popen:
    from bench.livelab import agent_bin

    return subprocess.Popen(
        [agent_bin(), "run", "-i", "lo", "--output", "jsonl", "--config", str(cfg),
         "--state-dir", str(state)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _wait(cond, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if cond():
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


@pytest.mark.skipif(os.geteuid() != 0, reason="run captures on lo: needs root")
def test_kill_9_between_two_batches_counts_every_failure_once(tmp_path: Path):
    log, state, cfg = tmp_path / "auth.log", tmp_path / "state", tmp_path / "agent.toml"
    port = _free_port()
    cfg.write_text(
        f"[host]\nenabled = false\n[metrics]\nlisten = '127.0.0.1:{port}'\n"
        f'[logs]\nfiles = ["{log}"]\njournal = false\npoll_seconds = 0.2\nkey_files = []\n'
    )
    write(log, *(line(i) for i in range(12)))
    a = _agent(cfg, state)
    try:
        assert _wait(lambda: _failures(port) == 12)
        pos = state / "logs" / "positions.json"
        assert _wait(lambda: json.loads(pos.read_text())["files"][str(log)]["offset"]
                     == log.stat().st_size)  # fmt: skip
        a.send_signal(signal.SIGKILL)
        a.wait(10)
        write(log, *(line(i) for i in range(12, 19)))  # while it is dead
        a = _agent(cfg, state)
        assert _wait(lambda: _failures(port) == 7)
        write(log, line(19))
        assert _wait(lambda: _failures(port) == 8)
        time.sleep(1.0)
        assert _failures(port) == 8  # nothing replayed late
    finally:
        a.send_signal(signal.SIGTERM)
        a.wait(20)


def test_authorized_keys_changed_created_removed(tmp_path: Path):
    home = tmp_path / "home"
    (home / "a" / ".ssh").mkdir(parents=True)
    keys = home / "a" / ".ssh" / "authorized_keys"
    keys.write_text("ssh-ed25519 AAAA first\n")
    s = logs_settings([], key_files=[str(home / "*" / ".ssh" / "authorized_keys")])
    r = LogReader(s, str(tmp_path / "st"))
    assert r.poll().events == []  # the first look is the baseline
    with open(keys, "a") as f:
        f.write("ssh-ed25519 BBBB planted\n")
    (home / "b" / ".ssh").mkdir(parents=True)
    (home / "b" / ".ssh" / "authorized_keys").write_text("ssh-rsa CCCC\n")
    b = r.poll()
    b.commit()
    got = sorted((e.outcome, e.method, e.user) for e in b.events)
    assert got == [("key_file_changed", "changed", "root"), ("key_file_changed", "created", "root")]
    # A restart knows the last state: removing one is still seen.
    keys.unlink()
    r2 = LogReader(s, str(tmp_path / "st"))
    assert [(e.outcome, e.method) for e in r2.poll().events] == [("key_file_changed", "removed")]
