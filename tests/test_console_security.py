"""The web console's doors, over real HTTPS to a running collector: sign-in with password
and TOTP, session cookie flags, CSRF, CSP, role scoping, the audit trail, certificates."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests import console_support as cs
from tests.conftest import tool


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console")
    cc = cs.start(tmp)
    cc.add_user("nat", "national")
    cc.add_user("ars-11", "regional:11")
    # A TOTP code is good once (RFC 6238 5.2): each test signs in with an account of its own.
    cc.pool = {"national": [], "regional:11": []}
    for i in range(8):
        cc.add_user(f"nat-{i}", "national", cli=False)
        cc.pool["national"].append(f"nat-{i}")
    for i in range(4):
        cc.add_user(f"ars-11-{i}", "regional:11", cli=False)
        cc.pool["regional:11"].append(f"ars-11-{i}")
    cs.seed_two_regions(cc, tmp)
    cc.tmp = tmp
    yield cc
    cs.stop(cc)


def _signed_in(cc: cs.ConsoleCollector, role: str) -> tuple[cs.Client, str]:
    name = cc.pool[role].pop()
    c = cc.client()
    r, _ = c.sign_in(name, cs.PASSWORD, cc.code(name))
    assert r.status == 303, name
    return c, name


def _audit(cc: cs.ConsoleCollector, sql: str = "", args: tuple = ()) -> list[tuple]:
    with sqlite3.connect(cc.collector.db()) as db:
        return db.execute(
            "SELECT who, role, action, detail, outcome FROM audit " + sql + " ORDER BY n", args
        ).fetchall()


def test_sign_in_sets_a_strict_session_cookie(console) -> None:
    c = console.client()
    r, page = c.get("/")
    assert r.status == 303 and r.getheader("Location").startswith("/login")
    r, _ = c.sign_in("nat", cs.PASSWORD, console.code("nat"))
    assert r.status == 303 and r.getheader("Location") == "/"
    (session,) = [v for v in c.last_set_cookies if v.startswith("__Host-vigie_session=")]
    flags = {f.strip().lower() for f in session.split(";")[1:]}
    assert {"secure", "httponly", "samesite=strict", "path=/"} <= flags
    assert not any(f.startswith("domain") for f in flags)
    r, page = c.get("/")
    assert r.status == 200 and "nat" in page
    # The same code again is refused: a code overheard is good for nothing.
    again = console.client()
    r, page = again.sign_in("nat", cs.PASSWORD, console.code("nat"))
    assert r.status == 401 and "__Host-vigie_session" not in again.cookies


def test_wrong_totp_or_password_is_refused_and_audited(console) -> None:
    c = console.client()
    good = console.code("ars-11", 90)
    wrong = f"{(int(good) + 1) % 1_000_000:06d}"
    r, page = c.sign_in("ars-11", cs.PASSWORD, wrong)
    assert r.status == 401 and "__Host-vigie_session" not in c.cookies
    assert "incorrect" in page  # French by default: "Nom, mot de passe ou code incorrect."
    r, _ = c.sign_in("ars-11", "not the password at all", good)
    assert r.status == 401 and "__Host-vigie_session" not in c.cookies
    outcomes = [row[4] for row in _audit(console, "WHERE action = 'ConsoleSignIn'")]
    assert "bad_totp" in outcomes and "bad_password" in outcomes


def test_every_page_has_the_csp_and_no_inline_script(console) -> None:
    c, _name = _signed_in(console, "national")
    for path in ("/", "/incidents", "/alerts", "/fleet", "/intel", "/audit", "/login"):
        r, page = c.get(path)
        assert r.status in (200, 303), path
        csp = r.getheader("Content-Security-Policy")
        assert "default-src 'self'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert r.getheader("X-Content-Type-Options") == "nosniff"
        scripts = re.findall(r"<script([^>]*)>", page)
        assert all("src=" in s for s in scripts), path
        assert not re.search(r"\son[a-z]+=", page), path  # no inline event handler
        assert " style=" not in page, path


def test_csrf_missing_or_wrong_is_refused(console) -> None:
    c, _name = _signed_in(console, "national")
    _, page = c.get("/incidents?status=any")
    key = cs.incident_keys(page)[0]
    for form in ({"action": "close"}, {"action": "close", "csrf": "x" * 43}):
        r, text = c.post(f"/incidents/{key}/status", form)
        assert r.status == 403 and "CSRF" in text
    _, page = c.get(f"/incidents/{key}")
    assert 'id="status"><span class="status st-open">' in page  # nothing changed
    # From another origin, even with the token: refused.
    r, _ = c.post(
        f"/incidents/{key}/status",
        {"action": "close", "csrf": c.csrf(page)},
        headers={"Origin": "https://evil.example"},
    )
    assert r.status == 403
    # The sign-in form has its own token.
    anon = console.client()
    r, _ = anon.post("/login", {"user": "nat", "password": cs.PASSWORD, "code": "000000"})
    assert r.status == 403


def test_regional_analyst_sees_only_their_region(console) -> None:
    nat, _name = _signed_in(console, "national")
    _, every = nat.get("/incidents?status=any")
    all_keys = cs.incident_keys(every)
    assert len(all_keys) == 3, every  # region 11's, region 84's, and the one spanning both
    reg, _name = _signed_in(console, "regional:11")
    _, page = reg.get("/incidents?status=any")
    own = cs.incident_keys(page)
    assert len(own) == 2 and "GHT-B1" not in page and "GHT-B2" not in page
    (foreign,) = set(all_keys) - set(own)
    r, text = reg.get(f"/incidents/{foreign}")
    assert r.status == 404 and "198.51.100.84" not in text and "GHT-B" not in text
    r, text = reg.get(f"/incidents/{foreign}/stix")
    assert r.status == 404 and "198.51.100.84" not in text
    # Asking for the other region by name: refused outright.
    assert reg.get("/incidents?region=84")[0].status == 403
    assert reg.get("/alerts?region=84")[0].status == 403
    _, alerts = reg.get("/alerts")
    assert "GHT-A1" in alerts and "GHT-B" not in alerts and "844000001" not in alerts
    # The incident spanning both regions shows only region 11's establishments.
    both = next(k for k in own if "203.0.113.66" in reg.get(f"/incidents/{k}")[1])
    _, detail = reg.get(f"/incidents/{both}")
    assert "GHT-A1" in detail and "GHT-B1" not in detail and "844000001" not in detail
    _, fleet = reg.get("/fleet")
    assert "GHT-A1" in fleet and "GHT-B1" not in fleet
    _, fleet = reg.get("/fleet?ght=GHT-A1")
    assert "111000001" in fleet
    _, fleet = reg.get("/fleet?ght=GHT-B1")
    assert "844000001" not in fleet
    # A national analyst's view of the same incident has every site.
    _, detail = nat.get(f"/incidents/{both}")
    assert "GHT-A1" in detail and "GHT-B1" in detail
    # And when the traffic behind it happened, in words and as facts.
    assert "contacted from 4 GHTs (4 establishments)" in detail
    assert '<dd id="traffic-first"><time' in detail and '<dd id="traffic-last"><time' in detail


def test_acknowledge_close_and_views_are_audited(console) -> None:
    c, name = _signed_in(console, "regional:11")
    _, page = c.get("/incidents?status=open")
    key = cs.incident_keys(page)[0]
    _, page = c.get(f"/incidents/{key}")
    for action, comment in (("acknowledge", "looking at it"), ("close", "blocked upstream")):
        r, _ = c.post(
            f"/incidents/{key}/status",
            {"csrf": c.csrf(page), "action": action, "comment": comment},
        )
        assert r.status == 303
        _, page = c.get(f"/incidents/{key}")
    assert "blocked upstream" in page and name in page
    rows = _audit(console, "WHERE who = ? AND detail LIKE ?", (name, f"%{key}%"))
    actions = [(r[2], r[4]) for r in rows]
    assert ("GetIncident", "ok") in actions
    assert [a for a in actions if a[0] == "UpdateIncident"] == [("UpdateIncident", "ok")] * 2
    assert all(r[1] == "regional:11" and "via=console" in r[3] for r in rows)
    # The change reached the store the gRPC service reads.
    with sqlite3.connect(console.collector.db()) as db:
        status, by, comment = db.execute(
            "SELECT status, status_by, status_comment FROM incidents WHERE key = ?", (key,)
        ).fetchone()
    assert (status, by, comment) == (3, name, "blocked upstream")
    # The audit page shows it to the analyst.
    _, audit = c.get("/audit")
    assert "UpdateIncident" in audit and key in audit


def test_logout_ends_the_session(console) -> None:
    c, _name = _signed_in(console, "national")
    old = dict(c.cookies)
    _, page = c.get("/")
    r, _ = c.post("/logout", {"csrf": c.csrf(page)})
    assert r.status == 303
    c.cookies = old  # the cookie kept anyway (a stolen copy) opens nothing
    r, _ = c.get("/incidents")
    assert r.status == 303 and r.getheader("Location").startswith("/login")
    assert c.get("/events")[0].status == 401


def test_no_open_redirect_after_sign_in(console) -> None:
    c = console.client()
    name = console.pool["national"].pop()
    _, page = c.get("/login?next=//evil.example/")
    r, _ = c.post(
        "/login",
        {
            "csrf": c.csrf(page),
            "user": name,
            "password": cs.PASSWORD,
            "code": console.code(name),
            "next": "//evil.example/",
        },
    )
    assert r.status == 303 and r.getheader("Location") == "/"


def test_agent_or_revoked_certificate_gets_nothing(console) -> None:
    tmp = console.tmp
    agent = tmp / "agent0"  # issued by seed_two_regions
    c = console.client((agent / "agent.crt", agent / "agent.key"))
    for path in ("/login", "/", "/static/console.css"):
        r, _ = c.get(path)
        assert r.status == 403, path
    # An analyst's certificate signs in without a password...
    analyst = console.collector.issue_analyst(tmp / "cert-analyst", "cert-analyst", "regional:84")
    c = console.client((analyst / "analyst.crt", analyst / "analyst.key"))
    _, page = c.get("/login")
    assert "signin-cert" in page
    r, _ = c.post("/login/certificate", {"csrf": c.csrf(page)})
    assert r.status == 303
    _, page = c.get("/incidents?status=any")
    assert "GHT-B1" in page and "GHT-A1" not in page  # its role scopes it like any other
    # ... until its certificate is revoked: then nothing, not even the sign-in page.
    subprocess.run(
        [
            tool("vigie-collector"),
            "agent",
            "revoke",
            "cert-analyst",
            "--state-dir",
            str(console.collector.state_dir),
        ],
        check=True,
        capture_output=True,
    )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and c.get("/login")[0].status != 403:
        time.sleep(0.2)
    assert c.get("/login")[0].status == 403
    assert c.get("/incidents")[0].status == 403


def test_brute_force_is_slowed_and_audited(tmp_path: Path) -> None:
    cc = cs.start(tmp_path, "login_failures = 3\naddress_failures = 6\nlock_seconds = 60\n")
    try:
        cc.add_user("target", "national")
        cc.add_user("bystander", "national")
        c = cc.client()
        statuses = []
        t0 = time.monotonic()
        for i in range(8):
            r, _ = c.sign_in("target", f"guess number {i}", cc.code("target"))
            statuses.append(r.status)
        assert statuses[:3] == [401, 401, 401] and set(statuses[3:]) == {429}, statuses
        assert time.monotonic() - t0 < 20  # refused quickly, not by hanging the server
        # While locked out, even the right password and code are refused ...
        r, _ = c.sign_in("target", cs.PASSWORD, cc.code("target"))
        assert r.status == 429 and int(r.getheader("Retry-After")) > 0
        # ... and this address, having failed too often, waits whatever the account.
        r, _ = c.sign_in("bystander", cs.PASSWORD, cc.code("bystander"))
        assert r.status == 429
        outcomes = [row[4] for row in _audit(cc, "WHERE action = 'ConsoleSignIn'")]
        assert outcomes.count("bad_password") == 3
        assert "account_locked" in outcomes and "throttled" in outcomes
        assert "ok" not in outcomes
    finally:
        cs.stop(cc)


def test_account_commands(console) -> None:
    def cmd(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                tool("vigie-collector"),
                "console",
                "user",
                *args,
                "--state-dir",
                str(console.collector.state_dir),
            ],
            input=stdin,
            capture_output=True,
            text=True,
        )

    short = cmd("add", "shorty", "--role", "national", "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "12 characters" in short.stderr
    bad_role = cmd("add", "x", "--role", "regional:", "--password-stdin", stdin=cs.PASSWORD)
    assert bad_role.returncode == 2
    assert (
        cmd("add", "nat", "--role", "national", "--password-stdin", stdin=cs.PASSWORD).returncode
        == 2
    )
    c, name = _signed_in(console, "national")
    assert c.get("/incidents")[0].status == 200
    assert cmd("disable", name).returncode == 0
    r, _ = c.get("/incidents")  # its session ended with it
    assert r.status == 303 and r.getheader("Location").startswith("/login")
    listed = cmd("list").stdout
    assert f"{name}\tnational\tdisabled" in listed and "ars-11\tregional:11\tactive" in listed


def test_intel_is_published_by_a_national_analyst_only(console) -> None:
    nat, _ = _signed_in(console, "national")
    _, page = nat.get("/intel")
    r, page = nat.post(
        "/intel", {"csrf": nat.csrf(page), "bundle": '{"ips": ["203.0.113.99"]}', "replace": ""}
    )
    assert r.status == 200 and 'id="intel-version">1<' in page
    r, page = nat.post("/intel", {"csrf": nat.csrf(page), "bundle": '{"ips": ["0.0.0.0/0"]}'})
    assert r.status == 400 and 'id="intel-version">1<' in page  # refused, nothing published
    reg, _ = _signed_in(console, "regional:11")
    _, page = reg.get("/intel")
    assert 'id="intel-form"' not in page
    r, _ = reg.post("/intel", {"csrf": reg.csrf(page), "bundle": '{"ips": ["203.0.113.98"]}'})
    assert r.status == 403
    outcomes = [(row[1], row[4]) for row in _audit(console, "WHERE action = 'PublishIntel'")]
    assert ("national", "ok") in outcomes and ("regional:11", "PERMISSION_DENIED") in outcomes
