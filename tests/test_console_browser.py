"""The console in a real headless Chromium (Debian's chromium and chromium-driver, driven
by Selenium): sign-in with password and TOTP, role scoping, acknowledge and close with the
audit trail, a new incident arriving live, sign-out. One browser for the module.

Screenshots of every page go to tests/artifacts/console/ (kept out of git) for a person
to look at."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests import console_support as cs
from tests.conftest import DATA, tool

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SHOTS = Path(__file__).resolve().parent / "artifacts" / "console"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (./dev test installs them)",
)


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    cc = cs.start(tmp)
    # One account per test: a TOTP code is good once (RFC 6238 5.2).
    for name, role in (
        ("nat-a", "national"),
        ("nat-b", "national"),
        ("nat-c", "national"),
        ("ars-11", "regional:11"),
        ("ars-11-b", "regional:11"),
    ):
        cc.add_user(name, role)
    cs.seed_two_regions(cc, tmp)
    cc.tmp = tmp
    yield cc
    cs.stop(cc)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1366,900"):
        opts.add_argument(arg)
    opts.add_argument("--lang=fr-FR")
    # The console serves the collector's own certificate, from a CA this browser does not
    # hold; everything else about TLS (Secure cookies, __Host- prefix) still applies.
    opts.accept_insecure_certs = True
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(30)
    if SHOTS.exists():
        shutil.rmtree(SHOTS)
    SHOTS.mkdir(parents=True)
    yield driver
    driver.quit()


def _shot(driver, name: str) -> None:
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def _wait(predicate, timeout: float = 5.0, step: float = 0.05) -> bool:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    # a live update may replace the element between finding it and reading it
    def holds() -> bool:
        try:
            return bool(predicate())
        except (NoSuchElementException, StaleElementReferenceException):
            return False

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if holds():
            return True
        time.sleep(step)
    return holds()


def _sign_in(driver, cc: cs.ConsoleCollector, name: str) -> None:
    from selenium.webdriver.common.by import By

    # each test starts signed out, whatever the one before it left behind
    driver.get(cc.url + "/login")
    driver.delete_all_cookies()
    driver.get(cc.url + "/login")
    driver.find_element(By.ID, "user").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(cs.PASSWORD)
    driver.find_element(By.ID, "code").send_keys(cc.code(name))
    driver.find_element(By.ID, "signin").click()
    assert _wait(lambda: driver.current_url.rstrip("/") == cc.url), driver.current_url


def _sign_out(driver) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "logout").click()
    assert _wait(lambda: "/login" in driver.current_url)


def test_sign_in_and_every_page(browser, console) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    d.get(console.url + "/incidents")
    assert "/login" in d.current_url  # not signed in: sent to the sign-in page
    assert d.find_element(By.TAG_NAME, "html").get_attribute("lang") == "fr"
    _shot(d, "01-login")
    _sign_in(d, console, "nat-a")
    cookie = d.get_cookie("__Host-vigie_session")
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert "Vue d'ensemble" in d.title
    assert d.find_elements(By.CSS_SELECTOR, "svg.chart rect")  # the hourly chart has bars
    _shot(d, "02-overview")
    d.get(console.url + "/incidents?status=any")
    rows = d.find_elements(By.CSS_SELECTOR, "#incidents tbody tr")
    assert len(rows) == 3
    _shot(d, "03-incidents")
    rows[0].find_element(By.CSS_SELECTOR, "a").click()
    assert _wait(lambda: "/incidents/" in d.current_url)
    assert d.find_elements(By.CSS_SELECTOR, "#timeline li")
    assert d.find_element(By.ID, "stix").get_attribute("href").endswith("/stix")
    _shot(d, "04-incident")
    for path, name in (
        ("/alerts", "05-alerts"),
        ("/alerts?indicator=203.0.113.66", "06-alerts-indicator"),
        ("/fleet?ght=GHT-A1", "07-fleet"),
        ("/intel", "08-intel"),
        ("/audit", "09-audit"),
    ):
        d.get(console.url + path)
        assert "500" not in d.title
        _shot(d, name)
    d.get(console.url + "/alerts?indicator=203.0.113.66")
    assert len(d.find_elements(By.CSS_SELECTOR, "#alerts tbody tr")) == 4
    # A wall screen: the same overview, larger.
    d.set_window_size(2560, 1440)
    d.get(console.url + "/")
    _shot(d, "10-overview-wall")
    d.set_window_size(1366, 900)
    # English on request, and the analyst's time zone: both kept by the session.
    from selenium.webdriver.support.ui import Select

    Select(d.find_element(By.NAME, "lang")).select_by_value("en")
    tz = d.find_element(By.NAME, "tz")
    tz.clear()
    tz.send_keys("Indian/Reunion")
    d.find_element(By.CSS_SELECTOR, "form.prefs button").click()
    assert _wait(lambda: "Overview" in d.title)
    stamp = d.find_element(By.CSS_SELECTOR, "p.taken time").get_attribute("datetime")
    assert stamp.endswith("+04:00")  # Réunion, whatever the server's zone
    _shot(d, "10b-overview-english")
    # Keyboard: g then i goes to the incidents.
    from selenium.webdriver.common.action_chains import ActionChains

    d.find_element(By.TAG_NAME, "body").click()
    ActionChains(d).send_keys("g").send_keys("i").perform()
    assert _wait(lambda: "/incidents" in d.current_url)
    _sign_out(d)


def test_regional_analyst_sees_only_their_region(browser, console) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    _sign_in(d, console, "ars-11")
    d.get(console.url + "/incidents?status=any")
    keys = [
        r.get_attribute("data-key")
        for r in d.find_elements(By.CSS_SELECTOR, "#incidents tr[data-key]")
    ]
    assert len(keys) == 2 and all("198.51.100.84" not in k for k in keys)
    assert "GHT-B1" not in d.page_source
    _shot(d, "11-incidents-regional")
    foreign = next(
        k for k in cs.incident_keys(_national_incidents(console)) if "198.51.100.84" in k
    )
    d.get(console.url + f"/incidents/{foreign}")
    assert "404" in d.title and "198.51.100.84" not in d.page_source
    _shot(d, "12-foreign-incident-404")
    d.get(console.url + "/alerts")
    assert "GHT-A1" in d.page_source and "GHT-B1" not in d.page_source
    _sign_out(d)


def _national_incidents(cc: cs.ConsoleCollector) -> str:
    import sqlite3

    with sqlite3.connect(cc.collector.db()) as db:
        keys = [r[0] for r in db.execute("SELECT key FROM incidents")]
    return "".join(f'<tr data-key="{k}">' for k in keys)


def test_acknowledge_and_close_show_in_the_audit_log(browser, console) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    _sign_in(d, console, "ars-11-b")
    d.get(console.url + "/incidents?status=open")
    d.find_element(By.CSS_SELECTOR, "#incidents tbody tr a").click()
    assert _wait(lambda: "/incidents/" in d.current_url)
    key = d.find_element(By.ID, "incident").get_attribute("data-key")
    d.find_element(By.ID, "comment").send_keys("pris en charge par l'ARS")
    d.find_element(By.ID, "ack").click()
    assert _wait(lambda: "pris en charge" in d.find_element(By.ID, "status").text)
    d.find_element(By.ID, "comment").send_keys("bloqué en amont")
    d.find_element(By.ID, "close").click()
    assert _wait(lambda: "clos" in d.find_element(By.ID, "status").text)
    assert d.find_element(By.ID, "status-comment").text == "bloqué en amont"
    _shot(d, "13-incident-closed")
    d.get(console.url + "/audit")
    rows = [r.text for r in d.find_elements(By.CSS_SELECTOR, "#audit tbody tr")]
    updates = [r for r in rows if "UpdateIncident" in r and key in r]
    assert len(updates) == 2 and all("ars-11-b" in r for r in updates)
    assert any("GetIncident" in r and key in r for r in rows)
    _shot(d, "14-audit")
    _sign_out(d)


def _replay(cc: cs.ConsoleCollector, state: Path) -> None:
    r = subprocess.run(
        [
            tool("vigie-agent"),
            "replay",
            str(DATA / "nmap_syn_scan_1000ports.pcap"),
            "--state-dir",
            str(state),
            "--output",
            "collector",
            "--collector",
            cc.collector.address,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_new_incident_appears_live_within_two_seconds(browser, console) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    tmp = console.tmp
    console.collector.issue_agent(tmp / "north" / "tls", "322000001", "GHT-NORD", "32")
    console.collector.issue_agent(tmp / "south" / "tls", "932000001", "GHT-SUD", "93")
    _sign_in(d, console, "nat-b")
    d.get(console.url + "/incidents")
    before = len(d.find_elements(By.CSS_SELECTOR, "#incidents tbody tr"))
    _replay(console, tmp / "north")
    _replay(console, tmp / "south")  # the second GHT: a multi-site incident opens now
    done = time.monotonic()

    def arrived() -> bool:
        return any(
            "64.13.134.52" in (r.get_attribute("data-key") or "")
            for r in d.find_elements(By.CSS_SELECTOR, "#incidents tbody tr")
        )

    assert _wait(arrived, timeout=2.0), "no live incident within 2 s"
    elapsed = time.monotonic() - done
    print(f"live incident shown {elapsed:.2f} s after the replay ended")
    keys = [
        r.get_attribute("data-key") for r in d.find_elements(By.CSS_SELECTOR, "#incidents tbody tr")
    ]
    assert len(keys) > before and len(set(keys)) == len(keys)  # added, each once
    # An open incident changed elsewhere (here by the store, as `vigie ack` does) is
    # updated in place.
    from collector.store import open_store

    key = next(k for k in keys if "64.13.134.52" in k)
    store = open_store(f"sqlite:///{console.collector.db()}")
    try:
        store.update_incident(key, 2, "someone-else", "on it")
    finally:
        store.close()
    row = f'#incidents tr[data-key="{key}"] .status'
    assert _wait(lambda: d.find_element(By.CSS_SELECTOR, row).text == "pris en charge", 2.0)
    assert d.current_url.endswith("/incidents")  # no reload happened
    _shot(d, "15-live-incident")
    _sign_out(d)


def test_logout_ends_the_session(browser, console) -> None:
    d = browser
    _sign_in(d, console, "nat-c")
    _sign_out(d)
    assert d.get_cookie("__Host-vigie_session") is None
    d.get(console.url + "/incidents")
    assert "/login" in d.current_url
    _shot(d, "16-signed-out")
