"""Every incident change reaches every sink, in order, each once: an acknowledgement and a
close in the same millisecond are two changes in the JSON lines, syslog and STIX outputs,
and a sink that is down holds back nobody else and later gets everything it missed."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

from syslog_rfc5424_parser import SyslogMessage

from collector.jobs import Jobs
from collector.sinks import build_sinks
from collector.store import Origin, open_store
from collector.store.sql import Store
from common.config import defaults
from vigie.v1 import alert_pb2

T0 = 1_750_000_000.0
CLOSED, ACKNOWLEDGED = 3, 2


def _alert(aid: str, t: float) -> alert_pb2.Alert:
    a = alert_pb2.Alert(
        id=aid, revision=1, detector="net.portscan", severity=3, summary="scan", occurrences=1
    )
    for f in (a.first_seen, a.last_seen, a.observed_at):
        f.FromNanoseconds(int(t * 1e9))
    a.entities.add(role=alert_pb2.ROLE_SOURCE, kind=alert_pb2.KIND_IP, value="203.0.113.50")
    return a


def _raise_incident(store: Store) -> str:
    """One external address seen in three GHTs: opened at the second, updated at the third."""
    for n in range(1, 4):
        origin = Origin(f"agt-{n}", f"75000000{n}", f"GHT-{n}", "11")
        store.ingest(origin, [_alert(f"a{n}", T0 + n)], received_at=T0 + n)
    (inc,) = [i for i in store.list_incidents() if i["rule"] == "multi_site_indicator"]
    return inc["key"]


def _cfg(state: Path) -> dict:
    from collector import settings

    return defaults(settings.SCHEMA) | {"state_dir": str(state)}


class SyslogTcpReceiver:
    """An RFC 6587 octet-counting receiver, started when the test says so."""

    def __init__(self) -> None:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.messages: list[SyslogMessage] = []
        self._srv: socket.socket | None = None

    def start(self) -> None:
        self._srv = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        assert self._srv is not None
        conn, _ = self._srv.accept()
        buf = b""
        while chunk := conn.recv(65536):
            buf += chunk
            while b" " in buf:
                size, _, rest = buf.partition(b" ")
                if len(rest) < int(size):
                    break
                self.messages.append(SyslogMessage.parse(rest[: int(size)].decode()))
                buf = rest[int(size) :]


def _sd(m: SyslogMessage) -> dict[str, str]:
    (params,) = m.sd.values()
    return params


def test_ack_and_close_in_one_millisecond_reach_every_sink_in_order(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'vigie.db'}")
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(5)
    tcp = SyslogTcpReceiver()  # down at first
    cfg = _cfg(tmp_path)
    cfg["sinks"]["jsonl"] |= {"enabled": True}
    cfg["sinks"]["stix"] |= {"enabled": True}
    cfg["sinks"]["syslog"] |= {"enabled": True, "address": f"127.0.0.1:{udp.getsockname()[1]}"}
    sinks = build_sinks(cfg["sinks"], state_dir=str(tmp_path))
    tcp_sink = build_sinks(
        {"syslog": {"enabled": True, "address": f"127.0.0.1:{tcp.port}", "protocol": "tcp"}}
    )[0]
    tcp_sink.name = "syslog-tcp"  # a second syslog destination, with its own cursor
    jobs = Jobs(store, cfg, [*sinks, tcp_sink], clock=lambda: T0 + 100)
    try:
        key = _raise_incident(store)
        store.update_incident(key, ACKNOWLEDGED, "analyst-1", "looking", now=T0 + 10.0001)
        store.update_incident(key, CLOSED, "analyst-1", "blocked", now=T0 + 10.0002)
        # The address comes back at a fourth site: new evidence reopens the closed incident.
        store.ingest(Origin("agt-4", "750000004", "GHT-4", "11"), [_alert("a4", T0 + 20)])
        jobs.run_once()
        jobs.run_once()  # nothing new: nothing sent twice

        lines = [json.loads(x) for x in (tmp_path / "incidents.jsonl").read_text().splitlines()]
        changes = [(x["seq"], x["change"], x["status"]) for x in lines if x["key"] == key]
        assert [c[1:] for c in changes] == [
            ("opened", "open"),
            ("updated", "open"),  # the third GHT joined
            ("acknowledged", "acknowledged"),
            ("closed", "closed"),
            ("reopened", "open"),
        ]
        seqs = [c[0] for c in changes]
        assert seqs == sorted(set(seqs))
        assert [x["status_comment"] for x in lines[-3:-1]] == ["looking", "blocked"]
        assert lines[-1]["status_comment"] == "reopened: new matching alerts"

        got = [SyslogMessage.parse(udp.recv(4096).decode()) for _ in seqs]
        assert [(int(_sd(m)["seq"]), _sd(m)["change"], _sd(m)["status"]) for m in got] == changes

        stix = sorted((tmp_path / "stix").glob("*.json"))
        assert len(stix) == len(seqs)
        states = []
        for f in stix:  # file names sort by seq
            (inc,) = [o for o in json.loads(f.read_text())["objects"] if o["type"] == "incident"]
            states.append(json.dumps(inc))
        assert "acknowledged" in states[-3] and "closed" in states[-2]

        # The TCP receiver was down: the others went on; now it comes up and gets it all.
        assert tcp.messages == []
        tcp.start()
        jobs.run_once()
        assert _wait(lambda: len(tcp.messages) == len(seqs))
        assert [int(_sd(m)["seq"]) for m in tcp.messages] == seqs
        jobs.run_once()
        assert len((tmp_path / "incidents.jsonl").read_text().splitlines()) == len(lines)
    finally:
        for s in [*sinks, tcp_sink]:
            s.close()
        udp.close()
        store.close()


def _wait(cond, timeout: float = 5.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


class FlakySink:
    """Refuses one change for good (say an HTTP 400), fails another once (a timeout)."""

    name = "flaky"

    def __init__(self, refuse_seq: int, fail_once_seq: int) -> None:
        self.refuse_seq, self.fail_once_seq = refuse_seq, fail_once_seq
        self.got: list[int] = []

    def send(self, incident, alerts) -> None:
        from collector.sinks import SinkError

        if incident.seq == self.refuse_seq:
            raise SinkError("HTTP 400: refused", permanent=True, status=400)
        if incident.seq == self.fail_once_seq:
            self.fail_once_seq = -1
            raise SinkError("timed out")
        self.got.append(incident.seq)

    def close(self) -> None:
        pass


def test_a_change_refused_for_good_does_not_block_the_sink(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'vigie.db'}")
    try:
        key = _raise_incident(store)
        store.update_incident(key, ACKNOWLEDGED, "a", "", now=T0 + 10)
        store.update_incident(key, CLOSED, "a", "", now=T0 + 11)
        seqs = [c["seq"] for c in store.list_changes(0)]
        assert len(seqs) == 4
        sink = FlakySink(refuse_seq=seqs[0], fail_once_seq=seqs[2])
        jobs = Jobs(store, _cfg(tmp_path), [sink], clock=lambda: T0 + 100)
        jobs.run_once()  # the refused one passed, the failing one holds the rest back
        assert sink.got == [seqs[1]]
        jobs.run_once()  # retried, in order
        assert sink.got == seqs[1:]
    finally:
        store.close()
