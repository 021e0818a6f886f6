"""Issue #26 (3): commands run as root must not leave root-owned files in a state directory
the service user owns, and both doctors name the chown that repairs one that has some.

The tests that need a second user create a system user of their own (vigie-t + random
suffix, removed in a finally) and run as root; elsewhere they skip, saying why."""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from common import ownership
from tests.conftest import tool

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(
    not ROOT, reason="creating a user and files owned by others needs root"
)


@pytest.fixture
def user() -> Iterator[str]:
    if not shutil.which("useradd") or not shutil.which("userdel"):
        pytest.skip("useradd/userdel not installed")
    name = f"vigie-t{secrets.token_hex(4)}"
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


@pytest.fixture
def state(user: str) -> Iterator[Path]:
    """An empty state directory owned by `user`, 0700, in a directory it can traverse
    (pytest's tmp_path is root's 0700 one)."""
    base = Path(tempfile.mkdtemp(prefix="vigie-own-"))
    try:
        base.chmod(0o711)
        d = base / "state"
        d.mkdir(mode=0o700)
        shutil.chown(d, user, user)
        yield d
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _run(*argv: str, as_user: str | None = None) -> subprocess.CompletedProcess:
    cmd = list(argv)
    if as_user:
        cmd = ["runuser", "-u", as_user, "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _user_can_run_venv(user: str) -> bool:
    """The venv's interpreter may sit under root's home (pyenv), out of other users'
    reach: then only the refusal and the doctors can be tested with a real user."""
    return _run(tool("vigie-agent"), "--help", as_user=user).returncode == 0


def _entries(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


# What needs no second user: the rules themselves.


def test_roots_own_and_unclaimed_directories_are_not_refused(tmp_path: Path) -> None:
    """Tests and developers run everything as root on temporary directories."""
    ownership.check_writer(tmp_path, ownership.AGENT_USER, "vigie-agent enroll")
    ownership.check_writer(tmp_path / "new" / "deep", ownership.COLLECTOR_USER, "x")
    assert ownership.expected_owner(tmp_path / "new", ownership.AGENT_USER) is None


def test_default_path_belongs_to_the_service_user_when_it_exists(tmp_path: Path) -> None:
    me = os.geteuid()
    name = ownership._owner(me).user
    target = tmp_path / "var-lib-x"  # does not exist yet: the unit would create it
    owner = ownership.expected_owner(target, name, default_dir=target)
    assert owner is not None and owner.uid == me
    # Not the unit's default path: a root-owned directory has nobody else to belong to.
    assert ownership.expected_owner(target, name, default_dir=tmp_path / "other") is None
    # No such user on this machine (a developer's): nobody either.
    assert ownership.expected_owner(target, "vigie-no-such-user", default_dir=target) is None


def test_scan_reports_modes_more_open_than_the_service_s(tmp_path: Path) -> None:
    d = tmp_path / "s"
    (d / "tls").mkdir(parents=True, mode=0o700)
    d.chmod(0o700)
    (d / "tls").chmod(0o755)
    key = d / "tls" / "agent.key"
    key.write_bytes(b"k")
    key.chmod(0o640)
    (d / "anon.key").write_bytes(b"k")
    (d / "anon.key").chmod(0o600)
    (d / "notes.txt").write_text("public enough")
    (d / "notes.txt").chmod(0o644)
    me = ownership._owner(os.geteuid())
    found = ownership.scan(d, me)
    assert [(f.kind, f.command) for f in found] == [
        ("mode", f"chmod 700 {d / 'tls'}"),
        ("mode", f"chmod 600 {key}"),
    ]
    assert ownership.scan(tmp_path / "missing", me) == []
    # The directory itself: 0755 (mkdir -p) is let be, writable by others is not.
    d.chmod(0o755)
    assert len(ownership.scan(d, me)) == 2
    d.chmod(0o777)
    assert ownership.scan(d, me)[0].command == f"chmod 700 {d}"


# With a service user of its own.


@needs_root
def test_agent_enroll_as_root_is_refused(user: str, state: Path) -> None:
    r = _run(
        tool("vigie-agent"),
        "enroll",
        "--collector",
        "127.0.0.1:9",
        "--token",
        "vgt1.x.y",
        "--state-dir",
        str(state),
    )
    assert r.returncode == 2, r.stderr
    assert f"runuser -u {user} -- vigie-agent enroll ..." in r.stderr
    assert f"chown -R {user}:{user} {state}" in r.stderr
    assert _entries(state) == []  # not even the lock


@needs_root
@pytest.mark.parametrize(
    ("words", "rest"),
    [
        ("token create", ["--region", "11", "--ght", "GHT-X", "--finess", "750000001"]),
        ("pki init", []),
        ("pki rollover", []),
        ("agent revoke", ["a-1"]),
        ("dead-letter retry", []),
        ("intel load", ["bundle.json"]),
        ("serve", ["--listen", "127.0.0.1:0"]),
    ],
)
def test_collector_state_commands_as_root_are_refused(
    user: str, state: Path, words: str, rest: list[str]
) -> None:
    r = _run(tool("vigie-collector"), *words.split(), "--state-dir", str(state), *rest)
    assert r.returncode == 2, r.stderr
    assert f"runuser -u {user} -- vigie-collector {words} ..." in r.stderr, r.stderr
    assert _entries(state) == []


@needs_root
def test_as_the_owner_the_commands_run(user: str, state: Path) -> None:
    if not _user_can_run_venv(user):
        pytest.skip(f"{user} cannot execute the virtualenv's interpreter (under /root)")
    r = _run(
        tool("vigie-collector"),
        "token",
        "create",
        "--state-dir",
        str(state),
        "--region",
        "11",
        "--ght",
        "GHT-X",
        "--finess",
        "750000001",
        as_user=user,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("vgt1.")
    uid = ownership.user_owner(user).uid  # type: ignore[union-attr]
    assert all(p.lstat().st_uid == uid for p in state.rglob("*"))


@needs_root
def test_as_the_owner_nothing_is_refused(user: str, state: Path) -> None:
    """The same decision as the owner, without a new interpreter (which may be out of the
    user's reach): a forked child that became the user runs the agent's and the
    collector's main()."""
    from agent import cli as agent_cli
    from collector import cli as collector_cli

    owner = ownership.user_owner(user)
    assert owner is not None
    out = state.parent / "out"
    with open(out, "w+") as log:
        pid = os.fork()
        if pid == 0:  # the child: never back into pytest
            rc = 99
            try:
                sys.stdout = sys.stderr = log  # pytest's capture is the parent's
                os.setgroups([])
                os.setgid(owner.gid)
                os.setuid(owner.uid)
                enroll = ["enroll", "--collector", "127.0.0.1:9", "--token", "x"]
                a = agent_cli.main([*enroll, "--state-dir", str(state)])
                c = collector_cli.main(["agent", "revoke", "a-1", "--state-dir", str(state)])
                rc = 10 * a + c
            finally:
                log.flush()
                os._exit(rc)
        _, status = os.waitpid(pid, 0)
        log.seek(0)
        text = log.read()
    # enroll got past the check and the lock, then refused the malformed token (2); the
    # revocation was written (0).
    assert os.waitstatus_to_exitcode(status) == 20, text
    assert "refusing" not in text and "not an enrollment token" in text
    assert {"agent.lock", "registry.db"} <= set(_entries(state))
    assert all(p.lstat().st_uid == owner.uid for p in state.rglob("*"))


def _fix_line(stdout: str) -> str:
    lines = stdout.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("FAIL") and line.split()[1] == "ownership":
            return lines[i + 1].split("fix: ", 1)[1]
    raise AssertionError(stdout)


def _ownership_status(stdout: str) -> str:
    return next(line.split()[0] for line in stdout.splitlines() if line[6:].startswith("owner"))


@needs_root
@pytest.mark.parametrize("program", ["vigie-agent", "vigie-collector"])
def test_doctor_fails_on_a_root_owned_key_and_names_the_chown(
    user: str, state: Path, program: str
) -> None:
    sub = state / ("tls" if program == "vigie-agent" else "pki")
    sub.mkdir(mode=0o700)
    shutil.chown(sub, user, user)
    key = sub / ("agent.key" if program == "vigie-agent" else "ca.key")
    key.write_bytes(b"written by root")  # what `pki init` or `enroll` as root left
    key.chmod(0o600)
    argv = [tool(program), "doctor", "--state-dir", str(state)]
    env = os.environ | {"VIGIE_INTERFACE": ""}
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 1
    assert f"{key} is owned by root, not {user}" in r.stdout, r.stdout
    fix = _fix_line(r.stdout)
    assert fix == f"chown -R {user}:{user} {state}"
    subprocess.run(shlex.split(fix), check=True)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert _ownership_status(r.stdout) == "OK", r.stdout
    assert f"everything in {state} is owned by {user}" in r.stdout
    # The collector's doctor did not create the store it found missing (as root).
    assert not (state / "vigie.db").exists()


@needs_root
def test_doctor_warns_on_an_open_key_with_the_chmod(user: str, state: Path) -> None:
    key = state / "anon.key"
    key.write_bytes(b"k")
    key.chmod(0o644)
    shutil.chown(key, user, user)
    r = _run(tool("vigie-agent"), "doctor", "--state-dir", str(state))
    assert _ownership_status(r.stdout) == "OK", r.stdout
    assert f"WARN  modes          {key} is 0644" in r.stdout
    assert f"fix: chmod 600 {key}" in r.stdout
