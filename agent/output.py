"""Where a command's alerts go (--output): JSON lines on stdout, or the durable outbox and
the stream that empties it to the collector. Every alert has passed the anonymiser first."""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from agent import settings
from agent.anonymise.policy import Anonymiser
from agent.outbox.store import Outbox
from common import logs
from common.alertjson import alert_dict
from vigie.v1 import alert_pb2, ingest_pb2

log = logs.get("agent")


def agent_version() -> str:
    # Asked when a heartbeat is built, not at import: importlib.metadata alone costs 40 ms
    # of every command's start-up.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vigie")
    except PackageNotFoundError:  # running from a source tree
        return "0.0.0+src"


def anonymiser(cfg: dict[str, Any]) -> Anonymiser:
    return Anonymiser.from_settings(cfg["anonymisation"], cfg["state_dir"])


def jsonl(alert: alert_pb2.Alert) -> None:
    """--output jsonl: one alert per line, flushed so a reader sees it at once."""
    sys.stdout.write(json.dumps(alert_dict(alert), separators=(",", ":")) + "\n")
    sys.stdout.flush()


class Delivery:
    """--output collector: outbox plus the stream that empties it."""

    def __init__(
        self, cfg: dict[str, Any], stats: Callable[[], tuple[int, int]], anon: Anonymiser
    ) -> None:
        # gRPC is loaded only by the commands that stream (a replay to a file never does).
        import psutil

        from agent.deliver.stream import Credentials, Sender

        c = cfg["collector"]
        o = cfg["outbox"]
        self.outbox = Outbox(
            settings.path(cfg, o["path"], "outbox.db"),
            o["max_alerts"],
            memory_alerts=o["memory_alerts"],
            low_space_mb=o["low_space_mb"],
            low_space_percent=o["low_space_percent"],
        )
        creds = Credentials(
            settings.path(cfg, c["ca"], "tls/ca.crt"),
            settings.path(cfg, c["cert"], "tls/agent.crt"),
            settings.path(cfg, c["key"], "tls/agent.key"),
        )
        creds.load()  # fail now, with the file named, rather than in the sender's loop
        self.started = time.time()
        self.version = agent_version()
        # One Process object for the agent's whole life: cpu_percent measures since the
        # previous call on the same object, so a fresh one every heartbeat always said 0.
        self._me = psutil.Process()
        self._me.cpu_percent(interval=None)
        psutil.cpu_percent(interval=None)
        self.stats = stats
        self.sender = Sender(
            self.outbox,
            c["address"],
            creds,
            self.heartbeat,
            c["batch_size"],
            c["heartbeat_seconds"],
            intel_path=settings.path(cfg, "", "intel.json"),
            on_intel=self.on_intel,
        )
        self.drain_timeout = c["drain_timeout_seconds"]
        self.last_alert: tuple[float, str, int] | None = None  # for vigie-agent status
        # Pseudonymised as every host name that leaves (the same key, the same pseudonym
        # as in alerts): the collector tells this agent from the site's others by it.
        self.host_label = anon.pseudonym(alert_pb2.KIND_HOSTNAME, socket.gethostname())
        # Retro-hunt progress for heartbeats (agent/hunt/retro.py RetroHunter.status).
        self.retro: Any = None

    def on_intel(self, bundle: dict) -> None:
        """A new intel bundle (already stored in state_dir/intel.json): the pipeline's
        IOC matching picks it up from here."""
        self.intel = bundle

    def heartbeat(self) -> ingest_pb2.Heartbeat:
        received, dropped = self.stats()
        me = self._me
        import psutil

        hb = ingest_pb2.Heartbeat(
            agent_version=self.version,
            agent_uptime_seconds=time.time() - self.started,
            packets_captured=received,
            packets_dropped=dropped,
            outbox_depth=self.outbox.depth(),
            outbox_shed=self.outbox.shed(),
            host_label=self.host_label,
        )
        hb.sent_at.GetCurrentTime()
        hb.host.cpu_percent = psutil.cpu_percent(interval=None)
        hb.host.memory_percent = psutil.virtual_memory().percent
        hb.host.disk_percent = psutil.disk_usage("/").percent
        hb.host.uptime_seconds = time.time() - psutil.boot_time()
        hb.host.agent_cpu_percent = me.cpu_percent(interval=None)
        hb.host.agent_rss_bytes = me.memory_info().rss
        if self.retro is not None:
            for version, state, matches in self.retro():
                hb.retro.add(version=version, state=state, matches=matches)
        return hb

    def __call__(self, alert: alert_pb2.Alert) -> None:
        # Never raises for a full state disk: the outbox then holds the alert in memory.
        self.outbox.put(alert)
        self.last_alert = (time.time(), alert.detector, alert.severity)
        # Opaque ids only (no entity, no summary): lets an operator or a test follow an
        # alert from detection to the collector's ack.
        log.debug("alert_queued", id=alert.id, revision=alert.revision, detector=alert.detector)

    def start(self) -> None:
        self.sender.start()

    def finish(self, wait: bool) -> bool:
        drained = self.sender.drain(self.drain_timeout) if wait else self.outbox.depth() == 0
        self.sender.stop()
        self.sender.join(timeout=5)
        depth = self.outbox.depth()
        shed = self.outbox.shed_counts()
        log.info(
            "delivery_stopped",
            acked=self.sender.acked,
            queued=depth,
            shed_disk_full=shed["disk_full"],
            shed_max_alerts=shed["max_alerts"],
        )
        self.outbox.close()
        return drained
