"""What one log line says, once parsed. The raw line never goes further than the parser:
detectors see these fields only, and alerts carry only what the detectors put in entities
(user and source pseudonymised by the anonymiser when internal)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# outcome values, by kind of event (docs/HOST_LOGS.md lists the messages behind each):
#   authentication: failure, success, invalid_user (a guess on an unknown account),
#                   unknown_user (a connection naming one), max_attempts, pam_failure,
#                   probe, disconnect, not_allowed
#   accounts:       user_added, user_deleted, user_modified, uid_changed, group_added,
#                   group_member_added, password_changed
#   privilege:      sudo, sudo_denied, su
#   persistence:    unit_started, crontab_changed, cron_reload, at_job
#   logging:        audit_stopped, audit_disabled, log_truncated, log_deleted,
#                   journal_removed, key_file_changed; exec (audit EXECVE)
AUTH_FAILURES = frozenset(("failure", "invalid_user"))


# Not frozen: a frozen dataclass's __init__ costs twice as much, and one is made per event
# on the log path; nothing writes to an event after the parser made it.
@dataclass(slots=True)
class LogEvent:
    ts: float  # the line's own time (seconds since the epoch)
    service: str  # the program that logged it ("sshd", "sudo", "useradd", "auditd"...)
    outcome: str  # see above
    user: str = ""  # the account acted upon (target of a login, of sudo: the invoker)
    source: str = ""  # the remote address or host name, '' when local
    method: str = ""  # password, publickey, keyboard-interactive, pam, ...
    detail: str = ""  # a group, unit, uid or path the outcome is about (never a message)
    origin: str = ""  # where it was read: a file path or "journal:<dir>" (stays local)
    pid: int = 0  # the logging process, 0 when unknown
    uid: int = -1  # the logging process's uid (journal _UID), -1 when unknown

    def as_dict(self) -> dict[str, Any]:
        """For `replay-logs --events` (local output only: names in clear)."""
        d = asdict(self)
        return {"time": d.pop("ts"), **d}
