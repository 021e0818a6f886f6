"""auditd's records (/var/log/audit/audit.log, or forwarded to syslog): logins and
authentications from PAM, account and group changes from shadow-utils, the audit
daemon's own end, and EXECVE/PATH records where the operator set rules for them."""

from __future__ import annotations

import re

from agent.logs.event import LogEvent

HEADER = re.compile(r"type=(\S+) msg=audit\((\d+\.\d+):(\d+)\): ?(.*)", re.S)
_FIELD = re.compile(r"(\w+)=(\"[^\"]*\"|'[^']*'|\S+)")
_HEX = re.compile(r"(?:[0-9A-F]{2})+")
_READ = frozenset(
    (
        "USER_AUTH",
        "USER_LOGIN",
        "ADD_USER",
        "ADD_GROUP",
        "USER_MGMT",
        "GRP_MGMT",
        "USER_CHAUTHTOK",
        "DAEMON_END",
        "CONFIG_CHANGE",
        "EXECVE",
        "SERVICE_START",
        "PATH",
        "USER_ACCT",
        "CRED_ACQ",
    )
)


def _fields(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in _FIELD.findall(text):
        if v[0] in "\"'":
            if v[0] == "'":  # msg='...': the user-space part, fields of its own
                out.update(_fields(v[1:-1]))
                continue
            v = v[1:-1]
        elif k in ("acct", "exe", "grp", "a0", "a1", "name", "unit") and _HEX.fullmatch(v):
            v = bytes.fromhex(v).decode("utf-8", "replace")  # auditd's encoding of odd text
        out.setdefault(k, v)
    return out


def _base(path: str) -> str:
    return path.rsplit("/", 1)[-1] if path and path != "?" else ""


def parse(line: str, origin: str = "") -> LogEvent | None:
    m = HEADER.match(line)
    if m is None:
        return None
    kind = m.group(1)
    if kind not in _READ:
        return None
    ts = float(m.group(2))
    f = _fields(m.group(4))
    service = _base(f.get("exe", "")) or f.get("comm", "") or "auditd"
    service = {"sshd-session": "sshd", "sshd-auth": "sshd"}.get(service, service)
    user = f.get("acct", "")
    if user in ("?", "(unknown)"):
        user = ""
    # addr is the peer; hostname is this host's own name for local terminals.
    source = f.get("addr", "")
    if source == "?":
        source = ""
    ok = f.get("res", "") in ("success", "1")
    pid = int(f["pid"]) if f.get("pid", "").isdigit() else 0

    def ev(outcome: str, **kw) -> LogEvent:
        base = {"user": user, "source": source, "pid": pid, "origin": origin}
        return LogEvent(ts, kw.pop("service", service), outcome, **(base | kw))

    op = f.get("op", "")
    if kind == "USER_AUTH":
        # A failure is a guess; the success is followed by USER_LOGIN, the event.
        return None if ok else ev("failure", method="pam")
    if kind == "USER_LOGIN":
        if not ok:
            return None  # each guess was already a USER_AUTH (or sshd's own line)
        if not user and f.get("id", "").isdigit():
            user = f"uid:{f['id']}"
        return ev("success", method="login")
    if kind == "ADD_USER" and ok:
        return ev("user_added", user=user or f.get("id", ""), detail=f.get("id", ""))
    if kind == "ADD_GROUP" and ok:
        return ev("group_added", user="", detail=f.get("grp", "") or f.get("id", ""))
    if kind in ("USER_MGMT", "GRP_MGMT") and ok and "group" in op and f.get("grp"):
        if "add" in op or "adding" in op:
            return ev("group_member_added", detail=f["grp"])
        return None
    if (kind == "USER_CHAUTHTOK" and ok and "password" in op.lower()) or (
        kind == "USER_CHAUTHTOK" and ok and op.startswith("PAM:chauthtok")
    ):
        return ev("password_changed", method="audit")
    if kind == "DAEMON_END":
        return ev("audit_stopped", service="auditd", user="", source="")
    if kind == "CONFIG_CHANGE" and f.get("audit_enabled") == "0" and ok:
        return ev("audit_disabled", service="auditd", user="", source="")
    if kind == "SERVICE_START" and ok and f.get("unit"):
        return ev("unit_started", service="systemd", user="", source="", detail=f["unit"])
    if kind == "EXECVE" and f.get("a0"):
        return ev(
            "exec",
            service=_base(f["a0"]) or f["a0"],
            user="",
            source="",
            detail=_base(f["a0"]),
            method=f.get("a1", "")[:32],
        )
    if (
        kind == "PATH"
        and f.get("name", "").endswith("/authorized_keys")
        and f.get("nametype") in ("CREATE", "NORMAL", "DELETE")
    ):
        return ev("key_file_changed", service="auditd", user="", source="", detail=f["name"])
    return None
