"""systemd (units started), cron (Debian's cron, cronie), crontab, atd and auditd's
service lines: what persistence and log tampering leave in syslog and the journal."""

from __future__ import annotations

from agent.logs.parse.common import rule

_SYSTEMD = [
    # "Started foo.service - Description." (systemd >= 252) or "Started Description." (the
    # unit then only in the journal's UNIT= field, which the journal source reads).
    rule(
        r"Started (?P<detail>[\w@:.\\-]+\.(?:service|timer|socket|path|target|mount|scope))"
        r"(?: - .*)?\.?$",
        "unit_started",
    ),
    rule(
        r"Stopp(?:ed|ing) (?:auditd\.service|Security Auditing Service|"
        r"Security Audit Logging Service)",
        "audit_stopped",
        service="auditd",
    ),
    rule(r"(?P<detail>[\w@:.\\-]+\.(?:service|timer)): Deactivated successfully", None),
]
_CRON = [
    # cron after `crontab -e`/`crontab FILE`: "(root) RELOAD (crontabs/root)"; cronie:
    # "(root) RELOAD (/var/spool/cron/root)"; files dropped in /etc/cron.d: "(*system*foo)
    # RELOAD (/etc/cron.d/foo)" or "(*system*) NEW INODE".
    rule(r"\((?P<user>[^)]+)\) RELOAD \((?P<detail>[^)]+)\)", "cron_reload"),
    rule(
        r"\((?P<user>\*system\*[^)]*)\) (?:NEW INODE|WRONG INODE INFO|INSECURE MODE)"
        r"(?: \((?P<detail>[^)]+)\))?",
        "cron_reload",
    ),
    rule(r"\((?P<user>[^)]+)\) (?:CMD|END|MAIL|INFO|BEGIN EDIT|END EDIT|LIST)", None),
    rule(r"pam_unix\(cron:session\)", None),
]
_CRONTAB = [
    # "(root) REPLACE (root)": who replaced whose crontab; BEGIN/END EDIT around `-e`.
    rule(r"\((?P<method>[^)]+)\) REPLACE \((?P<user>[^)]+)\)", "crontab_changed"),
    rule(r"\([^)]+\) (?:BEGIN EDIT|END EDIT|LIST|DELETE)", None),
]
_ATD = [
    rule(r"Starting job (?P<detail>\d+) \(\S+\) for user '(?P<user>[^']+)'", "at_job"),
    rule(r"Userid \d+ not found - aborting job (?P<detail>\d+)", None),
]
_AUDITD = [
    rule(r"The audit daemon is exiting\.?", "audit_stopped"),
    rule(r"(?:Audit daemon rotating log files|Init complete|audit dispatcher)", None),
]

RULES = {
    "systemd": _SYSTEMD,
    "init": _SYSTEMD,
    "cron": _CRON,
    "CRON": _CRON,
    "crond": _CRON,
    "crontab": _CRONTAB,
    "atd": _ATD,
    "auditd": _AUDITD,
}
