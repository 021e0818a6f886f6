"""Cleartext authentication: FTP USER/PASS and their 230/530 answers, Telnet login
prompts, HTTP requests (method, Host, Basic credentials).

Passwords are never kept: a PASS command or a Basic header is reported as present, with
the user name only (personal data: detectors hand it to the anonymiser as a user entity).
The Basic credential is decoded into a local that goes out of scope at once.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass, field
from typing import Any

from agent.decode.deep.common import Malformed

__all__ = [
    "HTTP_METHODS",
    "FtpMessage",
    "FtpState",
    "HttpRequest",
    "TelnetEvent",
    "TelnetState",
    "parse_ftp",
    "parse_http",
    "parse_telnet",
]

MAX_USER = 128
MAX_HEADERS = 8192  # header block we look at; the body is never read
HTTP_METHODS = frozenset(
    (b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"CONNECT", b"TRACE", b"PATCH")
)
HTTP_FIRST = frozenset(m[0] for m in HTTP_METHODS)  # cheap first-byte filter


@dataclass(slots=True)
class FtpMessage:
    command: str  # "USER", "PASS", or "" for a reply
    user: str = ""  # USER argument (personal data)
    code: int = 0  # reply code
    event: str = ""  # "user", "password", "login_ok", "login_failed"
    kind: str = "ftp"
    ts: float = 0.0
    flow: Any = field(default=None, repr=False, compare=False)


@dataclass(slots=True)
class TelnetEvent:
    event: str  # login_prompt, password_prompt, login_failed, login_ok, user_sent, password_sent
    user: str = ""  # user_sent only (personal data)
    kind: str = "telnet"
    ts: float = 0.0
    flow: Any = field(default=None, repr=False, compare=False)


@dataclass(slots=True)
class HttpRequest:
    method: str
    host: str  # Host header, lowercased, "" if absent
    version: str
    basic_auth: bool = False  # an Authorization/Proxy-Authorization: Basic header is present
    basic_user: str = ""  # its user name; the password is dropped unread
    kind: str = "http"
    ts: float = 0.0
    flow: Any = field(default=None, repr=False, compare=False)


class FtpState:
    """The last client command: a 530 is a failed login only in answer to USER or PASS."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = ""


def parse_ftp(
    payload: bytes, from_server: bool, st: FtpState | None = None
) -> list[FtpMessage | Malformed]:
    """One FTP control segment: client commands or server replies, line by line."""
    out: list[FtpMessage | Malformed] = []
    for line in payload[:4096].split(b"\n")[:32]:
        line = line.rstrip(b"\r")
        if not line:
            continue
        if from_server:
            # Only the last line of a multi-line reply ("230-..." ... "230 ...") counts.
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in (b" ", b""):
                continue
            code = int(line[:3])
            if code == 230:
                out.append(FtpMessage("", code=code, event="login_ok"))
            elif code == 530:
                # 530 to another command means "log in first", not a wrong password.
                auth = st is None or st.last in ("USER", "PASS")
                out.append(FtpMessage("", code=code, event="login_failed" if auth else ""))
        else:
            verb = line.split(b" ", 1)[0].upper()
            if st is not None:
                st.last = verb[:8].decode("latin-1")
            if verb == b"USER":
                user = line[5 : 5 + MAX_USER].decode("utf-8", "replace").strip()
                out.append(FtpMessage("USER", user=user, event="user"))
            elif verb == b"PASS":
                out.append(FtpMessage("PASS", event="password"))
    return out


class TelnetState:
    """Which prompt the server last showed, and the line the client is typing after it."""

    __slots__ = ("expect", "typed")

    def __init__(self) -> None:
        self.expect = ""  # "user" after login:, "password" after Password:
        self.typed = bytearray()


def _strip_iac(b: bytes) -> bytes:
    # Option negotiation (IAC ...) is noise between the characters we want to read.
    if 0xFF not in b:
        return b
    out = bytearray()
    i, n = 0, len(b)
    while i < n:
        c = b[i]
        if c != 0xFF:
            out.append(c)
            i += 1
        elif i + 1 < n and b[i + 1] in (0xFB, 0xFC, 0xFD, 0xFE):
            i += 3
        elif i + 1 < n and b[i + 1] == 0xFA:  # subnegotiation, up to IAC SE
            j = b.find(b"\xff\xf0", i + 2)
            i = n if j < 0 else j + 2
        elif i + 1 < n and b[i + 1] == 0xFF:
            out.append(0xFF)
            i += 2
        else:
            i += 2
    return bytes(out)


def parse_telnet(payload: bytes, from_server: bool, st: TelnetState) -> list[TelnetEvent]:
    """Login dialogue of one Telnet segment; `st` carries the prompt state across segments."""
    data = _strip_iac(payload[:4096])
    out: list[TelnetEvent] = []
    if from_server:
        low = data.lower()
        if b"incorrect" in low or b"failed" in low or b"denied" in low:
            out.append(TelnetEvent("login_failed"))
            st.expect = ""
        elif b"last login" in low or (st.expect == "done" and low.rstrip().endswith((b"$", b"#"))):
            out.append(TelnetEvent("login_ok"))
            st.expect = ""
        if low.rstrip().endswith(b"login:") or low.rstrip().endswith(b"username:"):
            out.append(TelnetEvent("login_prompt"))
            st.expect = "user"
            st.typed.clear()
        elif low.rstrip().endswith(b"password:"):
            out.append(TelnetEvent("password_prompt"))
            st.expect = "password"
            st.typed.clear()
        return out
    if st.expect not in ("user", "password"):
        return out
    for c in data:
        if c in (0x0D, 0x0A, 0x00):
            if st.expect == "user" and st.typed:
                user = st.typed.decode("utf-8", "replace")
                out.append(TelnetEvent("user_sent", user=user))
                st.expect = ""
            elif st.expect == "password":
                out.append(TelnetEvent("password_sent"))
                st.expect = "done"  # next server line tells success or failure
            st.typed.clear()
            break
        if st.expect == "user" and len(st.typed) < MAX_USER:
            st.typed.append(c)  # password characters are never buffered
    return out


def looks_like_http(payload: bytes) -> bool:
    sp = payload.find(b" ", 0, 8)
    return sp > 0 and payload[:sp] in HTTP_METHODS


def parse_http(payload: bytes) -> HttpRequest | Malformed | None:
    """Request line and the two headers we need; None if this is not a request start."""
    sp = payload.find(b" ", 0, 8)
    if sp <= 0 or payload[:sp] not in HTTP_METHODS:
        return None
    # Lines end with CRLF, but bare LF is common enough (scripts, scanners) to accept.
    lines = payload[:MAX_HEADERS].split(b"\n")
    req = lines[0].rstrip(b"\r").split()
    if len(req) == 2:
        req.append(b"HTTP/0.9")  # simple request: method and target only
    if len(req) != 3 or not req[2].startswith(b"HTTP/"):
        return Malformed("http_bad_request_line")
    msg = HttpRequest(req[0].decode("ascii"), "", req[2][5:].decode("latin-1"))
    for line in lines[1:]:
        line = line.rstrip(b"\r")
        if not line:
            break  # end of the header block: the body is never read
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"host":
            msg.host = value.strip().decode("latin-1").lower()
        elif name in (b"authorization", b"proxy-authorization"):
            scheme, _, cred = value.strip().partition(b" ")
            if scheme.lower() == b"basic":
                msg.basic_auth = True
                try:
                    user = binascii.a2b_base64(cred.strip()).split(b":", 1)[0]
                except (binascii.Error, ValueError):
                    user = b""
                msg.basic_user = user[:MAX_USER].decode("utf-8", "replace")
    return msg
