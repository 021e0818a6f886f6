"""`vigie-agent status`: what the state directory says about this agent, without asking it.

    vigie-agent status [--config FILE] [--state-dir DIR] [--json]

Reads only the state directory (no metrics port, no network, no write), so it works
whether the service runs or not and never disturbs it:

- identity: agent id, FINESS, GHT, region and expiry from state_dir/tls/agent.crt;
- outbox: alerts waiting, the oldest one's age, alerts shed (state_dir/outbox.db, opened
  read-only);
- the last alert still queued: time, detector, severity (never an entity: nothing that
  could name a person or a host leaves this command either);
- whether a process holds the state directory (state_dir/agent.lock) and its pid.

- the connection and the last alert: what only the running service knows, it writes to
  state_dir/status.json every few seconds (agent/service.py); shown when that file is
  fresh and written by the process that holds the state directory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qs, unquote, urlparse

from google.protobuf.message import DecodeError

from agent import settings, statelock
from common.alertjson import severity_name
from vigie.v1 import alert_pb2

CONNECTION_HINT = (
    "unknown: no running `vigie-agent run` has written state_dir/status.json lately "
    "(`systemctl status vigie-agent` shows the service's own Status: line)"
)
# Written by the running service (agent/service.py) every few seconds.
STATUS_FILE = "status.json"
STATUS_FRESH_SECONDS = 30.0  # the service rewrites it every 5 s


def service_status(state_dir: Path, lock: dict[str, Any], now: float) -> dict[str, Any]:
    """The running service's own report (status.json), when fresh and from the holder."""
    try:
        body = json.loads((state_dir / STATUS_FILE).read_text(encoding="utf-8"))
        pid, updated = int(body["pid"]), float(body["updated_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return {"known": False, "note": CONNECTION_HINT}
    if body.get("stopped") or not lock.get("held") or f"pid {pid}," not in lock.get("by", ""):
        return {"known": False, "note": CONNECTION_HINT}
    if now - updated > STATUS_FRESH_SECONDS:
        return {
            "known": False,
            "note": f"the service (pid {pid}) last reported {_age(now - updated)} ago: hung?",
        }
    out: dict[str, Any] = {"known": True, "reported_at": updated, "pid": pid}
    for key in ("collector", "last_alert", "packets", "alerts"):
        if key in body:
            out[key] = body[key]
    return out


holder = statelock.holder  # what status shows of the lock, read as statelock writes it


def identity(cert_path: Path, now: dt.datetime | None = None) -> dict[str, Any]:
    """Who the certificate says this agent is, and until when; {"enrolled": False} without
    one."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except FileNotFoundError:
        return {"enrolled": False, "certificate": str(cert_path)}
    except (OSError, ValueError) as exc:
        return {"enrolled": False, "certificate": str(cert_path), "error": str(exc)}
    now = now or dt.datetime.now(dt.UTC)
    not_after = cert.not_valid_after_utc
    out: dict[str, Any] = {
        "enrolled": True,
        "certificate": str(cert_path),
        "not_after": not_after.isoformat(),
        "days_left": round((not_after - now).total_seconds() / 86400, 1),
    }
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    # The same vigie:agent/<id>?finess=..&ght=..&region=.. URI the collector reads; parsed
    # here because the agent does not import the collector's packages.
    for uri in uris:
        u = urlparse(uri)
        if u.scheme == "vigie" and u.path.startswith("agent/"):
            q = {k: v[0] for k, v in parse_qs(u.query).items()}
            out["agent_id"] = unquote(u.path.removeprefix("agent/"))
            out.update({k: q.get(k, "") for k in ("finess", "ght", "region")})
            break
    return out


def _read_only(path: Path) -> sqlite3.Connection:
    """Open the outbox without writing anything into the state directory.

    mode=ro never writes the database nor checkpoints the running agent's WAL, but on a WAL
    database it still creates the -wal and -shm files when they are missing: run as root,
    that would leave root-owned files the agent could not open. So: mode=ro when they
    exist (an agent has the outbox open, or left it so), and immutable=1 when they do not
    (no agent writes then, so there is no change to miss; SQLite then takes no lock and
    makes no file). The busy timeout rides over the agent's short write transactions."""
    wal_files = all(Path(f"{path}{s}").exists() for s in ("-wal", "-shm"))
    mode = "mode=ro" if wal_files else "mode=ro&immutable=1"
    # as_uri() escapes what a path may hold and a URI may not (?, #, %).
    db = sqlite3.connect(f"{path.absolute().as_uri()}?{mode}", uri=True, timeout=5.0)
    db.execute("PRAGMA busy_timeout=5000")
    return db


def outbox(path: Path, now: float | None = None) -> dict[str, Any]:
    """Depth, oldest queued age, shed counts and the newest queued alert of the outbox."""
    if not path.exists():
        return {"path": str(path), "exists": False, "depth": 0}
    now = time.time() if now is None else now
    try:
        db = _read_only(path)
    except sqlite3.Error as exc:
        return {"path": str(path), "exists": True, "error": str(exc)}
    try:
        depth, oldest = db.execute("SELECT COUNT(*), MIN(enqueued) FROM outbox").fetchone()
        meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
        newest = db.execute("SELECT payload FROM outbox ORDER BY n DESC LIMIT 1").fetchone()
    except sqlite3.Error as exc:
        return {"path": str(path), "exists": True, "error": str(exc)}
    finally:
        db.close()
    shed, full = meta.get("shed", 0), meta.get("shed_disk_full", 0)
    out: dict[str, Any] = {
        "path": str(path),
        "exists": True,
        "depth": depth,
        "oldest_age_seconds": round(now - oldest, 1) if oldest is not None else None,
        "shed": {"max_alerts": shed - full, "disk_full": full},
        "last_queued": None,
    }
    if newest is not None:
        a = alert_pb2.Alert()
        try:
            a.ParseFromString(newest[0])
        except DecodeError:  # one bad row should not hide the rest of the status
            return out
        # Time, detector and severity only: entities and summary stay out of this output.
        out["last_queued"] = {
            "observed_at": a.observed_at.ToDatetime(dt.UTC).isoformat(),
            "detector": a.detector,
            "severity": severity_name(a.severity),
        }
    return out


def collect(cfg: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    state = Path(cfg["state_dir"])
    now = time.time() if now is None else now
    return {
        "state_dir": str(state),
        "state_dir_exists": state.is_dir(),
        "identity": identity(
            settings.path(cfg, cfg["collector"]["cert"], "tls/agent.crt"),
            dt.datetime.fromtimestamp(now, dt.UTC),
        ),
        "lock": (lock := statelock.holder(state)),
        "outbox": outbox(settings.path(cfg, cfg["outbox"]["path"], "outbox.db"), now),
        "connection": service_status(state, lock, now),
    }


def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def render(s: dict[str, Any], out: TextIO) -> None:
    """The human text: one line per subject, in the order an operator checks them."""
    print(
        f"state dir:   {s['state_dir']}" + ("" if s["state_dir_exists"] else " (missing)"), file=out
    )
    ident = s["identity"]
    if ident.get("enrolled"):
        who = ident.get("agent_id", "?")
        site = f"FINESS {ident.get('finess', '?')}, GHT {ident.get('ght', '?')}"
        site += f", region {ident.get('region', '?')}"
        until = ident["not_after"][:10]
        print(f"identity:    {who} ({site})", file=out)
        print(f"certificate: valid until {until} ({ident['days_left']:.0f} days left)", file=out)
    else:
        why = f": {ident['error']}" if "error" in ident else ""
        print(f"identity:    not enrolled (no {ident['certificate']}{why})", file=out)
    lock = s["lock"]
    if lock.get("held"):
        print(f"agent:       running ({lock.get('by') or 'holder unknown'})", file=out)
    elif lock.get("held") is None:
        print(f"agent:       unknown ({lock.get('error')})", file=out)
    else:
        print("agent:       not running on this state dir", file=out)
    box = s["outbox"]
    if "error" in box:
        print(f"outbox:      unreadable: {box['error']}", file=out)
    elif not box["exists"]:
        print("outbox:      empty (no outbox yet)", file=out)
    else:
        line = f"outbox:      {box['depth']} alert(s) waiting"
        if box["oldest_age_seconds"] is not None:
            line += f", oldest queued {_age(box['oldest_age_seconds'])} ago"
        shed = box["shed"]
        line += f"; shed: {shed['max_alerts']} (outbox full), {shed['disk_full']} (disk full)"
        print(line, file=out)
        last = box["last_queued"]
        if last:
            print(
                f"last queued: {last['observed_at'][:19]}Z {last['detector']} {last['severity']}",
                file=out,
            )
        else:
            print("last queued: none waiting (acknowledged alerts leave the outbox)", file=out)
    conn = s["connection"]
    if not conn["known"]:
        print(f"connection:  {conn['note']}", file=out)
        return
    col = conn.get("collector")
    if col is None:
        print("connection:  none (alerts go to standard output)", file=out)
    else:
        acked = f", last acknowledgement {_when(col['last_ack_at'])}" if col["last_ack_at"] else ""
        state = "connected" if col["connected"] else "offline, retrying"
        print(f"connection:  {state} to {col['address']} ({col['acked']} alerts acked{acked})",
              file=out)  # fmt: skip
    last = conn.get("last_alert")
    if last:
        print(
            f"last alert:  {_when(last['at'])} {last['detector']} "
            f"({severity_name(last['severity'])})",
            file=out,
        )


def cmd_status(args: argparse.Namespace, cfg: dict[str, Any], out: TextIO | None = None) -> int:
    """Print the status; 1 when the state directory does not exist (wrong --state-dir or
    --config, most likely), 0 otherwise."""
    out = out or sys.stdout  # looked up at call time: tests and callers may swap it
    s = collect(cfg)
    if args.json:
        print(json.dumps(s, sort_keys=True), file=out)
    else:
        render(s, out)
    return 0 if s["state_dir_exists"] else 1
