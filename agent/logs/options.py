"""The [logs] section: which logs the agent follows and how far back it catches up."""

from __future__ import annotations

from common.config import Option, at_least, positive


def _paths(value: list) -> str | None:
    for item in value:
        if not isinstance(item, str) or not item.startswith("/"):
            return f"holds {item!r}, which is not an absolute path or glob"
    return None


OPTIONS = {
    "enabled": Option(
        bool,
        True,
        "run: follow the host's logs (the journal and the files below) for the log "
        "detectors (auth_guessing, auth_compromise, privilege, persistence, log_tampering).",
    ),
    "files": Option(
        list,
        [
            "/var/log/auth.log",
            "/var/log/secure",
            "/var/log/syslog",
            "/var/log/messages",
            "/var/log/cron",
            "/var/log/cron.log",
            "/var/log/audit/audit.log",
        ],
        "Text logs followed like tail -F (absolute paths or globs; missing ones are picked "
        "up when they appear; rotated and compressed copies are never read).",
        _paths,
    ),
    "journal": Option(
        bool, True, "Read the systemd journal natively (libsystemd) where there is one."
    ),
    "journal_dirs": Option(
        list,
        ["/var/log/journal", "/run/log/journal"],
        "Journal directories (persistent, volatile); each read from its own cursor.",
        _paths,
    ),
    "catch_up": Option(
        float,
        3600.0,
        "Seconds of backlog read after a restart, a crash or at first start; older lines "
        "are counted (vigie_agent_log_backlog_skipped_total) and said once, not read.",
        at_least(0),
    ),
    "poll_seconds": Option(float, 1.0, "Seconds between two looks at the logs.", positive),
    "key_files": Option(
        list,
        [
            "/root/.ssh/authorized_keys",
            "/root/.ssh/authorized_keys2",
            "/home/*/.ssh/authorized_keys",
            "/home/*/.ssh/authorized_keys2",
        ],
        "authorized_keys files (globs) whose change host.privilege reports.",
        _paths,
    ),
    "max_line_bytes": Option(
        int, 16384, "Longer lines are cut (counted) before parsing.", at_least(256)
    ),
}
