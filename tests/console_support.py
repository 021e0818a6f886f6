"""The web console's test kit: a collector with its console on, accounts, alerts from two
regions, and a small HTTPS client that keeps cookies."""

from __future__ import annotations

import http.client
import re
import ssl
import subprocess
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from collector.console import totp
from tests.conftest import Collector, free_port, start_collector, tool
from vigie.v1 import alert_pb2, ingest_pb2, ingest_pb2_grpc

PASSWORD = "correct horse battery staple"
A_SITES = [("111000001", "GHT-A1", "11"), ("111000002", "GHT-A2", "11")]
B_SITES = [("844000001", "GHT-B1", "84"), ("844000002", "GHT-B2", "84")]


@dataclass
class ConsoleCollector:
    collector: Collector
    url: str
    port: int
    secrets: dict[str, str] = field(default_factory=dict)

    @property
    def ca(self) -> Path:
        return self.collector.state_dir / "pki" / "ca.crt"

    def add_user(self, name: str, role: str, password: str = PASSWORD, cli: bool = True) -> str:
        if not cli:  # the same code the command runs, without starting a program
            from collector.console.accounts import Accounts
            from collector.store import open_store

            store = open_store(f"sqlite:///{self.collector.db()}")
            try:
                self.secrets[name] = Accounts(store).add_user(name, role, password)
            finally:
                store.close()
            return self.secrets[name]
        r = subprocess.run(
            [
                tool("vigie-collector"),
                "console",
                "user",
                "add",
                name,
                "--role",
                role,
                "--password-stdin",
                "--state-dir",
                str(self.collector.state_dir),
            ],
            input=password + "\n",
            capture_output=True,
            text=True,
            check=True,
        )
        secret = re.search(r"TOTP secret \(shown once\): (\w+)", r.stdout).group(1)
        self.secrets[name] = secret
        return secret

    def code(self, name: str, offset: float = 0) -> str:
        return totp.code(self.secrets[name], time.time() + offset)

    def client(self, cert: tuple[Path, Path] | None = None) -> Client:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if cert is not None:
            ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        return Client(self.port, ctx)


def start(tmp_path: Path, extra: str = "") -> ConsoleCollector:
    port = free_port()
    cfg = tmp_path / "collector.toml"
    cfg.write_text(
        f'[console]\nlisten = "127.0.0.1:{port}"\noverview_cache_seconds = 0\n'
        f"live_poll_seconds = 0.2\n{extra}"
    )
    c = start_collector(tmp_path / "collector", config=cfg)
    return ConsoleCollector(c, f"https://127.0.0.1:{port}", port)


def stop(cc: ConsoleCollector) -> None:
    cc.collector.proc.terminate()
    try:
        cc.collector.proc.wait(10)
    except subprocess.TimeoutExpired:
        cc.collector.proc.kill()


class Client:
    """HTTPS with a cookie jar, one connection per request (as a browser may)."""

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        self.port, self.ctx = port, ctx
        self.cookies: dict[str, str] = {}
        self.last_set_cookies: list[str] = []

    def request(
        self, method: str, path: str, form: dict | None = None, headers: dict | None = None
    ) -> tuple[http.client.HTTPResponse, str]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=30)
        h = dict(headers or {})
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            h["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        text = r.read().decode("utf-8", "replace")
        conn.close()
        self.last_set_cookies = [v for k, v in r.getheaders() if k.lower() == "set-cookie"]
        for v in self.last_set_cookies:
            name, _, rest = v.partition("=")
            value = rest.split(";")[0]
            if "Max-Age=0" in v:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return r, text

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str, form: dict, **kw):
        return self.request("POST", path, form, **kw)

    def csrf(self, page: str) -> str:
        m = re.search(r'name="csrf" value="([^"]+)"', page)
        assert m, page[:500]
        return m.group(1)

    def sign_in(self, name: str, password: str, code: str):
        _, page = self.get("/login")
        return self.post(
            "/login",
            {
                "csrf": self.csrf(page),
                "user": name,
                "password": password,
                "code": code,
                "tz": "Europe/Paris",
                "next": "/",
            },
        )


def _alert(aid: str, indicator: str, detector: str = "net.portscan") -> alert_pb2.Alert:
    a = alert_pb2.Alert(
        id=aid,
        revision=1,
        detector=detector,
        severity=4,
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


def seed_two_regions(cc: ConsoleCollector, tmp_path: Path) -> None:
    """Region 11's own indicator in its two GHTs (an incident of region 11 only), region
    84's likewise, and one indicator in all four (an incident spanning both)."""
    c = cc.collector
    for i, (finess, ght, region) in enumerate(A_SITES + B_SITES):
        creds = c.issue_agent(tmp_path / f"agent{i}", finess=finess, ght=ght, region=region)
        own = "198.51.100.11" if region == "11" else "198.51.100.84"
        batch = ingest_pb2.AlertBatch(
            seq=1, alerts=[_alert(f"own{i}", own), _alert(f"both{i}", "203.0.113.66")]
        )
        with grpc.secure_channel(
            c.address,
            grpc.ssl_channel_credentials(
                (creds / "ca.crt").read_bytes(),
                (creds / "agent.key").read_bytes(),
                (creds / "agent.crt").read_bytes(),
            ),
        ) as ch:
            replies = list(
                ingest_pb2_grpc.IngestStub(ch).Stream(
                    iter(
                        [
                            ingest_pb2.AgentMessage(batch=batch),
                            ingest_pb2.AgentMessage(
                                heartbeat=ingest_pb2.Heartbeat(agent_version="t")
                            ),
                        ]
                    ),
                    timeout=10,
                )
            )
        assert replies[-1].ack.stored == 2


def incident_keys(page: str) -> list[str]:
    return re.findall(r'<tr data-key="([^"]+)"', page)
