"""`vigie-agent doctor`: is this host ready to run the agent, and if not, what to do.

One line per check, `OK`, `WARN` or `FAIL`, with the remedy after a non-OK result. Exit
status 0 when nothing failed, 1 otherwise. It runs with the same privileges as the
command that starts it: run it the way the service runs, e.g.
    systemd-run --pty --wait -p User=vigie-agent \\
        -p AmbientCapabilities="CAP_NET_RAW CAP_NET_ADMIN" vigie-agent doctor -i eth0
or as root to check everything but the capabilities the unit grants.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from agent import settings
from common import config, ownership
from common.checks import FAIL, OK, WARN, Result

CAP_NET_ADMIN, CAP_NET_RAW = 12, 13
EXPIRY_WARN_DAYS = 30
SKEW_WARN_SECONDS = 5.0
SKEW_FAIL_SECONDS = 300.0
FULL_BYTES = 256 * 1024  # less free than this in state_dir: full for the outbox


def effective_caps(status_text: str | None = None) -> int:
    """CapEff of this process, from /proc/self/status."""
    text = status_text if status_text is not None else Path("/proc/self/status").read_text()
    for line in text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def check_caps(caps: int | None = None) -> list[Result]:
    caps = effective_caps() if caps is None else caps
    fix = "run through the systemd unit (AmbientCapabilities=CAP_NET_RAW CAP_NET_ADMIN) or as root"
    out = []
    for name, bit in (("CAP_NET_RAW", CAP_NET_RAW), ("CAP_NET_ADMIN", CAP_NET_ADMIN)):
        if caps >> bit & 1:
            out.append(Result(OK, "capabilities", f"{name} effective"))
        else:
            out.append(Result(FAIL, "capabilities", f"{name} missing (capture needs it)", fix))
    return out


def check_interface(name: str | None, sys_net: Path = Path("/sys/class/net")) -> Result:
    if not name:
        return Result(
            WARN,
            "interface",
            "no interface given",
            "pass --interface IF (the one in VIGIE_INTERFACE, /etc/default/vigie-agent)",
        )
    d = sys_net / name
    if not d.exists():
        known = ", ".join(sorted(p.name for p in sys_net.iterdir())) if sys_net.is_dir() else ""
        return Result(
            FAIL,
            "interface",
            f"{name} does not exist (here: {known})",
            "set VIGIE_INTERFACE in /etc/default/vigie-agent to one of these",
        )
    try:
        flags = int((d / "flags").read_text().strip(), 16)
        oper = (d / "operstate").read_text().strip()
    except (OSError, ValueError):
        flags, oper = 1, "unknown"
    if not flags & 1:  # IFF_UP
        return Result(FAIL, "interface", f"{name} is down", f"ip link set {name} up")
    if oper not in ("up", "unknown"):
        return Result(
            WARN,
            "interface",
            f"{name} is up but its link is {oper}",
            "check the cable or the SPAN port",
        )
    return Result(OK, "interface", f"{name} is up ({oper})")


def check_bpf(expr: str, interface: str | None) -> Result:
    if not expr:
        return Result(OK, "bpf filter", "none (every packet)")
    from agent.capture import bpf

    try:
        bpf.compile_filter(expr)  # live capture is on Ethernet-type links (lo's too)
    except bpf.LibpcapMissing as exc:
        fix = "apt install libpcap0.8 (RHEL: dnf install libpcap)"
        return Result(FAIL, "bpf filter", str(exc).split(":")[0], fix)
    except bpf.BpfError as exc:
        return Result(
            FAIL,
            "bpf filter",
            f"{expr!r} does not compile: {exc}",
            "fix [capture] bpf_filter (tcpdump syntax: `tcpdump -d 'EXPR'` shows why)",
        )
    return Result(OK, "bpf filter", f"{expr!r} compiles")


def check_state_dir(cfg: dict[str, Any]) -> Result:
    d = Path(cfg["state_dir"])
    if not d.is_dir():
        return Result(
            FAIL,
            "state dir",
            f"{d} does not exist",
            "systemd-tmpfiles --create vigie.conf (or start the unit once: StateDirectory=)",
        )
    if not os.access(d, os.W_OK | os.X_OK):
        return Result(
            FAIL,
            "state dir",
            f"{d} is not writable by uid {os.getuid()}",
            f"chown -R vigie-agent: {d}",
        )
    return check_state_space(d, cfg["outbox"]["low_space_mb"], cfg["outbox"]["low_space_percent"])


def _size(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB" if n < 10 * 1024**3 else f"{n / 1024**3:.1f} GB"


def check_state_space(
    d: Path, low_space_mb: float = 100.0, low_space_percent: float = 5.0
) -> Result:
    """Free space of the state directory, and a real write: os.access says "writable" on
    a full filesystem, where the outbox can then only hold alerts in memory."""
    from agent.outbox.store import low_on_space

    fix = (
        f"free space on the filesystem of {d} (df -h {d}; old logs, core dumps), or move "
        "state_dir to a larger one; until then alerts are only held in memory"
    )
    probe = d / f".doctor-write-test-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * 64 * 1024)  # a few SQLite pages' worth, really allocated
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        st = _statvfs(d)
        free = f" ({_size(st[0])} free of {_size(st[1])})" if st else ""
        return Result(FAIL, "state dir", f"{d} cannot be written{free}: {exc.strerror}", fix)
    finally:
        probe.unlink(missing_ok=True)
    st = _statvfs(d)
    if st is None:
        return Result(OK, "state dir", f"{d} writable")
    free, total = st
    text = f"{d} writable, {_size(free)} free of {_size(total)}"
    if free < FULL_BYTES:  # the probe fitted, the outbox's next WAL pages may not
        return Result(FAIL, "state dir", f"{d} is full: {_size(free)} free of {_size(total)}", fix)
    if low_on_space(free, total, low_space_mb, low_space_percent):
        return Result(
            WARN,
            "state dir",
            text + " (low)",
            (
                f"free space on the filesystem of {d} before it fills (df -h {d}): a full "
                "one leaves alerts only in memory"
            ),
        )
    return Result(OK, "state dir", text)


def _statvfs(d: Path) -> tuple[int, int] | None:
    from agent.outbox.store import free_space

    try:
        return free_space(d)
    except OSError:
        return None


def _load_certs(path: Path):
    from cryptography import x509

    return x509.load_pem_x509_certificates(path.read_bytes())


def check_certificate(
    ca: Path, cert: Path, key: Path, now: dt.datetime | None = None
) -> list[Result]:
    from cryptography.hazmat.primitives import serialization

    now = now or dt.datetime.now(dt.UTC)
    enroll = "enroll: vigie-agent enroll --collector HOST:PORT --token TOKEN"
    missing = [p for p in (ca, cert, key) if not p.exists()]
    if missing:
        return [Result(FAIL, "certificate", f"missing {', '.join(map(str, missing))}", enroll)]
    try:
        crt = _load_certs(cert)[0]
        cas = _load_certs(ca)
        priv = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except (ValueError, TypeError, IndexError) as exc:
        return [Result(FAIL, "certificate", f"unreadable credentials: {exc}", enroll)]
    except PermissionError as exc:
        return [
            Result(
                FAIL,
                "certificate",
                f"cannot read {exc.filename}",
                "run doctor as the service user (vigie-agent) or root",
            )
        ]
    out = []
    left = crt.not_valid_after_utc - now
    if crt.not_valid_before_utc > now:
        out.append(
            Result(
                FAIL,
                "certificate",
                f"not valid before {crt.not_valid_before_utc:%Y-%m-%d %H:%M}Z",
                "check this host's clock (timedatectl)",
            )
        )
    elif left.total_seconds() <= 0:
        out.append(
            Result(
                FAIL,
                "certificate",
                f"expired on {crt.not_valid_after_utc:%Y-%m-%d}",
                "enroll again with a new token: " + enroll,
            )
        )
    elif left < dt.timedelta(days=EXPIRY_WARN_DAYS):
        out.append(
            Result(
                WARN,
                "certificate",
                f"expires in {left.days} days ({crt.not_valid_after_utc:%Y-%m-%d})",
                "the running agent renews it over its stream; check it reaches the collector",
            )
        )
    else:
        out.append(
            Result(
                OK,
                "certificate",
                f"valid until {crt.not_valid_after_utc:%Y-%m-%d} ({left.days} days)",
            )
        )
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if priv.public_key().public_bytes(enc, pub) != crt.public_key().public_bytes(enc, pub):
        out.append(Result(FAIL, "key", f"{key} does not match {cert}", "enroll again: " + enroll))
    else:
        out.append(Result(OK, "key", "private key matches the certificate"))
    for c in cas:
        try:
            crt.verify_directly_issued_by(c)
        except Exception:  # InvalidSignature, ValueError, TypeError (other key types)
            continue
        out.append(Result(OK, "ca", f"certificate signed by {c.subject.rfc4514_string()}"))
        break
    else:
        out.append(
            Result(
                FAIL,
                "ca",
                f"{cert} is not signed by a CA in {ca}",
                "get the collector's current ca.crt, or enroll again",
            )
        )
    return out


def check_collector(
    address: str, ca: Path, cert: Path, key: Path, timeout: float = 5.0
) -> list[Result]:
    if problem := config.host_port(address):
        # "collector.example" alone: the port is part of the address, no default is assumed
        return [
            Result(
                FAIL,
                "collector",
                f"address {address!r} {problem}",
                "give HOST:PORT, the collector's main port (e.g. collector.example:4443)",
            )
        ]
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except OSError as exc:
        return [
            Result(
                FAIL,
                "collector tcp",
                f"cannot connect to {address}: {exc.strerror or exc}",
                "check [collector] address, DNS, and that the firewall lets TCP "
                f"{port} out to the collector",
            )
        ]
    out = [Result(OK, "collector tcp", f"{address} reachable")]
    try:
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.load_cert_chain(str(cert), str(key))
        ctx.set_alpn_protocols(["h2"])
        with ctx.wrap_socket(sock, server_hostname=host) as tls:
            version = tls.version()
    except (ssl.SSLError, OSError, ValueError) as exc:
        sock.close()
        out.append(
            Result(
                FAIL,
                "collector tls",
                f"TLS handshake failed: {exc}",
                "the collector's certificate must name this address and be signed by ca.crt; "
                "a proxy in between must not intercept TLS",
            )
        )
        return out
    out.append(Result(OK, "collector tls", f"mutual TLS handshake ({version})"))
    out += _health(address, ca, cert, key, timeout)
    return out


def _health(address: str, ca: Path, cert: Path, key: Path, timeout: float) -> list[Result]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    creds = grpc.ssl_channel_credentials(ca.read_bytes(), key.read_bytes(), cert.read_bytes())
    with grpc.secure_channel(address, creds) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        t0 = time.time()
        try:
            resp, call = stub.Check.with_call(
                health_pb2.HealthCheckRequest(service="vigie.v1.Ingest"), timeout=timeout
            )
        except grpc.RpcError as exc:
            return [
                Result(
                    FAIL,
                    "collector grpc",
                    f"health check failed: {exc.code().name} {exc.details() or ''}".strip(),
                    "UNAUTHENTICATED: this agent is revoked or unknown, enroll again; "
                    "UNAVAILABLE: the collector is down or overloaded",
                )
            ]
        t1 = time.time()
    out = []
    serving = resp.status == health_pb2.HealthCheckResponse.SERVING
    out.append(
        Result(
            OK if serving else FAIL,
            "collector grpc",
            f"ingest {health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)}",
            "the collector is up but not serving ingest: see its journal",
        )
    )
    theirs = dict(call.trailing_metadata() or ()).get("x-vigie-time")
    if theirs is None:
        out.append(
            Result(WARN, "clock", "the collector does not tell its time", "upgrade the collector")
        )
        return out
    skew = float(theirs) - (t0 + t1) / 2
    text = f"skew {skew:+.2f} s against the collector (round trip {t1 - t0:.2f} s)"
    fix = "enable NTP: timedatectl set-ntp true (alert times and certificates depend on it)"
    if abs(skew) > SKEW_FAIL_SECONDS:
        out.append(Result(FAIL, "clock", text, fix))
    elif abs(skew) > SKEW_WARN_SECONDS:
        out.append(Result(WARN, "clock", text, fix))
    else:
        out.append(Result(OK, "clock", text))
    return out


def run(
    config_path: str | None,
    interface: str | None,
    overrides: dict[str, str] | None = None,
    timeout: float = 5.0,
    out: TextIO = sys.stdout,
) -> int:
    results: list[Result] = []
    try:
        cfg = config.load(config_path, settings.SCHEMA)
        results.append(Result(OK, "config", f"{config_path or 'built-in defaults'} is valid"))
    except config.ConfigError as exc:
        results.append(
            Result(
                FAIL,
                "config",
                str(exc),
                "fix the key named, in the file named (the installed one, e.g. "
                "/etc/vigie/agent.toml, lists every key with its default and meaning)",
            )
        )
        cfg = config.defaults(settings.SCHEMA)
    for key, value in (overrides or {}).items():
        if value:
            section, _, name = key.rpartition(".")
            (cfg[section] if section else cfg)[name] = value
    results += check_caps()
    results.append(check_interface(interface))
    results.append(check_bpf(cfg["capture"]["bpf_filter"], interface))
    results.append(check_state_dir(cfg))
    # Root-owned files in the service's directory (a command once run as root) pass the
    # writability check above when doctor runs as root, and stop the service all the same.
    results += ownership.check(cfg["state_dir"], ownership.AGENT_USER)
    c = cfg["collector"]
    ca = settings.path(cfg, c["ca"], "tls/ca.crt")
    cert = settings.path(cfg, c["cert"], "tls/agent.crt")
    key = settings.path(cfg, c["key"], "tls/agent.key")
    creds = check_certificate(ca, cert, key)
    results += creds
    if any(r.status == FAIL and r.check == "certificate" for r in creds):
        results.append(
            Result(WARN, "collector", "not tried: no usable credentials", "fix the certificate")
        )
    else:
        results += check_collector(c["address"], ca, cert, key, timeout)
    for r in results:
        print(r.line(), file=out)
    failed = sum(r.status == FAIL for r in results)
    warned = sum(r.status == WARN for r in results)
    print(
        f"{len(results)} checks: {failed} failed, {warned} warnings"
        if failed or warned
        else f"{len(results)} checks: all OK",
        file=out,
    )
    return 1 if failed else 0
