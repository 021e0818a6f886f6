"""Anonymisation policy: classification, pseudonym stability and unlinkability, key
rotation, the secret's permissions, Crypto-PAn, per-kind switches, explain-anonymisation,
and the documented field list."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.anonymise.policy import (
    AnonymisationError,
    Anonymiser,
    CryptoPAn,
    Entity,
    Finding,
    load_or_create_secret,
    secret_path,
)
from vigie.v1 import alert_pb2, ingest_pb2

ROOT = Path(__file__).resolve().parents[1]
NMAP = ROOT / "tests" / "data" / "nmap_scan_types_connect_syn_fin_null_xmas.pcapng"
K, R = alert_pb2, alert_pb2
SECTION = {
    "secret_file": "",
    "key_epoch": 1,
    "prefix_preserving": False,
    "internal_ranges": [],
    "internal_domains": [],
    "clear_external_ips": True,
    "clear_external_domains": True,
    "clear_tls_sni": True,
    "clear_ja3": True,
    "clear_ja4": True,
    "clear_hashes": True,
}


def agent(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd or ROOT,
    )


def anonymiser(state: Path, **overrides: object) -> Anonymiser:
    return Anonymiser.from_settings(SECTION | overrides, state)


def finding(*entities: Entity, summary: str = "x") -> Finding:
    return Finding("a" * 32, 1, "net.test", 3, "T1046", summary, 1.0, 2.0, 1, list(entities))


def pseudonymised_values(stdout: str) -> list[str]:
    return [
        e["value"]
        for line in stdout.splitlines()
        for e in json.loads(line)["entities"]
        if e["pseudonymised"]
    ]


# Classification ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "internal", "why"),
    [
        ("10.1.2.3", True, "10.0.0.0/8"),
        ("172.31.255.1", True, "172.16.0.0/12"),
        ("192.168.1.1", True, "192.168.0.0/16"),
        ("100.64.0.1", True, "RFC 6598"),
        ("127.0.0.1", True, "loopback"),
        ("169.254.10.10", True, "link-local"),
        ("fd12:3456::1", True, "unique local"),
        ("fe80::1", True, "link-local"),
        ("::1", True, "loopback"),
        ("::ffff:192.168.1.1", True, "IPv4-mapped"),
        ("2002:c0a8:0101::1", True, "6to4 of 192.168.1.1"),
        ("2001:0:4136:e378:8000:63bf:3f57:fefe", True, "Teredo client of 192.168.1.1"),
        ("64:ff9b::10.0.0.7", True, "NAT64"),
        ("193.48.10.1", True, "configured internal range"),
        ("10.0.0.0/24", True, "overlaps"),
        ("not-an-address", True, "sensitive"),
        ("8.8.8.8", False, "public"),
        ("64.13.134.52", False, "public"),
        ("2001:4860:4860::8888", False, "public"),
        ("::ffff:8.8.8.8", False, "public"),
        ("2002:0808:0808::1", False, "public"),
        ("100.128.0.1", False, "public"),
    ],
)
def test_address_classification(value: str, internal: bool, why: str) -> None:
    c = Anonymiser(b"k" * 32, internal_ranges=["193.48.0.0/16"]).classify_ip(value)
    assert c.internal is internal and why in c.reason


@pytest.mark.parametrize(
    ("name", "internal", "why"),
    [
        ("pacs01", True, "single-label"),
        ("PACS01.chu-exemple.fr.", True, "configured internal domain .chu-exemple.fr"),
        ("chu-exemple.fr", True, "configured"),
        ("dc1.ad.local", True, ".local"),
        ("4.3.2.10.in-addr.arpa", True, ".in-addr.arpa"),
        ("10.2.3.4", True, "address literal"),
        ("www.chu-exemple.fr.evil.com", False, "public"),
        ("notchu-exemple.fr", False, "public"),
        ("update.microsoft.com", False, "public"),
    ],
)
def test_name_classification(name: str, internal: bool, why: str) -> None:
    c = Anonymiser(b"k" * 32, internal_suffixes=["chu-exemple.fr"]).classify_name(name)
    assert c.internal is internal and why in c.reason


def test_kinds_about_people_and_machines_are_always_pseudonymised() -> None:
    a = Anonymiser(b"k" * 32)
    for kind, value in [
        (K.KIND_HOSTNAME, "www.example.com"),
        (K.KIND_USER, "jdupont"),
        (K.KIND_AE_TITLE, "CT_SCANNER_2"),
        (K.KIND_MAC, "00:1b:63:84:45:e6"),
        (K.KIND_UNSPECIFIED, "whatever"),
    ]:
        e = a.entity(Entity(R.ROLE_SOURCE, kind, value))
        assert e.pseudonymised and re.fullmatch(r"p:[0-9a-f]{20}", e.value)
    # Spelling does not split one machine into several pseudonyms.
    mac = [a.entity(Entity(1, K.KIND_MAC, m)).value for m in ("00:1B:63:84:45:E6", "001b638445e6")]
    assert mac[0] == mac[1] == a.entity(Entity(1, K.KIND_MAC, "00-1b-63-84-45-e6")).value
    ips = [a.entity(Entity(1, K.KIND_IP, v)).value for v in ("10.0.0.1", "::ffff:10.0.0.1")]
    assert ips[0] == ips[1]
    assert a.entity(Entity(1, K.KIND_PORT, "445")).value == "445"


def test_free_form_fields_cannot_carry_raw_values() -> None:
    a = Anonymiser(b"k" * 32)
    f = finding(summary="from 10.9.8.7 to fe80::1 by aa:bb:cc:dd:ee:ff, 8.8.8.8 fine")
    f.id = "scan-10.9.8.7"
    f.metrics = {"probes": 1.0, "10.9.8.7": 2.0}
    f.detector = "PACS01"
    wire = a.alert(f, 3.0).SerializeToString()
    for raw in (b"10.9.8.7", b"fe80::1", b"aa:bb:cc:dd:ee:ff", b"PACS01"):
        assert raw not in wire
    alert = a.alert(f, 3.0)
    assert "8.8.8.8 fine" in alert.summary and "probes" in alert.metrics
    assert re.fullmatch(r"[0-9a-f]{32}", alert.id) and alert.id == a.alert(f, 4.0).id


# Stability and unlinkability ---------------------------------------------------------------


def test_pseudonyms_stable_within_establishment_and_unlinkable_across(tmp_path: Path) -> None:
    e = Entity(R.ROLE_SOURCE, K.KIND_IP, "10.20.30.40")
    one = anonymiser(tmp_path / "chu-a").entity(e).value
    again = anonymiser(tmp_path / "chu-a").entity(e).value  # a restart: same secret file
    other = anonymiser(tmp_path / "chu-b").entity(e).value
    assert one == again != other


def test_replay_pseudonyms_stable_across_restarts_and_differ_between_sites(
    tmp_path: Path,
) -> None:
    runs = []
    for state in ("chu-a", "chu-a", "chu-b"):
        r = agent("replay", str(NMAP), "--state-dir", str(tmp_path / state))
        assert r.returncode == 0, r.stderr
        runs.append(pseudonymised_values(r.stdout))
    assert runs[0] and runs[0] == runs[1]
    assert not set(runs[0]) & set(runs[2])


# Key rotation -------------------------------------------------------------------------------


def test_key_rotation(tmp_path: Path) -> None:
    e = Entity(R.ROLE_SOURCE, K.KIND_USER, "jdupont")
    epoch1 = anonymiser(tmp_path)
    key1 = (tmp_path / "anon.key").read_bytes()
    mtime1 = (tmp_path / "anon.key").stat().st_mtime_ns
    epoch2 = anonymiser(tmp_path, key_epoch=2)
    assert (tmp_path / "anon-2.key").read_bytes() != key1
    assert (tmp_path / "anon.key").read_bytes() == key1
    assert (tmp_path / "anon.key").stat().st_mtime_ns == mtime1
    a1, a2 = epoch1.alert(finding(e), 3.0), epoch2.alert(finding(e), 3.0)
    assert (a1.key_epoch, a2.key_epoch) == (1, 2)
    assert a1.entities[0].value != a2.entities[0].value
    # Back to epoch 1 (e.g. to explain an older alert): the old pseudonyms come back.
    assert anonymiser(tmp_path).alert(finding(e), 3.0).entities[0] == a1.entities[0]


def test_key_rotation_through_the_config_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = tmp_path / "agent.toml"
    first = agent("replay", str(NMAP), "--state-dir", str(state))
    cfg.write_text("[anonymisation]\nkey_epoch = 2\n")
    second = agent("replay", str(NMAP), "--state-dir", str(state), "--config", str(cfg))
    assert first.returncode == second.returncode == 0, second.stderr
    epochs = {json.loads(line)["key_epoch"] for line in second.stdout.splitlines()}
    assert epochs == {2} and (state / "anon-2.key").exists()
    assert not set(pseudonymised_values(first.stdout)) & set(pseudonymised_values(second.stdout))


def test_secret_file_placeholder(tmp_path: Path) -> None:
    assert secret_path(tmp_path, "", 1) == tmp_path / "anon.key"
    assert secret_path(tmp_path, "", 3) == tmp_path / "anon-3.key"
    assert secret_path(tmp_path, "/etc/vigie/k{epoch}.key", 3) == Path("/etc/vigie/k3.key")
    assert secret_path(tmp_path, "/etc/vigie/k.key", 1) == Path("/etc/vigie/k.key")
    with pytest.raises(AnonymisationError, match=r"\{epoch\}"):
        secret_path(tmp_path, "/etc/vigie/k.key", 2)


# The secret file ---------------------------------------------------------------------------


def test_secret_created_0600_and_never_in_alerts(tmp_path: Path) -> None:
    path = tmp_path / "new" / "anon.key"
    secret = load_or_create_secret(path)
    assert (path.stat().st_mode & 0o777) == 0o600 and len(secret) == 32
    assert load_or_create_secret(path) == secret
    assert [p.name for p in path.parent.iterdir()] == ["anon.key"]  # no temporary left
    wire = anonymiser(path.parent).alert(finding(Entity(1, K.KIND_USER, "u")), 1.0)
    assert secret not in wire.SerializeToString()


def test_secret_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "anon.key"
    path.write_bytes(os.urandom(32))
    path.chmod(0o644)
    with pytest.raises(AnonymisationError, match=r"mode 0644.*chmod 600"):
        load_or_create_secret(path)
    r = agent("replay", str(NMAP), "--state-dir", str(tmp_path))
    assert r.returncode == 2
    assert "must be 0600: chmod 600" in r.stderr and "Traceback" not in r.stderr


def test_short_secret_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "anon.key"
    path.write_bytes(b"short")
    path.chmod(0o600)
    with pytest.raises(AnonymisationError, match="shorter than 16 bytes"):
        load_or_create_secret(path)


# Crypto-PAn ---------------------------------------------------------------------------------

# The reference implementation's key and sample mapping (Xu et al., sample_trace_raw).
REFERENCE_KEY = bytes.fromhex("1522178d33a4cf80130a5b1649907d10d8988f837979652762574c2d2a842202")
REFERENCE = {
    "128.11.68.132": "135.242.180.132",
    "129.118.74.4": "134.136.186.123",
    "130.132.252.244": "133.68.164.234",
    "141.223.7.43": "141.167.8.160",
    "192.102.249.13": "252.138.62.131",
    "199.217.79.101": "248.38.184.213",
}


def test_crypto_pan_matches_the_reference_implementation() -> None:
    pan = CryptoPAn(REFERENCE_KEY)
    assert {a: pan.anonymise_text(a) for a in REFERENCE} == REFERENCE


def _bits(a: str) -> int:
    return int(ipaddress.IPv4Address(a))


def _common_prefix(x: int, y: int) -> int:
    return 32 - (x ^ y).bit_length()


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_crypto_pan_preserves_exactly_the_common_prefix(x: int, y: int) -> None:
    pan = CryptoPAn(REFERENCE_KEY)
    assert _common_prefix(pan.anonymise(x), pan.anonymise(y)) == _common_prefix(x, y)


def test_prefix_preserving_pseudonyms(tmp_path: Path) -> None:
    a = anonymiser(tmp_path / "a", prefix_preserving=True)
    p1 = a.entity(Entity(1, K.KIND_IP, "10.23.4.17"))
    p2 = a.entity(Entity(1, K.KIND_IP, "10.23.4.200"))
    p3 = a.entity(Entity(1, K.KIND_IP, "10.99.0.1"))
    assert p1.pseudonymised and re.fullmatch(r"pp:\d+\.\d+\.\d+\.\d+", p1.value)
    v1, v2, v3 = (_bits(p.value.removeprefix("pp:")) for p in (p1, p2, p3))
    assert v1 >> 8 == v2 >> 8 and v1 != v2  # same /24 inside, same /24 outside
    assert _common_prefix(v1, v3) == _common_prefix(_bits("10.23.4.17"), _bits("10.99.0.1"))
    # External addresses stay in clear; internal IPv6 falls back to HMAC.
    assert a.entity(Entity(1, K.KIND_IP, "8.8.8.8")).value == "8.8.8.8"
    assert a.entity(Entity(1, K.KIND_IP, "fd00::1")).value.startswith("p:")
    # Another establishment's secret gives unrelated images.
    b = anonymiser(tmp_path / "b", prefix_preserving=True)
    assert b.entity(Entity(1, K.KIND_IP, "10.23.4.17")).value != p1.value
    # Off by default.
    assert anonymiser(tmp_path / "a").entity(Entity(1, K.KIND_IP, "10.23.4.17")).value[:2] == "p:"


# Per-kind switches -------------------------------------------------------------------------

SWITCHES = [
    ("clear_external_ips", K.KIND_IP, "64.13.134.52"),
    ("clear_external_domains", K.KIND_DOMAIN, "evil.example.com"),
    ("clear_tls_sni", K.KIND_TLS_SNI, "c2.example.net"),
    ("clear_ja3", K.KIND_JA3, "771,4865-4866,0-11-10,29-23,0"),
    ("clear_ja4", K.KIND_JA4, "t13d1516h2_8daaf6152771_02713d6af862"),
    ("clear_hashes", K.KIND_HASH, "44d88612fea8a8f36de82e1278abb02f"),
]


@pytest.mark.parametrize(("switch", "kind", "value"), SWITCHES)
def test_clear_switch_per_kind(tmp_path: Path, switch: str, kind: int, value: str) -> None:
    on = anonymiser(tmp_path).entity(Entity(3, kind, value))
    off = anonymiser(tmp_path, **{switch: False}).entity(Entity(3, kind, value))
    assert (on.value, on.pseudonymised) == (value, False)
    assert off.pseudonymised and off.value.startswith("p:")
    # Other kinds are not affected by this switch.
    for other_switch, other_kind, other_value in SWITCHES:
        if other_switch != switch:
            e = anonymiser(tmp_path, **{switch: False}).entity(Entity(3, other_kind, other_value))
            assert e.value == other_value


def test_internal_names_pseudonymised_even_with_switches_on(tmp_path: Path) -> None:
    a = anonymiser(tmp_path, internal_domains=["chu-exemple.fr"])
    for kind in (K.KIND_DOMAIN, K.KIND_TLS_SNI):
        assert a.entity(Entity(3, kind, "dpi.chu-exemple.fr")).pseudonymised
        assert a.entity(Entity(3, kind, "192.168.1.1")).pseudonymised


# explain-anonymisation ----------------------------------------------------------------------


def test_explain_table_and_json(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[anonymisation]\ninternal_domains = ["chu-exemple.fr"]\n')
    a = anonymiser(state, internal_domains=["chu-exemple.fr"])
    values = ["10.1.2.3", "64.13.134.52", "pacs.chu-exemple.fr", "jdupont"]
    common = ["--config", str(cfg), "--state-dir", str(state)]
    r = agent("explain-anonymisation", *values, *common, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["key_epoch"] == 1 and report["secret_file"] == str(state / "anon.key")
    rows = {(x["input"], x["as"]): x for x in report["values"]}
    ip = rows["10.1.2.3", "ip"]
    assert ip["classification"] == "internal" and "10.0.0.0/8" in ip["reason"]
    assert ip["sent"] == a.entity(Entity(1, K.KIND_IP, "10.1.2.3")).value
    assert rows["64.13.134.52", "ip"]["sent"] == "64.13.134.52"
    dom = rows["pacs.chu-exemple.fr", "domain"]
    assert "chu-exemple.fr" in dom["reason"] and dom["pseudonymised"]
    assert dom["sent"] == a.entity(Entity(3, K.KIND_DOMAIN, "pacs.chu-exemple.fr")).value
    assert rows["jdupont", "user"]["sent"] == a.entity(Entity(1, K.KIND_USER, "jdupont")).value
    assert {k for v, k in rows if v == "jdupont"} >= {"hostname", "domain", "user"}

    t = agent("explain-anonymisation", *values, *common)
    assert t.returncode == 0, t.stderr
    assert "CLASS" in t.stdout and "SENT" in t.stdout
    assert ip["sent"] in t.stdout and "64.13.134.52" in t.stdout and "RFC 1918" in t.stdout


def test_explain_without_config_or_secret_writes_nothing(tmp_path: Path) -> None:
    state = tmp_path / "nowhere"
    r = agent("explain-anonymisation", "192.168.0.9", "8.8.8.8", "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    assert "internal" in r.stdout and "8.8.8.8" in r.stdout and "secret" in r.stdout
    assert not state.exists()
    r = agent("explain-anonymisation", "192.168.0.9", "--json", "--state-dir", str(state))
    report = json.loads(r.stdout)
    assert report["values"][0]["sent"] is None and "note" in report


# What leaves, documented -------------------------------------------------------------------


def test_privacy_doc_lists_every_field_that_leaves() -> None:
    """A field added to the wire contract fails here until docs/PRIVACY.md describes it."""
    doc = (ROOT / "docs" / "PRIVACY.md").read_text(encoding="utf-8")
    messages = [
        alert_pb2.Alert,
        alert_pb2.Entity,
        ingest_pb2.Heartbeat,
        ingest_pb2.HostHealth,
        ingest_pb2.AlertBatch,
    ]
    for m in messages:
        for f in m.DESCRIPTOR.fields:
            assert f"`{m.DESCRIPTOR.name}.{f.name}`" in doc, f"{m.DESCRIPTOR.name}.{f.name}"
    assert "[docs/PRIVACY.md](docs/PRIVACY.md)" in (ROOT / "README.md").read_text()
