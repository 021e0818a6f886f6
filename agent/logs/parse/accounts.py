"""shadow-utils (useradd, usermod, userdel, groupadd, groupmod, gpasswd, passwd, chpasswd,
newusers): the lines they write to the authpriv facility, as shadow 4.x words them."""

from __future__ import annotations

from agent.logs.parse.common import rule

_USER_ADDED = rule(r"new user: name=(?P<user>[^,]+), UID=(?P<detail>\d+)", "user_added")
_GROUP_ADDED = rule(r"new group: name=(?P<detail>[^,]+), GID=\d+", "group_added")
_MEMBER = [
    rule(r"add '(?P<user>[^']+)' to (?:shadow )?group '(?P<detail>[^']+)'", "group_member_added"),
    rule(r"user (?P<user>\S+) added by \S+ to group (?P<detail>\S+)", "group_member_added"),
    rule(r"add member '?(?P<user>[^' ]+)'? to group '?(?P<detail>[^' ]+)'?", "group_member_added"),
]
_PASSWORD = rule(
    r"password for '(?P<user>[^']+)' changed by '[^']*'", "password_changed", method="passwd"
)
_IGNORE = rule(
    r"(?:group added to |new user added|failed adding|running |lock user|unlock user|"
    r"members of group|group '.*' (?:members|administrators)|change user '[^']+' "
    r"(?:home|shell|expiration|inactive|comment|password)|delete '.*' from (?:shadow )?group|"
    r"removed (?:shadow )?group|delete '|group '[^']+' removed|"
    r"(?:change|changed) password expiry|password of group)",
    None,
)

_RULES = [
    _USER_ADDED,
    _GROUP_ADDED,
    *_MEMBER,
    rule(r"change user '(?P<user>[^']+)' UID from '\d+' to '(?P<detail>\d+)'", "uid_changed"),
    rule(r"change user name '[^']+' to '(?P<user>[^']+)'", "user_modified"),
    rule(r"delete user '(?P<user>[^']+)'", "user_deleted"),
    rule(r"group changed in /etc/group \(group (?P<detail>\S+)/\d+, new name", "group_added"),
    _PASSWORD,
    _IGNORE,
]

RULES = {
    p: _RULES
    for p in (
        "useradd",
        "usermod",
        "userdel",
        "groupadd",
        "groupmod",
        "groupdel",
        "gpasswd",
        "passwd",
        "chpasswd",
        "newusers",
        "chage",
        "adduser",
        "addgroup",
        "vipw",
    )
}
