"""Cleartext authentication (FTP, Telnet, HTTP Basic): reported, passwords never kept."""

from __future__ import annotations

import base64
from dataclasses import fields

import pytest

from agent.decode.deep.auth import (
    FtpState,
    HttpRequest,
    TelnetState,
    parse_ftp,
    parse_http,
    parse_telnet,
)
from agent.decode.deep.common import Malformed
from tests.conftest import CORPUS
from tests.deep_support import messages, needs_corpus


def values(obj: object) -> str:
    return " ".join(str(getattr(obj, f.name)) for f in fields(obj))  # type: ignore[arg-type]


def test_ftp_commands_and_replies() -> None:
    user, pw = parse_ftp(b"USER alice\r\nPASS s3cret!\r\n", from_server=False)
    assert (user.command, user.user, pw.command, pw.event) == ("USER", "alice", "PASS", "password")
    assert "s3cret" not in values(pw) + values(user)
    (ok,) = parse_ftp(b"230-Welcome\r\n230 Login successful.\r\n", from_server=True)
    assert ok.event == "login_ok"
    (bad,) = parse_ftp(b"530 Login incorrect.\r\n", from_server=True)
    assert bad.event == "login_failed" and bad.code == 530
    assert parse_ftp(b"331 Please specify the password.\r\n", from_server=True) == []
    st = FtpState()
    parse_ftp(b"SYST\r\n", False, st)
    assert [m.event for m in parse_ftp(b"530 Please login.\r\n", True, st)] == [""]


def test_http_basic_keeps_only_the_user() -> None:
    cred = base64.b64encode(b"bob:hunter2").decode()
    req = (
        f"GET /x?patient=1 HTTP/1.1\r\nHost: Intranet.Local\r\nAuthorization: Basic {cred}\r\n\r\n"
    )
    m = parse_http(req.encode())
    assert isinstance(m, HttpRequest)
    assert (m.method, m.host, m.version, m.basic_auth, m.basic_user) == (
        "GET", "intranet.local", "1.1", True, "bob",
    )  # fmt: skip
    assert "hunter2" not in values(m) and cred not in values(m) and "patient" not in values(m)


def test_http_edge_cases() -> None:
    m = parse_http(b"OPTIONS * HTTP/1.1\nHost: a\n\n")
    assert isinstance(m, HttpRequest) and m.host == "a"
    assert parse_http(b"GET a b c HTTP/1.1\r\n") == Malformed("http_bad_request_line")
    assert parse_http(b"HTTP/1.1 200 OK\r\n\r\n") is None
    broken = parse_http(b"GET / HTTP/1.0\r\nAuthorization: Basic %%%\r\n\r\n")
    assert isinstance(broken, HttpRequest) and broken.basic_auth and broken.basic_user == ""


def test_telnet_dialogue() -> None:
    st = TelnetState()
    assert [e.event for e in parse_telnet(b"\xff\xfd\x18Debian\r\nhost login: ", True, st)] == [
        "login_prompt"
    ]
    got = []
    for c in b"root\r\n":
        got += parse_telnet(bytes([c]), False, st)
    assert [(e.event, e.user) for e in got] == [("user_sent", "root")]
    assert [e.event for e in parse_telnet(b"Password: ", True, st)] == ["password_prompt"]
    typed = []
    for c in b"toor\r":
        typed += parse_telnet(bytes([c]), False, st)
    assert [e.event for e in typed] == ["password_sent"]
    assert b"toor" not in bytes(st.typed) and "toor" not in values(typed[0])
    assert [e.event for e in parse_telnet(b"\r\nLogin incorrect\r\nhost login: ", True, st)] == [
        "login_failed",
        "login_prompt",
    ]


@needs_corpus
def test_ftp_bruteforce_30_failures() -> None:
    msgs, stats = messages(CORPUS / "bruteforce/ftp_bruteforce_30_failed_logins.pcap")
    ftp = [m for m in msgs if m.kind == "ftp"]
    assert sum(m.event == "login_failed" for m in ftp) == 30
    assert sum(m.event == "login_ok" for m in ftp) == 0
    assert {m.user for m in ftp if m.command == "USER"} == {"bro"}
    assert sum(m.command == "PASS" for m in ftp) == 30
    assert not stats.malformed


@needs_corpus
def test_ftp_single_failure_ipv6() -> None:
    msgs, _ = messages(CORPUS / "bruteforce/ftp_single_failed_login_ipv6.pcap")
    # the second 530 answers SYST ("log in first"): not a second failure
    assert [m.event for m in msgs if m.kind == "ftp" and m.code] == ["login_failed", ""]


@needs_corpus
def test_benign_mix() -> None:
    msgs, stats = messages(CORPUS / "benign/benign_mixed_ssh_http_ftp_dns_ntp.pcap")
    kinds = {m.kind for m in msgs}
    assert {"dns", "http", "ftp"} <= kinds
    assert any(m.kind == "ftp" and m.event == "login_ok" for m in msgs)
    assert not stats.malformed


@needs_corpus
@pytest.mark.parametrize("capture", sorted(p.name for p in (CORPUS / "http").glob("*.pcap*")))
def test_http_corpus(capture: str) -> None:
    msgs, _ = messages(CORPUS / "http" / capture)
    reqs = [m for m in msgs if m.kind == "http"]
    assert reqs and all(m.method for m in reqs)
    assert any(m.host for m in reqs)
