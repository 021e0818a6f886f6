"""Retro-hunts: the look-backs the collector asks for, run against the journal in the
background.

A bundle published with `vigie intel publish FILE --retro 14d` carries, beside the
current list, one request per such publication (state_dir/intel.json "retro": version,
since, the publication's own indicators). The hunter runs each request it has not
finished, oldest first, segment by segment, saving its progress (journal/retro.json)
after each: an agent killed mid-search resumes where it was, one back after a week
offline finds the requests it missed in the first bundle it receives. Matches are
aggregated per (indicator, internal host, what matched): first and last time the traffic
happened, how many records. When the search is over they are handed to the pipeline
(`submit`), which sends them as net.ioc alerts flagged retro through the anonymiser and
the outbox; only once the pipeline took them is the request marked done, so it completes
once (a re-run after a crash in between makes the same alert ids, which the collector
stores once).

It runs in its own thread at the lowest CPU priority (setpriority on the thread) and
sleeps between segments so that it takes at most `duty` of one core's time and of the
GIL: live capture goes first.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.anonymise.policy import Entity, Finding
from agent.hunt.journal import segments
from agent.hunt.search import Hit, Query, QueryError, search_open, search_segment
from common import logs
from common.files import write_atomic
from vigie.v1 import alert_pb2

log = logs.get("agent.hunt.retro")

_KIND = {
    "ip": alert_pb2.KIND_IP,
    "dns": alert_pb2.KIND_DOMAIN,
    "answer": alert_pb2.KIND_IP,
    "cname": alert_pb2.KIND_DOMAIN,
    "http": alert_pb2.KIND_DOMAIN,
    "sni": alert_pb2.KIND_TLS_SNI,
    "ja3": alert_pb2.KIND_JA3,
    "ja4": alert_pb2.KIND_JA4,
}
_WHAT = {
    "ip": "traffic with an address",
    "dns": "DNS query for a domain",
    "answer": "DNS answer resolving a name to an address",
    "cname": "DNS answer aliasing a name to a domain (CNAME)",
    "http": "HTTP request to a domain",
    "sni": "TLS connection to a server name",
    "ja3": "TLS client fingerprint (JA3)",
    "ja4": "TLS client fingerprint (JA4)",
}


def requests(intel: Any) -> list[dict]:
    """The retro requests of an intel.json document, well-formed ones only, oldest first."""
    out = []
    for r in intel.get("retro", []) if isinstance(intel, dict) else []:
        try:
            out.append(
                {
                    "version": int(r["version"]),
                    "since": float(r.get("since", 0.0)),
                    "until": float(r.get("until", 0.0)) or float("inf"),
                    "ips": list(r.get("ips", [])),
                    "domains": list(r.get("domains", [])),
                    "ja3": list(r.get("ja3", [])),
                    "ja4": list(r.get("ja4", [])),
                }
            )
        except (KeyError, TypeError, ValueError):
            continue
    return sorted(out, key=lambda r: r["version"])


def client_side(hit: Hit) -> tuple[str, str, int]:
    """(client, server, server port) of the record: for a flow whose responder is not the
    listed address, the responder is the internal side (inbound from the indicator). A DNS
    record's client is the one that asked, whatever its answer ("answer", "cname")."""
    rec = hit.record
    if rec[0] == "c":
        src, sport, dst, dport = rec[3], rec[4], rec[5], rec[6]
    else:
        src, sport, dst, dport = rec[2], rec[3], rec[4], rec[5]
    if hit.what == "ip" and (src == hit.value or _inside(src, hit.value)):
        return dst, src, sport
    return src, dst, dport


def _inside(addr: str, net: str) -> bool:
    if "/" not in net:
        return False
    import ipaddress

    try:
        return ipaddress.ip_address(addr) in ipaddress.ip_network(net)
    except ValueError:
        return False


class RetroHunter:
    def __init__(
        self,
        directory: Path,
        intel: Callable[[], Any],
        submit: Callable[[list[Finding], Callable[[], None]], None],
        duty: float = 0.25,
        poll_seconds: float = 5.0,
    ) -> None:
        """`intel()` returns the intel.json document; `submit(findings, done)` hands the
        findings to the pipeline, which calls `done()` once they are in the outbox."""
        self.dir = Path(directory)
        self.state_path = self.dir / "retro.json"
        self.intel = intel
        self.submit = submit
        self.duty = min(1.0, max(0.01, duty))
        self.poll = poll_seconds
        self.state = self._load()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.segments_searched = 0  # this run, for tests and the log

    # state -------------------------------------------------------------------------------
    def _load(self) -> dict:
        try:
            doc = json.loads(self.state_path.read_text())
            if isinstance(doc, dict) and isinstance(doc.get("jobs"), dict):
                return doc
        except (OSError, ValueError):
            pass
        return {"jobs": {}}

    def _save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.state_path, json.dumps(self.state).encode(), 0o600)

    def status(self) -> list[tuple[int, str, int]]:
        """(version, "searching" or "done", matches) per request known, for heartbeats."""
        out = []
        for v, job in sorted(self.state["jobs"].items(), key=lambda kv: int(kv[0])):
            state = "done" if job["state"] == "done" else "searching"
            out.append((int(v), state, len(job.get("hits", {}))))
        return out

    # running -----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vigie-retro", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """A new bundle arrived (safe from any thread)."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        while not self._stop.is_set():
            try:
                self.run_pending()
            except Exception as exc:  # a bad journal file must not end the thread
                log.error("retro_failed", error=str(exc)[:300])
            self._wake.wait(self.poll)
            self._wake.clear()

    def run_pending(self) -> int:
        """Run every request not done yet; returns how many completed."""
        try:
            doc = self.intel()
        except (OSError, ValueError):
            return 0
        finished = 0
        for req in requests(doc):
            if self._stop.is_set():
                break
            job = self.state["jobs"].get(str(req["version"]))
            if job is not None and job["state"] == "done":
                continue
            if self.run(req):
                finished += 1
        return finished

    def run(self, req: dict) -> bool:
        """One request, from its saved progress; True once done."""
        v = str(req["version"])
        try:
            q = Query.build(req["ips"], req["domains"], req["ja3"], req["ja4"],
                            req["since"], req["until"])  # fmt: skip
        except QueryError as exc:
            log.warning("retro_bad_request", version=v, error=str(exc))
            self.state["jobs"][v] = {"state": "done", "hits": {}, "searched": [], "error": 1}
            self._save()
            return True
        job = self.state["jobs"].setdefault(
            v, {"state": "searching", "hits": {}, "searched": [], "started": time.time()}
        )
        if job["state"] == "submitted":
            job["state"] = "searching"  # taken by a pipeline that stopped: hand over again
        self._save()
        log.info("retro_started", version=v, resumed=len(job["searched"]))
        keys = q.keys()
        # Listed again until nothing is new: the open segment may close meanwhile.
        while pending := [p for p in segments(self.dir) if p.name not in set(job["searched"])]:
            if self._search(job, pending, q, keys):
                return False
        for hit in search_open(self.dir, q):
            self._count(job, hit)
        return self._hand_over(v, job, req)

    def _search(self, job: dict, paths: list[Path], q: Query, keys: list[int]) -> bool:
        """Search `paths`, saving progress after each; True when told to stop."""
        for path in paths:
            if self._stop.is_set():
                return True
            t0 = time.process_time()
            try:
                for hit in search_segment(path, q, keys):
                    self._count(job, hit)
            except FileNotFoundError:
                pass
            except ValueError as exc:
                log.warning("retro_segment_unreadable", segment=path.name, error=str(exc)[:200])
            job["searched"].append(path.name)
            self._save()
            self.segments_searched += 1
            self._yield(time.process_time() - t0)
        return False

    def _yield(self, worked: float) -> None:
        if self.duty < 1.0 and worked > 0:
            self._stop.wait(worked * (1 - self.duty) / self.duty)

    def _count(self, job: dict, hit: Hit) -> None:
        client, server, port = client_side(hit)
        k = f"{hit.what}|{hit.value}|{client}"
        cur = job["hits"].get(k)
        if cur is None:
            job["hits"][k] = [hit.first, hit.last, 1, server, port]
        else:
            cur[0], cur[1], cur[2] = min(cur[0], hit.first), max(cur[1], hit.last), cur[2] + 1

    def findings(self, version: str, job: dict, req: dict) -> list[Finding]:
        out = []
        for k, (first, last, count, server, port) in sorted(job["hits"].items()):
            what, value, client = k.split("|", 2)
            out.append(
                Finding(
                    id=f"retro|{version}|{k}",
                    revision=1,
                    detector="net.ioc",
                    severity=alert_pb2.SEVERITY_HIGH,
                    technique="T1071",
                    summary=f"retro-hunt: {_WHAT[what]} on the indicator list, seen before "
                    f"it was published",
                    first_seen=first,
                    last_seen=last,
                    occurrences=count,
                    entities=[
                        Entity(alert_pb2.ROLE_SOURCE, alert_pb2.KIND_IP, client),
                        Entity(alert_pb2.ROLE_INDICATOR, _KIND[what], value),
                        Entity(alert_pb2.ROLE_TARGET, alert_pb2.KIND_IP, server),
                        Entity(alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PORT, str(port)),
                    ],
                    metrics={"retro": 1, "intel_version": float(version), "records": count},
                )
            )
        return out

    def _hand_over(self, v: str, job: dict, req: dict) -> bool:
        taken = threading.Event()
        job["state"] = "submitted"
        self._save()
        self.submit(self.findings(v, job, req), taken.set)
        while not taken.wait(0.2):
            if self._stop.is_set():
                return False
        job["state"] = "done"
        job["finished"] = time.time()
        self._save()
        log.info("retro_done", version=v, matches=len(job["hits"]))
        return True
