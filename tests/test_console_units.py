"""The console's parts that need no server: TOTP against RFC 6238's own vectors, the French
catalogue against GNU gettext's msgfmt, escaping, the charts, the login throttle."""

from __future__ import annotations

import gettext
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from collector.console import charts, i18n, totp
from collector.console.accounts import Throttle
from collector.console.html import Markup, esc, render, tag

CONSOLE = Path(__file__).resolve().parents[1] / "collector" / "console"
PO = CONSOLE / "locale" / "fr" / "LC_MESSAGES" / "console.po"

# RFC 6238 appendix B, SHA-1 column (8 digits, key "12345678901234567890").
RFC6238 = [
    (59, "94287082"),
    (1111111109, "07081804"),
    (1111111111, "14050471"),
    (1234567890, "89005924"),
    (2000000000, "69279037"),
    (20000000000, "65353130"),
]


@pytest.mark.parametrize(("t", "expected"), RFC6238)
def test_totp_matches_rfc6238_vectors(t: int, expected: str) -> None:
    assert totp.hotp(b"12345678901234567890", t // 30, digits=8) == expected


def test_totp_accepts_one_step_of_drift_and_nothing_else() -> None:
    secret = totp.new_secret()
    now = 1_700_000_000.0
    assert totp.matching_step(secret, totp.code(secret, now), now) == totp.step(now)
    assert totp.matching_step(secret, totp.code(secret, now - 30), now) == totp.step(now) - 1
    assert totp.matching_step(secret, totp.code(secret, now - 90), now) is None
    assert totp.matching_step(secret, "12345", now) is None
    assert totp.matching_step(secret, "١٢٣٤٥٦", now) is None  # non-ASCII digits
    uri = totp.provisioning_uri(secret, "ars-11")
    assert uri.startswith("otpauth://totp/Vigie%3Aars-11?") and f"secret={secret}" in uri


@pytest.mark.skipif(not shutil.which("msgfmt"), reason="msgfmt (Debian gettext) not installed")
def test_french_catalogue_passes_msgfmt_and_reads_the_same(tmp_path: Path) -> None:
    mo = tmp_path / "console.mo"
    r = subprocess.run(
        ["msgfmt", "--check", "-o", str(mo), str(PO)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    theirs = gettext.GNUTranslations(mo.open("rb"))
    ours = i18n.translations("fr")
    messages = i18n.parse_po(PO.read_text("utf-8"))
    assert len(messages) > 100
    for msgid in messages:
        if msgid:
            assert ours.gettext(msgid) == theirs.gettext(msgid), msgid


def test_every_string_shown_has_a_french_translation() -> None:
    source = (CONSOLE / "pages.py").read_text("utf-8")
    asked = set(re.findall(r'_\("((?:[^"\\]|\\.)+)"\)', source))
    for m in re.finditer(r"for h in \(([^)]*)\)", source, re.S):
        asked |= set(re.findall(r'"([^"]+)"', m.group(1)))
    fr = i18n.parse_po(PO.read_text("utf-8"))
    missing = sorted(asked - set(fr))
    assert not missing, missing
    assert i18n.translations("fr").gettext("Sign in") == "Connexion"
    assert i18n.translations("en").gettext("Sign in") == "Sign in"


def test_language_choice() -> None:
    assert i18n.pick(None) == "fr"
    assert i18n.pick("en") == "en"
    assert i18n.pick("de") == "fr"


def test_values_are_escaped_unless_markup() -> None:
    hostile = '<script>alert(1)</script>"'
    assert "<script>" not in tag("td", hostile)
    assert "<script>" not in Markup("<tr>") + hostile
    assert "<script>" not in hostile + Markup("</tr>")
    assert esc(Markup("<b>ok</b>")) == "<b>ok</b>"
    page = render("login_cert.html", csrf=hostile, label=hostile, lang="fr")
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_chart_is_valid_svg_with_a_legend() -> None:
    labels = [f"{h:02d} h" for h in range(24)]
    series = {f"net.d{i}": [i * h for h in range(24)] for i in range(10)}
    fig = charts.stacked_bars(labels, series, title="t <&>")
    ET.fromstring(fig)  # well-formed XML, every value escaped
    svg = fig[fig.index("<svg") : fig.index("</svg>") + 6]
    assert svg.count("<rect") > 24
    assert "other" in fig  # beyond seven detectors, the rest are grouped
    assert all(c in fig for c in charts.PALETTE[:7])


def test_throttle_waits_longer_after_each_failure() -> None:
    t = Throttle(limit=3, window=300)
    for i in range(2):
        t.failed("a", now=100.0 + i)
    assert t.wait("a", now=102) == 0
    t.failed("a", now=102)
    first = t.wait("a", now=102)
    t.failed("a", now=102)
    assert 0 < first < t.wait("a", now=102)
    assert t.wait("b", now=102) == 0
    assert t.wait("a", now=102 + 400) == 0  # out of the window
