"""The collector's administration: server certificate names changed after the first start,
enrollment tokens listed and revoked, agents listed and retired (issue #26)."""

from __future__ import annotations

import ipaddress
import re
import sqlite3
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from collector.pki import ca as pki
from collector.store import open_store
from tests import _delivery_kit as kit
from tests.conftest import Collector, free_port, tool
from tests.test_collector_auth import _alert, _send
from tests.test_enroll import cert_of, channel, enroll, token
from vigie.v1 import analyst_pb2, analyst_pb2_grpc, enroll_pb2, enroll_pb2_grpc

NEW_NAMES = (
    '[pki]\nserver_names = ["localhost", "127.0.0.1", "::1", "collector.test", "127.0.0.2"]\n'
)


def admin(c: Collector, *args: str, config: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [tool("vigie-collector"), *args, "--state-dir", str(c.state_dir)]
    if config is not None:
        cmd += ["--config", str(config)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def _csr() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agent")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def enroll_as(enroll_at: str, name: str, ca: bytes, tok: str) -> enroll_pb2.EnrollResponse:
    """Enroll over 127.0.0.1 while checking the server certificate against `name`: what
    an agent configured with `--collector name:port` verifies."""
    with grpc.secure_channel(
        enroll_at,
        grpc.ssl_channel_credentials(ca),
        options=[("grpc.ssl_target_name_override", name)],
    ) as ch:
        stub = enroll_pb2_grpc.EnrollmentStub(ch)
        return stub.Enroll(enroll_pb2.EnrollRequest(token=tok, csr_pem=_csr()), timeout=10)


def _start(tmp_path: Path, port: int, eport: int, config: Path | None) -> tuple[Collector, str]:
    """A collector and the part of its log written by this start."""
    log = tmp_path / "collector.log"
    at = log.stat().st_size if log.exists() else 0
    c = kit.start(tmp_path / "collector", port, config, enroll_port=eport)
    return c, log.read_text()[at:]


def test_reissue_server_takes_the_configured_names(tmp_path: Path) -> None:
    port, eport = free_port(), free_port()
    enroll_at = f"127.0.0.1:{eport}"
    c, first = _start(tmp_path, port, eport, None)  # first start: default names
    kit.stop(c)
    assert "server_certificate_names" not in first

    config = tmp_path / "collector.toml"
    config.write_text(NEW_NAMES)
    c, second = _start(tmp_path, port, eport, config)
    try:
        # Named in the warning with the fix; the certificate did not change by itself.
        warning = next(x for x in second.splitlines() if "server_certificate_names" in x)
        assert "collector.test" in warning and "127.0.0.2" in warning
        assert "vigie-collector pki reissue-server" in warning
        ca = (c.state_dir / "pki" / "ca.crt").read_bytes()
        tok = token(c)
        with pytest.raises(grpc.RpcError) as err:
            enroll_as(enroll_at, "collector.test", ca, tok)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # hostname verification
    finally:
        kit.stop(c)

    r = admin(c, "pki", "reissue-server", config=config)
    assert r.returncode == 0, r.stderr
    assert "collector.test" in r.stdout
    cert = x509.load_pem_x509_certificate((c.state_dir / "pki" / "server.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "collector.test"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "127.0.0.2")
    }
    assert pki.missing_server_names(c.state_dir / "pki", ["collector.test", "127.0.0.2"]) == []

    c, third = _start(tmp_path, port, eport, config)
    try:
        assert "server_certificate_names" not in third
        # The token refused by TLS above was never presented: it enrolls now.
        got = enroll_as(enroll_at, "collector.test", ca, tok)
        assert got.agent_id.startswith("agt-")
        assert enroll_as(enroll_at, "127.0.0.2", ca, token(c)).agent_id
        with pytest.raises(grpc.RpcError) as err:
            enroll_as(enroll_at, "other.test", ca, token(c))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        kit.stop(c)


def test_names_compare_as_tls_does(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    pki.init(d, ["Collector.Example", "*.vigie.test", "::1"])
    assert pki.missing_server_names(d, ["collector.example", "a.vigie.test", "0:0::1"]) == []
    assert pki.missing_server_names(d, ["a.b.vigie.test", "vigie.test", "::2"]) == [
        "a.b.vigie.test",
        "vigie.test",
        "::2",
    ]
    # The listen host counts, unless it is a wildcard address no agent dials.
    assert pki.configured_names(["localhost"], "10.1.2.3:4443") == ["localhost", "10.1.2.3"]
    assert pki.configured_names(["localhost"], "0.0.0.0:4443") == ["localhost"]
    assert pki.configured_names(["::1"], "[::1]:4443") == ["::1"]
    # Reissued without names (a rollover's last step): the same names as before.
    before = pki.server_certificate_names(d)
    assert pki.server_certificate_names(d) == pki.certificate_names(pki.reissue_server(d))
    assert before == pki.server_certificate_names(d)


@pytest.fixture
def enrolling(tmp_path: Path):
    eport = free_port()
    c = kit.start(tmp_path / "collector", None, None, enroll_port=eport)
    try:
        yield c, f"127.0.0.1:{eport}"
    finally:
        kit.stop(c)


def _row(out: str, key: str) -> str:
    return next(line for line in out.splitlines() if key in line)


def test_tokens_are_listed_and_revoked(enrolling, tmp_path: Path) -> None:
    c, enroll_at = enrolling
    ght = "GHT-HAUTS-DE-FRANCE-LITTORAL-ET-ARRIERE-PAYS"  # longer than any column cut
    used, spare = token(c, ght=ght), token(c)
    used_id, spare_id = used.split(".")[1], spare.split(".")[1]
    r = admin(c, "token", "list")
    assert r.returncode == 0, r.stderr
    assert ght in _row(r.stdout, used_id) and "unused" in _row(r.stdout, used_id)
    assert "unused" in _row(r.stdout, spare_id)
    assert used.split(".")[2] not in r.stdout and spare.split(".")[2] not in r.stdout

    state = tmp_path / "agent"
    assert enroll(enroll_at, used, state).returncode == 0
    agent_id = pki.Identity.from_certificate(cert_of(state)).name
    line = _row(admin(c, "token", "list").stdout, used_id)
    assert "used" in line and "unused" not in line and agent_id in line

    r = admin(c, "token", "revoke", spare_id)
    assert r.returncode == 0 and "revoked" in r.stdout, r.stderr
    assert "revoked" in _row(admin(c, "token", "list").stdout, spare_id)
    r = enroll(enroll_at, spare, tmp_path / "other")
    assert r.returncode == 2 and "UNAUTHENTICATED" in r.stderr
    assert "enrollment token unknown, used or expired" in r.stderr
    assert not (tmp_path / "other" / "tls" / "agent.crt").exists()
    assert kit.wait_for(lambda: "token revoked" in c.log.read_text(), 10)  # the operator's why

    r = admin(c, "token", "revoke", used_id)  # spent already: the agent is what to act on
    assert r.returncode == 2 and agent_id in r.stderr and "agent retire" in r.stderr
    r = admin(c, "token", "revoke", "0123456789abcdef")
    assert r.returncode == 2 and "no token" in r.stderr


def _listed(c: Collector, analyst: Path) -> set[str]:
    ca = (analyst / "ca.crt").read_bytes()
    creds = grpc.ssl_channel_credentials(
        ca, (analyst / "analyst.key").read_bytes(), (analyst / "analyst.crt").read_bytes()
    )
    with grpc.secure_channel(c.address, creds) as ch:
        got = analyst_pb2_grpc.AnalystStub(ch).ListAgents(
            analyst_pb2.ListAgentsRequest(), timeout=10
        )
    return {a.origin.agent_id for a in got.agents}


def _dark_sites(c: Collector) -> int:
    """What the dark-site rule would find an hour from now (every agent silent by then)."""
    store = open_store(f"sqlite:///{c.db()}")
    try:
        with store.backend.tx() as tx:
            return store.dark_sites(tx, time.time() + 3600)
    finally:
        store.close()


def test_agents_are_listed_and_retired(enrolling, tmp_path: Path) -> None:
    c, enroll_at = enrolling
    ght = "GHT-HAUTS-DE-FRANCE-LITTORAL-ET-ARRIERE-PAYS"
    state = tmp_path / "agent"
    assert enroll(enroll_at, token(c, ght=ght), state).returncode == 0
    agent_id = pki.Identity.from_certificate(cert_of(state)).name
    with channel(c, state / "tls") as ch:
        _send(ch, _alert(1))
    analyst = c.issue_analyst(tmp_path / "analyst")

    r = admin(c, "agent", "list")
    assert r.returncode == 0, r.stderr
    line = _row(r.stdout, agent_id)
    assert "750000001" in line and ght in line and "active" in line
    cols = re.split(r"\s{2,}", line)
    assert cols[:5] == [agent_id, "-", "750000001", ght, "11"]  # no heartbeat yet: no host
    # enrolled, never renewed, certificate expiry, state, last seen
    assert cols[5].endswith("Z") and cols[6] == "-" and cols[7].endswith("Z")
    assert cols[8] == "active" and cols[9].endswith("Z")
    assert agent_id in _listed(c, analyst)
    assert _dark_sites(c) == 1

    r = admin(c, "agent", "retire", agent_id, "--reason", "server reinstalled")
    assert r.returncode == 0 and "retired" in r.stdout, r.stderr
    with channel(c, state / "tls") as ch:
        with pytest.raises(grpc.RpcError) as err:
            _send(ch, _alert(2))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "retired" in _row(admin(c, "agent", "list").stdout, agent_id)
    assert agent_id not in _listed(c, analyst)  # no longer shown silent
    assert _dark_sites(c) == 0  # nor counted by the dark-site rule
    with sqlite3.connect(c.db()) as db:  # its alerts stay
        (n,) = db.execute("SELECT COUNT(*) FROM alerts WHERE agent_id = ?", (agent_id,)).fetchone()
    assert n == 1

    r = admin(c, "agent", "retire", "agt-0000000000000000")
    assert r.returncode == 2 and "no agent" in r.stderr
