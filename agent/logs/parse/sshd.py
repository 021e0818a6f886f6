"""OpenSSH's server (sshd; sshd-session and sshd-auth since OpenSSH 9.8), at its default
LogLevel INFO and at VERBOSE. Messages as OpenSSH 7.x to 9.x word them (auth.c,
auth2.c, sshd.c, packet.c); docs/HOST_LOGS.md lists them."""

from __future__ import annotations

from agent.logs.parse.common import rule

_FROM = r"(?P<source>[0-9A-Fa-f:.]+|\S+) port \d+"
_WHO = r"(?:(?P<invalid>invalid user )?(?P<user>.*?)|)"
# Methods that are a guess; "none" is how every client starts (asking which methods work).
_GUESS = r"(?P<method>password|keyboard-interactive(?:/\S+)?|publickey|hostbased|gssapi-\S+)"

_RULES = [
    rule(rf"Failed {_GUESS} for invalid user (?P<user>.*?) from {_FROM}", "invalid_user"),
    rule(rf"Failed {_GUESS} for (?P<user>.*?) from {_FROM}", "failure"),
    rule(rf"Failed none for (?:invalid user )?(?P<user>.*?) from {_FROM}", "probe", method="none"),
    rule(rf"Accepted (?P<method>\S+) for (?P<user>.*?) from {_FROM}", "success"),
    # The account does not exist: one line per connection, before any guess ("Failed
    # password for invalid user" follows for each guess).
    rule(rf"Invalid user (?P<user>.*?) from {_FROM}", "unknown_user", method="username"),
    rule(r"input_userauth_request: invalid user (?P<user>.*?) \[preauth\]", None),
    rule(
        rf"(?:error: )?maximum authentication attempts exceeded for (?:invalid user )?"
        rf"(?P<user>.*?) from {_FROM}",
        "max_attempts",
    ),
    rule(
        rf"Disconnecting (?:authenticating|invalid) user (?P<user>.*?) {_FROM}: "
        r"Too many authentication failures",
        "max_attempts",
    ),
    rule(
        rf"(?:Disconnected from|Connection closed by|Connection reset by) "
        rf"(?:authenticating |invalid )user (?P<user>.*?) {_FROM}(?: \[preauth\])?$",
        "disconnect",
    ),
    rule(
        rf"(?:Disconnected from|Connection closed by|Connection reset by) {_FROM} \[preauth\]",
        "disconnect",
    ),
    rule(rf"Received disconnect from {_FROM}:\d+: .*\[preauth\]", "disconnect"),
    rule(
        rf"(?:banner exchange: Connection from|Unable to negotiate with|"
        rf"kex_exchange_identification: .*? from|error: kex_exchange_identification.*? from|"
        rf"Bad protocol version identification .* from|"
        rf"Did not receive identification string from) {_FROM}",
        "probe",
        method="protocol",
    ),
    rule(rf"fatal: Timeout before authentication for {_FROM}", "probe", method="timeout"),
    rule(
        r"User (?P<user>\S+) from (?P<source>\S+) not allowed because (?P<detail>.*)",
        "not_allowed",
    ),
    rule(r"ROOT LOGIN REFUSED FROM (?P<source>\S+)", "not_allowed"),
    rule(
        r"PAM \d+ more authentication failures?; .*?rhost=(?P<source>\S*)"
        r"(?:\s+user=(?P<user>\S+))?",
        "pam_failure",
        method="pam",
    ),
    rule(
        r"pam_unix\(sshd:auth\): authentication failure; .*?rhost=(?P<source>\S*)"
        r"(?:\s+user=(?P<user>\S+))?",
        "pam_failure",
        method="pam",
    ),
    rule(r"pam_unix\(sshd:auth\): check pass; user unknown", None),
    rule(r"pam_unix\(sshd:session\): session (?:opened|closed)", None),
    rule(
        r"(?:Connection from|Postponed|Starting session|Close session|Server listening|"
        r"Received signal|Transferred|pam_env|pam_systemd|debug|Exiting|error: "
        r"Received disconnect|Connection closed by \S+ port \d+$|"
        r"Disconnected from user|Received disconnect from .*disconnected by user|"
        r"User child is on pid|Changed root directory|Accepted key)",
        None,
    ),
]
RULES = {"sshd": _RULES}
ALIASES = {"sshd-session": "sshd", "sshd-auth": "sshd"}
