"""net.medical — DICOM and HL7/MLLP used with unexpected parties.

Imaging (DICOM associations) and HL7 v2 over MLLP move patient data between known
systems inside the establishment. Reported, from what the deep decoders hand over
(DICOM A-ASSOCIATE-RQ, HL7 MSH headers; never patient data):
  external     one end inside, the other outside (agent/inside.py, configured ranges too):
               imaging or HL7 crossing the establishment boundary; HL7 over MLLP has no
               encryption, so this is also patient data sent in clear to the outside;
  new peer     a (client, server) pair never seen for that protocol, once the learning
               period (`learning_seconds` from the first message seen) is over;
  new AE title a calling or called DICOM AE title never seen, after learning too.
Peers and AE titles are learnt in memory (bounded, forgotten after `memory_seconds`
unseen). The running agent saves what it learnt, and when learning started, under
state_dir/learned/ (mode 0600, never sent): a restart or an upgrade neither opens a new
learning period, during which a new peer would go unreported, nor reports every known
peer as new. AE titles leave only as AE-title entities, which the anonymiser
pseudonymises.

Technique: T1071 (application layer protocol). The ICS matrix's T0886 (remote services)
is for control systems; in the enterprise matrix, T1021 would claim a remote login,
which a DICOM or HL7 exchange is not, while T1071 names an application protocol used to
move data or commands with an unexpected party, which is what is seen.
"""

from __future__ import annotations

from typing import Any, ClassVar

from agent.anonymise.policy import Entity
from agent.decode.packet import Packet
from agent.detect.base import Detector, ip_text
from agent.detect.hooks import Wants
from agent.detect.window import KeyedWindow, Suppressor
from common.config import Option, at_least, positive
from vigie.v1 import alert_pb2

_TEXT = {
    "external": "crosses the establishment boundary",
    "new_peer": "between hosts never seen talking it before",
    "new_ae_title": "with a DICOM AE title never seen before",
}


class Medical(Detector):
    name = "net.medical"
    technique = "T1071"
    severity = alert_pb2.SEVERITY_MEDIUM
    help = "DICOM and HL7/MLLP crossing the establishment boundary or from unknown peers."
    wants = Wants(app_kinds=frozenset(("dicom_assoc", "hl7")))
    options: ClassVar[dict[str, Option]] = {
        "learning_seconds": Option(
            float,
            86400.0,
            "Learning period from the first message seen: new peers and AE titles are "
            "learnt silently, and reported only after it.",
            at_least(0.0),
        ),
        "report_external": Option(
            bool, True, "Report DICOM/HL7 with one end outside the establishment."
        ),
        "report_new": Option(bool, True, "Report new peers and AE titles after learning."),
        "memory_seconds": Option(
            float, 30 * 86400.0, "A peer or AE title unseen this long is forgotten.", positive
        ),
        "report_interval_seconds": Option(
            float, 600.0, "One report per peer pair and reason this often.", positive
        ),
    }

    def __init__(self, settings: dict[str, Any], report) -> None:
        super().__init__(settings, report)
        self.started: float | None = None
        self.known: KeyedWindow[bool] = KeyedWindow(
            settings["memory_seconds"], lambda now: True, 50_000
        )
        self.once = Suppressor(settings["report_interval_seconds"], 50_000)

    def _new(self, key: tuple, ts: float) -> bool:
        """Learn `key`; True when it was unknown and learning is over."""
        fresh = self.known.peek(key) is None
        self.known.get(key, ts)
        started = ts if self.started is None else self.started
        return fresh and ts - started >= self.settings["learning_seconds"]

    def on_app(self, msg: Any, flow: Any, p: Packet | None) -> None:
        if p is None or flow is None:
            return
        if msg.kind == "dicom_assoc":
            if msg.pdu != "rq":
                return
            proto, client, server, port = "dicom", p.src, p.dst, p.dport
            aes = [a for a in (msg.calling_ae, msg.called_ae) if a]
        elif msg.kind == "hl7":
            proto, client, server, port = "hl7", flow.src, flow.dst, flow.dport
            aes = []
        else:
            return
        if self.allowed(client) or self.allowed(server):
            return
        ts = p.ts
        if self.started is None:
            self.started = ts
        s = self.settings
        reasons = []
        inside = self.inside.is_internal
        if s["report_external"] and inside(client) != inside(server):
            reasons.append("external")
        new_peer = self._new((proto, client, server), ts)
        new_aes = [a for a in aes if self._new(("ae", a), ts)]
        if s["report_new"]:
            if new_peer:
                reasons.append("new_peer")
            if new_aes:
                reasons.append("new_ae_title")
        for why in reasons:
            if self.once.allow((proto, client, server, why), ts):
                self._emit(proto, why, client, server, port, ts, aes)

    def _emit(
        self, proto: str, why: str, client: bytes, server: bytes, port: int, ts: float, aes
    ) -> None:
        entities = [
            Entity(alert_pb2.ROLE_SOURCE, alert_pb2.KIND_IP, ip_text(client)),
            Entity(alert_pb2.ROLE_TARGET, alert_pb2.KIND_IP, ip_text(server)),
            Entity(alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PORT, str(port)),
            Entity(alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PROTOCOL, proto),
            *(Entity(alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_AE_TITLE, a) for a in aes),
        ]
        external = why == "external"
        what = "DICOM association" if proto == "dicom" else "HL7 message over MLLP (cleartext)"
        self.report(
            subject=f"{client.hex()}>{server.hex()}:{proto}:{why}",
            ts=ts,
            entities=entities,
            summary=f"{what} on port {port} {_TEXT[why]}",
            metrics={
                "external": int(external),
                "new_peer": int(why == "new_peer"),
                "new_ae_title": int(why == "new_ae_title"),
                "learning_seconds": self.settings["learning_seconds"],
            },
            severity=alert_pb2.SEVERITY_HIGH if external else None,
        )

    def on_tick(self, now: float) -> None:
        self.known.expire(now)
        self.once.expire(now)

    def learned(self) -> dict[str, Any]:
        """What to keep across a restart (see agent/pipeline.py, save_learned)."""
        return {
            "version": 1,
            "started": self.started,
            "known": [
                ["ae", k[1]] if k[0] == "ae" else [k[0], k[1].hex(), k[2].hex()]
                for k, _ in self.known.seen()
            ],
            "seen": [t for _, t in self.known.seen()],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Take back what `learned()` returned; raises ValueError on anything else."""
        if not isinstance(state, dict) or state.get("version") != 1:
            raise ValueError("not a net.medical learned state of version 1")
        started, known, seen = state["started"], state["known"], state["seen"]
        if started is not None and not isinstance(started, int | float):
            raise ValueError("started is not a time")
        if len(known) != len(seen):
            raise ValueError("known and seen differ in length")
        keys = []
        for k, t in zip(known, seen, strict=True):
            if not isinstance(t, int | float):
                raise ValueError("a last-seen time is not a number")
            if k[0] == "ae" and len(k) == 2 and isinstance(k[1], str):
                keys.append((("ae", k[1]), float(t)))
            elif k[0] in ("dicom", "hl7") and len(k) == 3:
                keys.append(((k[0], bytes.fromhex(k[1]), bytes.fromhex(k[2])), float(t)))
            else:
                raise ValueError(f"unknown learned key {str(k)[:40]!r}")
        self.started = started
        for key, t in keys:
            self.known.get(key, t)
