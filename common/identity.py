"""The one set of rules for who and where: FINESS, GHT, region, agent ids, analyst names,
roles, and the names of incident statuses.

Every command that takes these values (`vigie-collector token create`, `pki issue-agent`,
`pki issue-analyst`), the enrollment token registry, the CA and the reading of a client
certificate check them here, so that a value refused in one place is refused in all: such
values end up in incident keys, STIX objects, syslog lines and file names.

Each check returns the value unchanged or raises `InvalidValue` (a ValueError), whose
message names the field and says what is allowed, quoting at most a short prefix of the
value refused.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable

from vigie.v1 import analyst_pb2

# A FINESS number: 9 characters, the first two the département (2A and 2B for Corsica).
FINESS_RE = re.compile(r"[0-9][0-9AB][0-9]{7}")
# GHT and region codes: what `token create` has always accepted.
CODE_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Agent ids (pki.new_agent_id(): agt-<16 hex>) and analyst names (jdupont, ars-84,
# jean.dupont@ars.sante.fr): a letter or digit first, so never '-x', '.' or '..'.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
REGIONAL_PREFIX = "regional:"

FINESS_RULE = "a FINESS number is 9 characters: a digit, a digit or A or B, then 7 digits"
CODE_RULE = "use 1-64 characters of A-Z a-z 0-9 . _ -"
NAME_RULE = "use 1-64 characters of A-Z a-z 0-9 . _ @ -, starting with a letter or digit"
ROLE_RULE = "a role is 'national' or 'regional:<region>', the region 1-64 of A-Z a-z 0-9 . _ -"

SHOWN_CHARS = 40


class InvalidValue(ValueError):
    """A value refused by one of the checks below. `field` is how the caller named it
    (`--finess`, `finess`...), `allowed` what would have been accepted."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        self.field = field
        self.allowed = allowed
        self.shown = shown(value)
        super().__init__(f"{field} {self.shown}: {allowed}")


def shown(value: object) -> str:
    """The value as quoted in an error message: repr'd, and cut after a few characters so
    that a hostile value cannot flood a terminal or a log line."""
    if not isinstance(value, str):
        return f"<{type(value).__name__}>"
    if len(value) > SHOWN_CHARS:
        return f"{value[:SHOWN_CHARS]!r}... ({len(value)} characters)"
    return repr(value)


def _check(pattern: re.Pattern[str], rule: str, value: object, field: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidValue(field, value, rule)
    return value


def check_finess(value: str, field: str = "finess") -> str:
    return _check(FINESS_RE, FINESS_RULE, value, field)


def check_ght(value: str, field: str = "ght") -> str:
    return _check(CODE_RE, CODE_RULE, value, field)


def check_region(value: str, field: str = "region") -> str:
    return _check(CODE_RE, CODE_RULE, value, field)


def check_agent_id(value: str, field: str = "agent id") -> str:
    return _check(NAME_RE, NAME_RULE, value, field)


def check_analyst_name(value: str, field: str = "analyst name") -> str:
    return _check(NAME_RE, NAME_RULE, value, field)


def check_role(value: str, field: str = "role") -> str:
    """'national', or 'regional:<region>' with a valid region code."""
    if value == "national":
        return value
    if (
        isinstance(value, str)
        and value.startswith(REGIONAL_PREFIX)
        and CODE_RE.fullmatch(value.removeprefix(REGIONAL_PREFIX))
    ):
        return value
    raise InvalidValue(field, value, ROLE_RULE)


def is_valid_role(value: str) -> bool:
    try:
        check_role(value)
    except InvalidValue:
        return False
    return True


def check_site(finess: str, ght: str, region: str) -> None:
    """The three values that place an agent: all valid, or InvalidValue for the first not."""
    check_finess(finess)
    check_ght(ght)
    check_region(region)


def argument(check: Callable[[str, str], str]) -> Callable[[str], str]:
    """A check as an argparse `type=`: a refused value makes the command exit 2 with the
    check's message, naming the option, before any of the command's work is done."""

    def parse(value: str) -> str:
        try:
            return check(value, "value")
        except InvalidValue as exc:
            raise argparse.ArgumentTypeError(f"{exc.shown}: {exc.allowed}") from None

    return parse


# Incident statuses ------------------------------------------------------------------------
# One spelling everywhere: the analysts' command line (text and --json), the JSON lines,
# syslog and STIX sinks.

STATUS_NAMES: dict[int, str] = {
    analyst_pb2.STATUS_OPEN: "open",
    analyst_pb2.STATUS_ACKNOWLEDGED: "acknowledged",
    analyst_pb2.STATUS_CLOSED: "closed",
}
STATUS_VALUES: dict[str, int] = {name: value for value, name in STATUS_NAMES.items()}
STATUS_RULE = "a status is one of " + ", ".join(STATUS_VALUES)


def status_name(value: int) -> str:
    """'open', 'acknowledged' or 'closed'; 'unspecified' for 0, the number for anything else
    (a newer collector's status is shown, not hidden)."""
    if value in STATUS_NAMES:
        return STATUS_NAMES[value]
    return "unspecified" if value == analyst_pb2.STATUS_UNSPECIFIED else str(value)


def status_value(name: str, field: str = "status") -> int:
    """The enum value of 'open', 'acknowledged' or 'closed'; InvalidValue otherwise."""
    try:
        return STATUS_VALUES[name]
    except (KeyError, TypeError):
        raise InvalidValue(field, name, STATUS_RULE) from None
