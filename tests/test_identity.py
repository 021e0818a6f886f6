"""One set of rules for FINESS, GHT, region, agent ids, analyst names and roles, used by
every command, the CA and the collector's reading of certificates; one spelling of each
incident status everywhere (issue #19, item 4)."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from collector import auth
from collector.enroll.servicer import EnrollmentServicer
from collector.pki import ca as pki
from collector.pki.registry import Registry, format_token
from common import identity as rules
from tests.conftest import Collector, tool
from vigie.v1 import (
    alert_pb2,
    analyst_pb2,
    analyst_pb2_grpc,
    enroll_pb2,
    ingest_pb2,
    ingest_pb2_grpc,
)

GOOD = {"finess": "750000001", "ght": "GHT-IDF-75", "region": "11"}

# (field, value, accepted): what `token create` and `pki issue-agent` both take or refuse.
CASES = [
    ("finess", "750000001", True),
    ("finess", "2A0000001", True),  # Corsica
    ("finess", "2B1234567", True),
    ("finess", '55"]', False),
    ("finess", "75000001", False),
    ("finess", "7500000012", False),
    ("finess", "2a0000001", False),
    ("finess", "A50000001", False),
    ("finess", "75000000\n", False),
    ("finess", "750000001\n", False),  # '$' used to accept a trailing newline
    ("finess", " 750000001", False),
    ("finess", "７５００００００１", False),  # full-width digits
    ("finess", "", False),
    ("ght", "GHT-IDF-75", True),
    ("ght", "ght_nord.2", True),
    ("ght", "G" * 64, True),
    ("ght", 'GHT"', False),
    ("ght", '55"]', False),
    ("ght", "[GHT]", False),
    ("ght", "GHT NORD", False),
    ("ght", "GHT/75", False),
    ("ght", "GHT-Île", False),
    ("ght", "G" * 65, False),
    ("ght", "", False),
    ("region", "84", True),
    ("region", "2A", True),
    ("region", '"84"', False),
    ("region", "[84]", False),
    ("region", "84 ", False),
    ("region", "84;drop", False),
    ("region", "", False),
]


def _collector_cli(state: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("vigie-collector"), *args, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _site_args(**over: str) -> list[str]:
    values = GOOD | over
    return ["--finess", values["finess"], "--ght", values["ght"], "--region", values["region"]]


def _issue_agent(state: Path, out: Path, *extra: str, **over: str) -> subprocess.CompletedProcess:
    return _collector_cli(
        state, "pki", "issue-agent", *_site_args(**over), "--out", str(out), *extra
    )


def _token_create(state: Path, **over: str) -> subprocess.CompletedProcess:
    return _collector_cli(state, "token", "create", *_site_args(**over), "--ttl", "1h")


def _files(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file()) if d.exists() else []


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A collector state directory with its PKI, no collector running."""
    s = tmp_path_factory.mktemp("identity") / "state"
    r = _collector_cli(s, "pki", "init")
    assert r.returncode == 0, r.stderr
    return s


# The commands --------------------------------------------------------------------------------


def test_issue_agent_refuses_a_bracketed_finess_and_writes_nothing(
    state: Path, tmp_path: Path
) -> None:
    before = _files(state)
    out = tmp_path / "out"
    r = _issue_agent(state, out, finess='55"]')
    assert r.returncode == 2
    assert "--finess" in r.stderr and "'55\"]'" in r.stderr and "FINESS" in r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()
    assert _files(state) == before


@pytest.mark.parametrize("value", ['GHT"', "GHT]", "[GHT", "GHT NORD", 'a"]', "G" * 65])
def test_issue_agent_refuses_a_bad_ght(state: Path, tmp_path: Path, value: str) -> None:
    out = tmp_path / "out"
    r = _issue_agent(state, out, ght=value)
    assert r.returncode == 2
    assert "--ght" in r.stderr and "A-Z a-z 0-9 . _ -" in r.stderr
    assert not out.exists()


@pytest.mark.parametrize("value", ['"84"', "[84]", "8 4", ""])
def test_issue_agent_refuses_a_bad_region(state: Path, tmp_path: Path, value: str) -> None:
    out = tmp_path / "out"
    r = _issue_agent(state, out, region=value)
    assert r.returncode == 2 and "--region" in r.stderr
    assert not out.exists()


def test_a_long_bad_value_is_not_echoed_whole(state: Path, tmp_path: Path) -> None:
    value = "x" * 30 + '"' * 5000
    r = _issue_agent(state, tmp_path / "out", ght=value)
    assert r.returncode == 2 and "--ght" in r.stderr
    assert '"' * 100 not in r.stderr and "5030 characters" in r.stderr


@pytest.mark.parametrize(("field", "value", "accepted"), CASES)
def test_token_create_and_issue_agent_agree(
    state: Path, tmp_path: Path, field: str, value: str, accepted: bool
) -> None:
    token = _token_create(state, **{field: value})
    issued = _issue_agent(state, tmp_path / "out", **{field: value})
    for r in (token, issued):
        assert r.returncode == (0 if accepted else 2), r.stderr
        if not accepted:
            assert f"--{field}" in r.stderr and "Traceback" not in r.stderr
    if accepted:
        # What was accepted survives the round trip through the certificate unchanged.
        cert = x509.load_pem_x509_certificate((tmp_path / "out" / "agent.crt").read_bytes())
        assert getattr(pki.Identity.from_certificate(cert), field) == value
    else:
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("value", "accepted"),
    [("agt-0123456789abcdef", True), ("site.75@ars", True), ("-rf", False), ("a b", False),
     ("agt/1", False), ('a"]', False), ("..", False), ("a" * 65, False)],
)  # fmt: skip
def test_issue_agent_checks_the_agent_id(
    state: Path, tmp_path: Path, value: str, accepted: bool
) -> None:
    r = _issue_agent(state, tmp_path / "out", f"--agent-id={value}")
    assert r.returncode == (0 if accepted else 2), r.stderr
    if accepted:
        cert = x509.load_pem_x509_certificate((tmp_path / "out" / "agent.crt").read_bytes())
        assert pki.Identity.from_certificate(cert).name == value
    else:
        assert "--agent-id" in r.stderr


@pytest.mark.parametrize(
    ("name", "role", "accepted", "refused_option"),
    [
        ("jean.dupont@ars-idf.fr", "regional:11", True, ""),
        ("ars-84", "national", True, ""),
        ("jean dupont", "national", False, "--name"),
        ('a"]', "national", False, "--name"),
        ("analyst", "regional:", False, "--role"),
        ("analyst", 'regional:84"]', False, "--role"),
        ("analyst", "regional:8 4", False, "--role"),
        ("analyst", "admin", False, "--role"),
    ],
)
def test_issue_analyst_checks_name_and_role(
    state: Path, tmp_path: Path, name: str, role: str, accepted: bool, refused_option: str
) -> None:
    out = tmp_path / "out"
    r = _collector_cli(
        state, "pki", "issue-analyst", f"--name={name}", f"--role={role}", "--out", str(out)
    )
    assert r.returncode == (0 if accepted else 2), r.stderr
    if accepted:
        cert = x509.load_pem_x509_certificate((out / "analyst.crt").read_bytes())
        assert pki.Identity.from_certificate(cert) == pki.Identity("analyst", name, role=role)
    else:
        assert refused_option in r.stderr and not out.exists()


# The rules themselves -----------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value", "accepted"), CASES)
def test_rules_match_the_commands(field: str, value: str, accepted: bool) -> None:
    check = {"finess": rules.check_finess, "ght": rules.check_ght, "region": rules.check_region}
    if accepted:
        assert check[field](value) == value
    else:
        with pytest.raises(ValueError, match=field):
            check[field](value)


def test_refusal_names_the_field_and_quotes_a_short_prefix() -> None:
    with pytest.raises(rules.InvalidValue) as err:
        rules.check_ght("A" * 200 + "]", "--ght")
    message = str(err.value)
    assert message.startswith("--ght 'AAAA") and "201 characters" in message
    assert "A" * 41 not in message


def test_registry_refuses_what_the_commands_refuse(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry.db")
    try:
        with pytest.raises(ValueError, match="finess"):
            reg.create_token('55"]', "GHT-A", "11", 60)
        with pytest.raises(ValueError, match="ght"):
            reg.create_token("750000001", "GHT A", "11", 60)
        reg.create_token("750000001", "GHT-A", "11", 60)
    finally:
        reg.close()


def test_the_ca_never_signs_an_invalid_identity(tmp_path: Path) -> None:
    with pytest.raises(pki.PkiError, match="finess"):
        pki.Identity("agent", "agt-1", '55"]', "GHT-A", "11")
    ident = pki.Identity("agent", "agt-1", "750000001", "GHT-A", "11")
    object.__setattr__(ident, "ght", 'GHT"]')  # past the constructor
    authority = pki.Authority.create(tmp_path / "ca")
    with pytest.raises(pki.PkiError, match="ght"):
        authority.issue(tmp_path / "out", "agent", identity=ident)
    assert not (tmp_path / "out" / "agent.crt").exists()


def test_status_names_are_one_mapping() -> None:
    assert {rules.status_name(v) for v in (1, 2, 3)} == {"open", "acknowledged", "closed"}
    for name, value in analyst_pb2.IncidentStatus.items():
        if value:
            assert rules.status_value(rules.status_name(value)) == value
            assert rules.status_name(value) == name.removeprefix("STATUS_").lower()
    assert rules.status_name(analyst_pb2.STATUS_ACKNOWLEDGED) == "acknowledged"
    with pytest.raises(ValueError, match="status"):
        rules.status_value("acked")


# A certificate carrying a bad value, signed by the collector's own CA --------------------------


def _forged(ca_dir: Path, out: Path, uri: str) -> Path:
    """An agent certificate with `uri` as its identity, signed by the real CA: what the CA
    would make if its checks were bypassed (or what an older collector issued)."""
    authority = pki.Authority(ca_dir)
    key = pki.new_key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agt-forged")]))
        .issuer_name(authority.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.cert.public_key()), False
        )
        .sign(authority.key, hashes.SHA256())
    )
    out.mkdir(parents=True)
    pki._write_private(out / "agent.key", pki._key_pem(key))
    (out / "agent.crt").write_bytes(pki.pem(cert))
    (out / "ca.crt").write_bytes(pki.pem(authority.cert))
    return out


BAD_URI = "vigie:agent/agt-forged?finess=" + quote('55"]', safe="") + "&ght=GHT-A&region=11"


class _Context:
    def __init__(self, pem: bytes) -> None:
        self.pem = pem

    def auth_context(self) -> dict:
        return {"x509_pem_cert": [self.pem]}


def test_caller_sees_no_identity_in_a_certificate_with_a_bad_finess(tmp_path: Path) -> None:
    pki.Authority.create(tmp_path / "ca")
    creds = _forged(tmp_path / "ca", tmp_path / "forged", BAD_URI)
    assert auth.caller(_Context((creds / "agent.crt").read_bytes())) is None
    good_uri = BAD_URI.replace(quote('55"]', safe=""), "750000001")
    good = _forged(tmp_path / "ca", tmp_path / "good", good_uri)
    assert auth.caller(_Context((good / "agent.crt").read_bytes())).finess == "750000001"


def _alert(aid: str, indicator: str) -> alert_pb2.Alert:
    a = alert_pb2.Alert(
        id=aid,
        revision=1,
        detector="net.portscan",
        severity=alert_pb2.SEVERITY_MEDIUM,
        technique="T1046",
        summary="vertical port scan",
        occurrences=5,
    )
    now = int(time.time())
    for f in (a.first_seen, a.last_seen, a.observed_at):
        f.FromSeconds(now)
    a.entities.add(
        role=alert_pb2.ROLE_SOURCE, kind=alert_pb2.KIND_IP, value=indicator, pseudonymised=False
    )
    return a


def _channel(c: Collector, creds: Path, stem: str) -> grpc.Channel:
    return grpc.secure_channel(
        c.address,
        grpc.ssl_channel_credentials(
            (creds / "ca.crt").read_bytes(),
            (creds / f"{stem}.key").read_bytes(),
            (creds / f"{stem}.crt").read_bytes(),
        ),
    )


def _send(c: Collector, creds: Path, *alerts: alert_pb2.Alert) -> list:
    batch = ingest_pb2.AlertBatch(seq=1, alerts=list(alerts))
    with _channel(c, creds, "agent") as ch:
        stub = ingest_pb2_grpc.IngestStub(ch)
        return list(stub.Stream(iter([ingest_pb2.AgentMessage(batch=batch)]), timeout=10))


def test_collector_refuses_a_certificate_with_a_bad_finess(
    collector: Collector, tmp_path: Path
) -> None:
    creds = _forged(collector.state_dir / "pki", tmp_path / "forged", BAD_URI)
    with pytest.raises(grpc.RpcError) as err:
        _send(collector, creds, _alert("x1", "203.0.113.7"))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with sqlite3.connect(collector.db()) as db:
        assert db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0] == 0
    assert b"certificate_refused" in collector.log.read_bytes()


# Enrollment ----------------------------------------------------------------------------------


class _Aborted(Exception):
    pass


class _EnrollContext:
    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Aborted(code, details)

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


def test_enrollment_never_issues_a_certificate_for_an_invalid_token_site(tmp_path: Path) -> None:
    """A token whose site fails today's rules (stored by an older version, or edited in the
    registry) is refused with a clear status, not turned into a certificate."""
    pki.init(tmp_path / "pki", ["localhost"])
    reg = Registry(tmp_path / "registry.db")
    try:
        token_id, secret, _ = reg.create_token("750000001", "GHT-A", "11", 600)
        reg._db.execute("UPDATE tokens SET ght = ? WHERE id = ?", ('GHT"]', token_id))
        key = pki.new_key()
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agent")]))
            .sign(key, hashes.SHA256())
        )
        servicer = EnrollmentServicer(tmp_path / "pki", reg, 3600)
        request = enroll_pb2.EnrollRequest(
            token=format_token(token_id, secret, ""),
            csr_pem=csr.public_bytes(serialization.Encoding.PEM),
        )
        with pytest.raises(_Aborted) as err:
            servicer.Enroll(request, _EnrollContext())
        assert err.value.args[0] == grpc.StatusCode.FAILED_PRECONDITION
        assert "new token" in err.value.args[1]
        assert reg._db.execute("SELECT COUNT(*) FROM certificates").fetchone()[0] == 0
    finally:
        reg.close()


# Status spelling in the analysts' command line ----------------------------------------------


def _vigie(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("vigie"), *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_vigie_prints_acknowledged(collector: Collector, tmp_path: Path) -> None:
    for i, (finess, ght) in enumerate((("111111111", "GHT-A"), ("222222222", "GHT-B"))):
        creds = collector.issue_agent(tmp_path / f"a{i}", finess=finess, ght=ght, region="11")
        assert _send(collector, creds, _alert(f"x{i}", "203.0.113.66"))[-1].ack.stored == 1
    creds = collector.issue_analyst(tmp_path / "n")
    with _channel(collector, creds, "analyst") as ch:
        stub = analyst_pb2_grpc.AnalystStub(ch)
        deadline = time.monotonic() + 15
        incidents: list = []
        while not incidents and time.monotonic() < deadline:
            incidents = list(
                stub.ListIncidents(analyst_pb2.ListIncidentsRequest(), timeout=10).incidents
            )
            time.sleep(0.1)
    assert incidents, "no incident from one indicator in two GHTs"
    key = incidents[0].key
    env = collector.analyst_env(creds)

    assert json.loads(_vigie(env, "incident", key, "--json").stdout)["status"] == "open"
    ack = _vigie(env, "ack", key, "-m", "seen")
    assert ack.returncode == 0, ack.stderr
    assert ack.stdout.strip() == f"acknowledged: {key}"

    detail = _vigie(env, "incident", key, "--json")
    assert detail.returncode == 0, detail.stderr
    assert json.loads(detail.stdout)["status"] == "acknowledged"
    listed = _vigie(env, "incidents", "--status", "acknowledged", "--json")
    assert [json.loads(line)["status"] for line in listed.stdout.splitlines()] == ["acknowledged"]
    # The former spelling is still understood on input, never printed.
    alias = _vigie(env, "incidents", "--status", "acked", "--json")
    assert alias.returncode == 0 and alias.stdout == listed.stdout
    table = _vigie(env, "incidents", "--no-colour")
    assert "acknowledged" in table.stdout and "acked " not in table.stdout
    assert all(len(line) <= 80 for line in table.stdout.splitlines())
    usage = _vigie(env, "incidents", "--help").stdout
    assert "acknowledged" in usage and "acked" not in usage
