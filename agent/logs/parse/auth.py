"""sudo, su (util-linux and shadow), login, and PAM modules' own lines for any service.

A PAM failure line of a service that also writes its own failure line (sshd's "Failed
password", su's "FAILED SU", login's "FAILED LOGIN", sudo's "incorrect password
attempts") is `pam_failure`, so that one guess counts once; for any other service
(vsftpd, dovecot, cockpit, ...) PAM's line is the only one, and is a `failure`."""

from __future__ import annotations

import re

from agent.logs.event import LogEvent
from agent.logs.parse.common import rule

OWN_FAILURE_LINES = frozenset(("sshd", "su", "sudo", "login"))

_SUDO = r"\s*(?P<user>\S+) : "
_RULES_SUDO = [
    rule(
        _SUDO + r"(?:\d+ incorrect password attempts?|a password is required) ; "
        r".*?USER=(?P<detail>\S+)",
        "failure",
        method="password",
    ),
    rule(
        _SUDO + r"(?:user NOT in sudoers|user NOT authorized on host|command not allowed)"
        r" ; .*?USER=(?P<detail>\S+)",
        "sudo_denied",
    ),
    rule(_SUDO + r"(?:TTY=\S+ ; )?(?:PWD=.*? ; )?USER=(?P<detail>\S+) ; .*?COMMAND=", "sudo"),
]
_RULES_SU = [
    # util-linux su (Debian, RHEL)
    rule(r"FAILED SU \(to (?P<detail>\S+)\) (?P<user>\S+) on", "failure", method="password"),
    rule(r"\(to (?P<detail>\S+)\) (?P<user>\S+) on", "su"),
    # shadow's su (older distributions, Alpine)
    rule(r"FAILED su for (?P<detail>\S+) by (?P<user>\S+)", "failure", method="password"),
    rule(r"Successful su for (?P<detail>\S+) by (?P<user>\S+)", "su"),
    rule(r"[+-] \S+ \S+:\S+$", None),
]
_RULES_LOGIN = [
    rule(
        r"FAILED LOGIN \(\d+\) on '?(?P<detail>[^' ]+)'? (?:FROM '?(?P<source>[^' ]*)'? )?"
        r"FOR '?(?P<user>[^' ,]+)'?",
        "failure",
        method="password",
    ),
    rule(
        r"ROOT LOGIN\s+on '?(?P<detail>[^' ]+)'?(?: FROM '?(?P<source>[^' ]+)'?)?",
        "success",
        method="password",
    ),
    rule(
        r"LOGIN ON (?P<detail>\S+) BY (?P<user>\S+)(?: FROM (?P<source>\S+))?",
        "success",
        method="password",
    ),
]

_PAM_FAIL = re.compile(
    r"pam_(?:unix|sss|ldap|krb5|winbind)\((?P<service>[^:)]+):auth\): authentication failure; "
    r"(?:logname=(?P<logname>\S*) )?.*?rhost=(?P<source>\S*)(?:\s+user=(?P<user>\S+))?"
)
_PAM_OPEN = re.compile(
    r"pam_unix\((?P<service>[^:)]+):session\): session opened for user (?P<user>[^\s(]+)"
)
_PAM_CHPW = re.compile(
    r"pam_unix\((?P<service>[^:)]+):chauthtok\): password changed for (?P<user>\S+)"
)
# Every other PAM module line (session closed, limits, systemd, env...) says nothing here.
_PAM_IGNORE = re.compile(r"pam_\w+\([^)]*\): ")


def pam(
    msg: str, ts: float, prog: str, pid: int, origin: str = "", uid: int = -1
) -> LogEvent | bool | None:
    """A PAM module's line from any program; False when it is not one."""
    m = _PAM_FAIL.match(msg)
    if m is not None:
        svc = m.group("service")
        own = svc in OWN_FAILURE_LINES or prog in OWN_FAILURE_LINES
        return LogEvent(
            ts,
            svc,
            "pam_failure" if own else "failure",
            user=m.group("user") or "",
            source=m.group("source") or "",
            method="pam",
            pid=pid,
            origin=origin,
            uid=uid,
        )
    m = _PAM_CHPW.match(msg)
    if m is not None:
        return LogEvent(
            ts,
            m.group("service"),
            "password_changed",
            user=m.group("user"),
            method="pam",
            pid=pid,
            origin=origin,
            uid=uid,
        )
    m = _PAM_OPEN.match(msg)
    if m is not None:
        svc = m.group("service")
        if svc in OWN_FAILURE_LINES or prog in OWN_FAILURE_LINES:
            return None  # the program's own success line is the event
        return LogEvent(
            ts, svc, "success", user=m.group("user"), method="pam", pid=pid, origin=origin, uid=uid
        )
    if _PAM_IGNORE.match(msg):
        return None
    return False


RULES = {"sudo": _RULES_SUDO, "su": _RULES_SU, "login": _RULES_LOGIN}
