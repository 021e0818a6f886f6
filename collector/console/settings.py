"""[console]: the analysts' web console (off unless `listen` is set)."""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from common.config import Option, at_least, check_listen, positive


def _zone(value: str) -> str | None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        return f"must be a time zone name such as Europe/Paris, got {value!r}"
    return None


OPTIONS = {
    "listen": Option(
        str,
        "",
        "HTTPS address of the web console, HOST:PORT ('' : no console). Put it behind the\n"
        "operator's reverse proxy for analysts outside the national network (docs/CONSOLE.md).",
        check_listen,
    ),
    "certificate": Option(
        str,
        "",
        "PEM certificate (chain) the console serves. Empty: the collector's own server\n"
        "certificate from its PKI (browsers then need the collector's CA).",
    ),
    "key": Option(str, "", "PEM private key of `certificate` (empty with it)."),
    "client_certificates": Option(
        bool,
        True,
        "Let an analyst whose browser holds a certificate from the collector's CA sign in\n"
        "with it (no password). Agent and revoked certificates are refused either way.",
    ),
    "totp": Option(
        bool, True, "Ask for a TOTP code (RFC 6238) after the password. Turn off only in tests."
    ),
    "session_hours": Option(float, 10.0, "A session ends this long after sign-in.", positive),
    "idle_minutes": Option(
        float, 60.0, "A session unused for this long ends (a live page keeps it in use).", positive
    ),
    "login_failures": Option(
        int,
        5,
        "Failed sign-ins in a row on one account before each further try must wait\n"
        "(lock_seconds, doubling at each failure).",
        at_least(1),
    ),
    "address_failures": Option(
        int,
        20,
        "Failed sign-ins from one client address within 5 minutes (whatever the account)\n"
        "before each further try from it must wait, the wait doubling at each failure.\n"
        "Higher than login_failures: many analysts may share a proxy's address.",
        at_least(1),
    ),
    "lock_seconds": Option(
        float, 300.0, "How long an account waits once past login_failures (doubling).", positive
    ),
    "time_zone": Option(
        str,
        "Europe/Paris",
        "Time zone of the dates shown until the analyst's browser tells its own.",
        _zone,
    ),
    "overview_cache_seconds": Option(
        float,
        30.0,
        "The overview's counts are computed at most this often per role (a week of alerts\n"
        "is read once for every analyst and wall screen).",
        at_least(0),
    ),
    "live_poll_seconds": Option(
        float, 0.5, "How often a live page's event stream reads the incident feed.", positive
    ),
}
