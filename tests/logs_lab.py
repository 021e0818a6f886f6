"""A real syslog daemon for the log tests: rsyslogd from Debian, in a private mount
namespace whose /dev is an overlay holding its own /dev/log, so that the programs the tests
run there (useradd, sudo, crontab, sshd...) log through it into files under a temporary
directory, and nothing on the machine's own /dev changes. Programs reach it through
`Syslog.cmd(...)` (nsenter into that mount namespace)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

SETUP = """set -e
T=$1
mkdir -p $T/up $T/wk $T/pts $T/shm $T/spool
mount --bind /dev/pts $T/pts
mount --bind /dev/shm $T/shm
mount -t overlay overlay -o lowerdir=/dev,upperdir=$T/up,workdir=$T/wk /dev
mount --move $T/pts /dev/pts
mount --move $T/shm /dev/shm
exec rsyslogd -n -f $T/rsyslog.conf -i $T/rsyslog.pid
"""


def why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (a mount namespace for rsyslog's /dev/log)"
    for tool in ("rsyslogd", "unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"needs {tool} (./dev installs rsyslog)"
    return None


class Syslog:
    """rsyslogd writing auth/authpriv to `auth.log` (RFC 3339 times, Debian 12's default),
    the rest to `syslog`, and auth/authpriv again to `auth-trad.log` in the traditional
    format ("Dec  3 15:41:53", no year)."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "rsyslog.conf").write_text(
            'module(load="imuxsock")\n'
            f'global(workDirectory="{tmp}/spool")\n'
            f"auth,authpriv.* {tmp}/auth.log\n"
            f"*.*;auth,authpriv.none {tmp}/syslog\n"
            f'auth,authpriv.* action(type="omfile" file="{tmp}/auth-trad.log" '
            'template="RSYSLOG_TraditionalFileFormat")\n'
        )
        (tmp / "setup.sh").write_text(SETUP)
        self.proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", str(tmp / "setup.sh"), str(tmp)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        pidfile = tmp / "rsyslog.pid"
        end = time.monotonic() + 10
        while not (pidfile.exists() and pidfile.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > end:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                self.stop()
                raise RuntimeError(f"rsyslogd did not start: {err}")
            time.sleep(0.05)
        self.pid = int(pidfile.read_text())
        self.auth = tmp / "auth.log"
        self.syslog = tmp / "syslog"
        self.trad = tmp / "auth-trad.log"

    def cmd(self, *argv: str, net: str | None = None) -> list[str]:
        """`argv` run where /dev/log is this daemon's (and in netns `net`, if given)."""
        out = ["nsenter", f"--mount=/proc/{self.pid}/ns/mnt"]
        if net:
            out.append(f"--net=/run/netns/{net}")
        return [*out, "--", *argv]

    def run(self, *argv: str, check: bool = True, input: str | None = None) -> str:
        r = subprocess.run(self.cmd(*argv), capture_output=True, text=True, input=input,
                           timeout=60)  # fmt: skip
        if check and r.returncode != 0:
            raise RuntimeError(f"{argv}: {r.stderr}")
        return r.stdout

    def settle(self, path: Path, needle: str, timeout: float = 5.0) -> None:
        """Wait until rsyslog wrote a line holding `needle` to `path`."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if path.exists() and needle in path.read_text(errors="replace"):
                return
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} never reached {path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def drop_user(name: str) -> None:
    """Remove a test account (and its group, crontab, home) whatever state it is in."""
    subprocess.run(["crontab", "-r", "-u", name], capture_output=True)
    subprocess.run(["userdel", "-f", "-r", name], capture_output=True)
    subprocess.run(["groupdel", name], capture_output=True)


def drop_group(name: str) -> None:
    subprocess.run(["groupdel", "-f", name], capture_output=True)
