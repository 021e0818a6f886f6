"""Who owns a state directory, and files in it that its owner could not use.

The services run as `vigie-agent` and `vigie-collector` (systemd/*.service). A command run
once as root in their state directory (`enroll`, `token create`, `pki init`...) leaves
root-owned keys, databases or an outbox that the service then fails on, with a
PermissionError or "attempt to write a readonly database". So commands that write state
refuse to run as root over a directory that belongs to someone else (`check_writer`),
naming the command to run instead, and both `doctor`s report what `scan` finds, with the
`chown`/`chmod` to run.

Refusing was chosen over handing the files over afterwards (a chown once the command is
done): a command that fails or is killed half-way would still leave root's files behind,
and SQLite creates its -wal/-shm files whenever it likes, so "after" has no clear end.
"""

from __future__ import annotations

import fnmatch
import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from common.checks import FAIL, OK, WARN, Result

AGENT_USER, COLLECTOR_USER = "vigie-agent", "vigie-collector"
# StateDirectory= of the units: the service user owns these even before they exist.
DEFAULT_DIRS = {AGENT_USER: "/var/lib/vigie-agent", COLLECTOR_USER: "/var/lib/vigie-collector"}
DIR_MODE = 0o700
PRIVATE_MODE = 0o600
# Secrets and queued alerts: nobody but the service reads them (UMask=0077 in the units).
MAX_MODE_LINES = 10  # a tree opened by a careless umask: the first few say enough
PRIVATE_FILES = ("*.key", "outbox.db", "outbox.db-wal", "outbox.db-shm")


class WrongUser(Exception):
    """A state-writing command run as root over a directory another user owns."""


@dataclass(frozen=True)
class Owner:
    uid: int
    gid: int
    user: str
    group: str

    @property
    def spec(self) -> str:
        """USER:GROUP as chown takes it."""
        return f"{self.user}:{self.group}"


@dataclass(frozen=True)
class Finding:
    kind: str  # "owner" or "mode"
    path: Path
    message: str
    command: str


def _owner(uid: int, gid: int | None = None) -> Owner:
    try:
        pw = pwd.getpwuid(uid)
        user, gid = pw.pw_name, pw.pw_gid if gid is None else gid
    except KeyError:  # a uid without a passwd entry: chown takes numbers too
        user, gid = str(uid), uid if gid is None else gid
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    return Owner(uid, gid, user, group)


def user_owner(name: str) -> Owner | None:
    """The named user with its primary group, None when there is no such user."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    return _owner(pw.pw_uid, pw.pw_gid)


def _existing_ancestor(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path("/")


def expected_owner(
    state_dir: str | Path, service_user: str, default_dir: str | Path | None = None
) -> Owner | None:
    """Who should own `state_dir`: the owner of the directory (or, before it exists, of
    the nearest existing directory above it) when that is not root; else the service
    user, when it exists and `state_dir` is the unit's StateDirectory; else nobody in
    particular (None: a developer's or a test's directory)."""
    d = Path(state_dir).absolute()
    try:
        st = _existing_ancestor(d).stat()
    except OSError:
        st = None
    if st is not None and st.st_uid != 0:
        # With the user's primary group, not the directory's: the units run with
        # Group= the user's own, and that is what a chown -R should restore.
        return _owner(st.st_uid)
    default = default_dir if default_dir is not None else DEFAULT_DIRS.get(service_user)
    if default is not None and os.path.realpath(d) == os.path.realpath(default):
        return user_owner(service_user)
    return None


def runas_command(user: str, command: str) -> str:
    """What to type instead: runuser is in util-linux, present where systemd is (sudo
    may not be installed)."""
    return f"runuser -u {user} -- {command} ..."


def check_writer(
    state_dir: str | Path,
    service_user: str,
    command: str,
    default_dir: str | Path | None = None,
) -> None:
    """Raise WrongUser when this process is root and `state_dir` belongs to another user
    (see expected_owner): whatever the command wrote would be root's, which the service
    cannot open. Anyone else, and root on its own or unclaimed directories, passes: a
    non-root user cannot create root's files, and tests and developers run as root on
    temporary directories."""
    if os.geteuid() != 0:
        return
    owner = expected_owner(state_dir, service_user, default_dir)
    if owner is None or owner.uid == 0:
        return
    raise WrongUser(
        f"refusing to run '{command}' as root: {state_dir} belongs to {owner.user}, and "
        f"files written as root there would stop the service ({owner.user} could not open "
        f"them). Run it as that user: {runas_command(owner.user, command)} (the same "
        f"arguments). Files already written as root: chown -R {owner.spec} {state_dir}"
    )


def _wanted_mode(path: Path, is_dir: bool) -> int | None:
    if is_dir:
        return DIR_MODE
    if any(fnmatch.fnmatch(path.name, p) for p in PRIVATE_FILES):
        return PRIVATE_MODE
    return None


def scan(state_dir: str | Path, owner: Owner) -> list[Finding]:
    """Entries of `state_dir` (itself included) not owned by `owner`, one finding with
    the `chown -R` for all of them; and subdirectories, private keys and the outbox more
    open than 0700/0600 (the directory itself: writable by others), one finding each with
    its `chmod`. Symbolic links are not followed (what they point to is not the state
    directory's)."""
    root = Path(state_dir)
    if not root.is_dir():
        return []
    wrong: list[tuple[Path, int]] = []
    modes: list[Finding] = []

    def look(p: Path, top: bool = False) -> None:
        try:
            st = p.lstat()
        except OSError:
            return
        if stat.S_ISLNK(st.st_mode):
            return
        if st.st_uid != owner.uid:
            wrong.append((p, st.st_uid))
        want = _wanted_mode(p, stat.S_ISDIR(st.st_mode))
        have = stat.S_IMODE(st.st_mode)
        # The state directory itself only when others may write in it: systemd sets it
        # back to StateDirectoryMode=0700 at every start, and a 0755 one (made by
        # `mkdir -p`, as tests' and developers' are) shows names, not the 0600 secrets.
        loose = have & 0o022 if top else have & ~(want or 0o777) & 0o777
        if want is not None and loose:
            modes.append(
                Finding(
                    "mode",
                    p,
                    f"{p} is {have:04o}, should be {want:04o} at most",
                    f"chmod {want:o} {p}",
                )
            )

    look(root, top=True)
    for here, dirs, files in os.walk(root):  # os.walk does not follow links by default
        dirs.sort()
        for name in sorted(dirs) + sorted(files):
            look(Path(here) / name)
    out: list[Finding] = []
    if wrong:
        first, uid = wrong[0]
        others = f" and {len(wrong) - 1} more" if len(wrong) > 1 else ""
        out.append(
            Finding(
                "owner",
                root,
                f"{first} is owned by {_owner(uid).user}{others}, not {owner.user}",
                f"chown -R {owner.spec} {root}",
            )
        )
    return out + modes


def check(
    state_dir: str | Path, service_user: str, default_dir: str | Path | None = None
) -> list[Result]:
    """The doctors' "ownership" lines: FAIL with the chown when entries belong to someone
    other than the expected owner (the service user, or the directory's owner), WARN with
    the chmod for modes more open than the service's own (UMask=0077). Nothing when the
    directory does not exist (the state dir check says so)."""
    d = Path(state_dir)
    try:
        st = d.stat()
    except OSError:
        return []
    owner = expected_owner(d, service_user, default_dir) or _owner(st.st_uid)
    findings = scan(d, owner)
    out = [Result(FAIL, "ownership", f.message, f.command) for f in findings if f.kind == "owner"]
    if not out:
        out.append(Result(OK, "ownership", f"everything in {d} is owned by {owner.user}"))
    modes = [f for f in findings if f.kind == "mode"]
    for f in modes[:MAX_MODE_LINES]:
        out.append(Result(WARN, "modes", f.message, f.command))
    if len(modes) > MAX_MODE_LINES:
        out.append(
            Result(
                WARN,
                "modes",
                f"{len(modes) - MAX_MODE_LINES} more entries in {d} are too open",
                f"find {d} -type d -exec chmod 700 {{}} + ; chmod 600 the keys and outbox",
            )
        )
    return out
