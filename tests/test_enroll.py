"""Enrollment, renewal, revocation and CA rollover, with real collector and agent processes."""

from __future__ import annotations

import shutil
import sqlite3
import stat
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from agent.deliver.stream import Credentials, Sender
from agent.outbox.store import Outbox
from collector.pki.ca import Authority, Identity
from tests import _delivery_kit as kit
from tests.conftest import DATA, Collector, free_port, tool
from tests.test_collector_auth import _alert, _send
from vigie.v1 import enroll_pb2, enroll_pb2_grpc, ingest_pb2

PCAP = DATA / "nmap_syn_scan_1000ports.pcap"


def _start(tmp_path: Path, cfg: str = "", name: str = "collector", port: int | None = None):
    config = None
    if cfg:
        config = tmp_path / f"{name}.toml"
        config.write_text(cfg)
    eport = free_port()
    c = kit.start(tmp_path / name, port, config, enroll_port=eport)
    return c, f"127.0.0.1:{eport}"


@pytest.fixture
def enrolling(tmp_path: Path):
    c, enroll_at = _start(tmp_path)
    try:
        yield c, enroll_at
    finally:
        kit.stop(c)


def token(c: Collector, finess="750000001", ght="GHT-IDF-75", region="11", ttl="1h") -> str:
    r = subprocess.run(
        [
            tool("vigie-collector"),
            "token",
            "create",
            "--state-dir",
            str(c.state_dir),
            "--region",
            region,
            "--ght",
            ght,
            "--finess",
            finess,
            "--ttl",
            ttl,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def enroll(address: str, tok: str, state: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            tool("vigie-agent"),
            "enroll",
            "--collector",
            address,
            "--token",
            tok,
            "--state-dir",
            str(state),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def replay(c: Collector, state: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            tool("vigie-agent"),
            "replay",
            str(PCAP),
            "--state-dir",
            str(state),
            "--output",
            "collector",
            "--collector",
            c.address,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def cert_of(state: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((state / "tls" / "agent.crt").read_bytes())


def origins(c: Collector) -> set[tuple]:
    with sqlite3.connect(c.db()) as db:
        return set(db.execute("SELECT agent_id, finess, ght, region FROM alerts").fetchall())


def channel(c: Collector, tls: Path) -> grpc.Channel:
    return grpc.secure_channel(
        c.address,
        grpc.ssl_channel_credentials(
            (tls / "ca.crt").read_bytes(),
            (tls / "agent.key").read_bytes(),
            (tls / "agent.crt").read_bytes(),
        ),
    )


def test_token_enroll_deliver_and_reenroll(enrolling, tmp_path: Path) -> None:
    c, enroll_at = enrolling
    tok = token(c)
    secret = tok.split(".")[2]
    state = tmp_path / "agent"
    r = enroll(enroll_at, tok, state)  # CA pinned by the fingerprint inside the token
    assert r.returncode == 0, r.stdout + r.stderr
    key = state / "tls" / "agent.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    ident = Identity.from_certificate(cert_of(state))
    assert (ident.finess, ident.ght, ident.region) == ("750000001", "GHT-IDF-75", "11")
    # The collector keeps only a hash of the token, and never saw the key.
    registry = (c.state_dir / "registry.db").read_bytes()
    assert secret.encode() not in registry
    assert key.read_bytes().split(b"\n")[1] not in b"".join(
        p.read_bytes() for p in c.state_dir.rglob("*") if p.is_file()
    )

    r = replay(c, state)
    assert r.returncode == 0, r.stdout + r.stderr
    assert origins(c) == {(ident.name, "750000001", "GHT-IDF-75", "11")}

    # Enrolling again over an identity is refused unless asked for, saying what it is.
    before = (state / "tls" / "agent.crt").read_bytes()
    r = enroll(enroll_at, token(c), state)
    assert r.returncode == 2 and f"already enrolled as agent {ident.name}" in r.stderr
    assert "--force" in r.stderr and "agent retire" in r.stderr
    assert (state / "tls" / "agent.crt").read_bytes() == before

    # The token is spent: a second use is refused and changes nothing.
    r = enroll(enroll_at, tok, state, "--force")
    assert r.returncode == 2 and "UNAUTHENTICATED" in r.stderr
    assert (state / "tls" / "agent.crt").read_bytes() == before

    # Reinstalled server, same state dir: a new token, a fresh agent id, no collision.
    r = enroll(enroll_at, token(c), state, "--force")
    assert r.returncode == 0, r.stderr
    assert f"replacing agent {ident.name} (FINESS 750000001, GHT GHT-IDF-75" in r.stderr
    again = Identity.from_certificate(cert_of(state))
    assert again.name != ident.name and again.finess == "750000001"
    assert replay(c, state).returncode == 0
    assert {o[0] for o in origins(c)} == {ident.name, again.name}


def test_expired_token_is_refused(enrolling, tmp_path: Path) -> None:
    c, enroll_at = enrolling
    tok = token(c, ttl="1s")
    time.sleep(1.5)
    r = enroll(enroll_at, tok, tmp_path / "agent")
    assert r.returncode == 2 and "UNAUTHENTICATED" in r.stderr
    assert not (tmp_path / "agent" / "tls" / "agent.crt").exists()


def test_wrong_ca_fingerprint_sends_nothing(enrolling, tmp_path: Path) -> None:
    c, enroll_at = enrolling
    tok = token(c)
    rogue = Authority.create(tmp_path / "rogue")
    bare = ".".join(tok.split(".")[:3])  # the token without its fingerprint
    r = enroll(enroll_at, bare, tmp_path / "agent", "--ca-fingerprint", "ab" * 32)
    assert r.returncode == 2 and "does not match" in r.stderr
    r = enroll(enroll_at, bare, tmp_path / "agent", "--ca", str(rogue.dir / "ca.crt"))
    assert r.returncode == 2  # TLS fails: the collector is not who the agent trusts
    r = enroll(enroll_at, bare, tmp_path / "agent")
    assert r.returncode == 2 and "--ca-fingerprint" in r.stderr
    # The token was never presented, so it still works with the right pin.
    r = enroll(enroll_at, bare, tmp_path / "agent", "--ca", str(c.state_dir / "pki" / "ca.crt"))
    assert r.returncode == 0, r.stderr


def test_enrollment_port_serves_nothing_else(enrolling, tmp_path: Path) -> None:
    c, enroll_at = enrolling
    creds = c.issue_agent(tmp_path / "a")
    ca = (c.state_dir / "pki" / "ca.crt").read_bytes()
    with grpc.secure_channel(enroll_at, grpc.ssl_channel_credentials(ca)) as ch:
        with pytest.raises(grpc.RpcError) as err:
            _send(ch, _alert())
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.RpcError) as err:
            enroll_pb2_grpc.RenewalStub(ch).Renew(enroll_pb2.RenewRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert kit.stored(c.db()) == 0
    # And on the main port, Renew wants an agent certificate like everything else.
    with (
        pytest.raises(grpc.RpcError) as err,
        grpc.secure_channel(c.address, grpc.ssl_channel_credentials(ca)) as ch,
    ):
        enroll_pb2_grpc.RenewalStub(ch).Renew(enroll_pb2.RenewRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert creds.exists()


def test_revoked_agent_is_refused(enrolling, tmp_path: Path) -> None:
    c, enroll_at = enrolling
    state = tmp_path / "agent"
    assert enroll(enroll_at, token(c), state).returncode == 0
    agent_id = Identity.from_certificate(cert_of(state)).name
    with channel(c, state / "tls") as ch:
        _send(ch, _alert(1))
    r = subprocess.run(
        [tool("vigie-collector"), "agent", "revoke", agent_id, "--state-dir", str(c.state_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "revoked" in r.stdout
    time.sleep(1.0)  # the interceptor's cache re-reads the registry within 0.5 s
    with channel(c, state / "tls") as ch:
        with pytest.raises(grpc.RpcError) as err:
            _send(ch, _alert(2))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            enroll_pb2_grpc.RenewalStub(ch).Renew(enroll_pb2.RenewRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert kit.stored(c.db()) == 1


def test_expired_certificate_is_refused(enrolling, tmp_path: Path) -> None:
    c, _ = enrolling
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(key, hashes.SHA256())
    )
    ca = Authority(c.state_dir / "pki")
    ident = Identity("agent", "agt-expired", "750000001", "GHT-IDF-75", "11")
    cert = ca.sign(csr, identity=ident, seconds=1)
    tls = tmp_path / "tls"
    tls.mkdir()
    (tls / "agent.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tls / "agent.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    shutil.copy(c.state_dir / "pki" / "ca.crt", tls / "ca.crt")
    time.sleep(2)
    with channel(c, tls) as ch, pytest.raises(grpc.RpcError) as err:
        _send(ch, _alert())
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails
    assert kit.stored(c.db()) == 0


def test_certificate_renews_over_the_stream_and_delivery_goes_on(tmp_path: Path) -> None:
    # 30 s certificates: long enough that a loaded machine's slow start still finds the
    # first one valid (with 20 s it once expired before the replay could renew it)
    c, enroll_at = _start(tmp_path, "[pki]\nagent_cert_seconds = 30\n")
    try:
        state = tmp_path / "agent"
        assert enroll(enroll_at, token(c), state).returncode == 0
        first = cert_of(state)
        # A third of the lifetime left: the next connection renews first (real process).
        time.sleep(20.5)
        r = replay(c, state)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "cert_renewed" in r.stdout
        second = cert_of(state)
        assert second.serial_number != first.serial_number
        assert second.not_valid_after_utc > first.not_valid_after_utc
        assert second.public_key() == first.public_key()  # same key: it never moved
        assert Identity.from_certificate(second) == Identity.from_certificate(first)
        assert kit.stored(c.db()) >= 1

        # A long-lived stream: renewals happen mid-stream, the sender reconnects with the
        # new certificate and delivery does not stop, well past the first certificate's end.
        outbox = Outbox(tmp_path / "outbox.db")
        tls = state / "tls"
        creds = Credentials(tls / "ca.crt", tls / "agent.crt", tls / "agent.key")
        sender = Sender(outbox, c.address, creds, ingest_pb2.Heartbeat, 10, 1.0)
        sender.start()
        stop = threading.Event()

        def produce() -> None:
            i = 0
            while not stop.is_set():
                outbox.put(_alert(1000 + i))
                i += 1
                stop.wait(0.2)

        producer = threading.Thread(target=produce)
        producer.start()
        time.sleep(24)  # past the renewed certificate's last third: a renewal mid-stream
        stop.set()
        producer.join()
        assert sender.drain(20)
        sender.stop()
        sender.join(5)
        outbox.close()
        assert sender.renewals >= 1 and sender.connects >= 2, (sender.renewals, sender.connects)
        assert time.time() > first.not_valid_after_utc.timestamp()
        with sqlite3.connect(c.db()) as db:
            n = db.execute("SELECT COUNT(*) FROM alerts WHERE alert_id LIKE 'a1%'").fetchone()[0]
        assert n >= 70
    finally:
        kit.stop(c)


def test_ca_rollover_keeps_old_agents_and_signs_new_ones(tmp_path: Path) -> None:
    port = free_port()
    c, enroll_at = _start(tmp_path, port=port)
    old_state, new_state = tmp_path / "old", tmp_path / "new"
    assert enroll(enroll_at, token(c), old_state).returncode == 0
    kit.stop(c)
    r = subprocess.run(
        [tool("vigie-collector"), "pki", "rollover", "--state-dir", str(c.state_dir)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    c, enroll_at = _start(tmp_path, port=port)
    try:
        assert enroll(enroll_at, token(c, finess="690000002"), new_state).returncode == 0
        assert cert_of(new_state).issuer != cert_of(old_state).issuer
        assert replay(c, old_state).returncode == 0  # signed by the old CA: still trusted
        assert replay(c, new_state).returncode == 0  # signed by the new one
        assert {o[1] for o in origins(c)} == {"750000001", "690000002"}
    finally:
        kit.stop(c)


def test_rollover_finishes_with_a_server_certificate_from_the_new_ca(tmp_path: Path) -> None:
    """The whole rollover: the server certificate moves to the new CA only once every agent
    has renewed (and so received the bundle of both CAs); then the old agent still
    connects, to a server it now authenticates through the new CA."""
    cfg = "[pki]\nagent_cert_seconds = 20\n"
    port = free_port()
    c, enroll_at = _start(tmp_path, cfg, port=port)
    state = tmp_path / "agent"
    assert enroll(enroll_at, token(c), state).returncode == 0
    kit.stop(c)

    def pki_run(cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [tool("vigie-collector"), "pki", cmd, "--state-dir", str(c.state_dir)],
            capture_output=True,
            text=True,
        )

    assert pki_run("rollover").returncode == 0
    refused = pki_run("reissue-server")
    assert refused.returncode == 2 and "1 agent(s) have not renewed" in refused.stderr
    c, enroll_at = _start(tmp_path, cfg, port=port)
    try:
        time.sleep(13.5)  # a third of its lifetime left: the next connection renews first
        r = replay(c, state)
        assert r.returncode == 0 and "cert_renewed" in r.stdout, r.stdout + r.stderr
        # the renewal brought the bundle of both CAs
        assert (state / "tls" / "ca.crt").read_bytes().count(b"BEGIN CERTIFICATE") == 2
    finally:
        kit.stop(c)
    done = pki_run("reissue-server")
    assert done.returncode == 0, done.stderr
    pki_dir = c.state_dir / "pki"
    server_cert = x509.load_pem_x509_certificate((pki_dir / "server.crt").read_bytes())
    new_ca = x509.load_pem_x509_certificate((pki_dir / "ca.crt").read_bytes())
    assert server_cert.issuer == new_ca.subject
    c, _ = _start(tmp_path, cfg, port=port)
    try:
        r = replay(c, state)  # delivers: it authenticated the new server certificate
        assert r.returncode == 0, r.stdout + r.stderr
        assert kit.outbox_depth(state) == 0
    finally:
        kit.stop(c)


def test_a_certificate_issued_in_the_rollover_second_counts_as_not_renewed(tmp_path: Path) -> None:
    """The rollover's time is kept to the second: an agent enrolled in that same second,
    just before it, must still be asked to renew before the server certificate moves
    (a clean-clone CI run once met this race)."""
    import datetime as dt

    from collector.pki.ca import last_rollover

    (tmp_path / "trusted").mkdir()
    (tmp_path / "trusted" / "ca-20261129T100847-0123456789ab.crt").write_bytes(b"")
    second = dt.datetime(2026, 11, 29, 10, 8, 47, tzinfo=dt.UTC).timestamp()
    since = last_rollover(tmp_path)
    assert since is not None
    assert second + 0.3 < since  # issued 0.3 s into the rollover's second: before it
    assert since <= second + 1.0  # a renewal in the next second is after it
    assert last_rollover(tmp_path / "none") is None


def _self_signed(not_before, not_after) -> bytes:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vigie-agent")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    "not_before, not_after",
    [
        ("2026-11-29T10:00:00", "2026-12-29T10:00:00"),  # both UTCTime
        ("2049-12-31T23:59:59", "2050-01-01T00:00:01"),  # UTCTime, then GeneralizedTime
        ("1999-06-01T00:00:00", "2061-03-04T05:06:07"),  # 19YY UTCTime, GeneralizedTime
    ],
)
def test_the_renewal_clock_reads_the_dates_cryptography_reads(not_before, not_after) -> None:
    """The running agent reads its certificate's dates without loading cryptography (8 MB
    resident); what it reads must be what cryptography reads, on either time encoding."""
    import datetime as dt

    from agent.deliver import validity

    nb, na = (dt.datetime.fromisoformat(t).replace(tzinfo=dt.UTC) for t in (not_before, not_after))
    pem = _self_signed(nb, na)
    cert = x509.load_pem_x509_certificate(pem)
    assert validity.validity(pem) == (cert.not_valid_before_utc, cert.not_valid_after_utc)
    left, total = validity.lifetime_left(pem, now=nb)
    assert (left, total) == ((na - nb).total_seconds(), (na - nb).total_seconds())
    # what the agent's state dir holds: the certificate, then maybe more PEM blocks
    assert validity.validity(b"junk\n" + pem + pem)[1] == cert.not_valid_after_utc


@pytest.mark.parametrize(
    "pem",
    [b"", b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
     b"-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n",
     b"-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----\n"],
)  # fmt: skip
def test_an_unreadable_certificate_is_a_value_error(pem: bytes) -> None:
    from agent.deliver import validity

    with pytest.raises(ValueError, match="certificate"):
        validity.lifetime_left(pem)


def test_the_running_agent_does_not_load_cryptography() -> None:
    """8 MB of the agent's 100 MB budget: only enrollment, renewal and prefix-preserving
    anonymisation need it."""
    out = subprocess.run(
        [tool("python"), "-c", "import sys; import agent.cli, agent.deliver.stream, "
         "agent.host.sampler, agent.host.intel, agent.selfguard, common.metrics; "
         "print(sorted(m for m in sys.modules if 'cryptography' in m))"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.strip() == "[]"
