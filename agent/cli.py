"""vigie-agent: replay a capture or watch an interface, and report what it finds."""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys

from agent import settings, statelock
from agent.anonymise.policy import AnonymisationError
from agent.capture.live import CaptureError as LiveError
from agent.capture.pcapfile import CaptureError
from agent.commands import (
    EX_TEMPFAIL,
    EX_USAGE,
    cmd_doctor,
    cmd_enroll,
    cmd_explain,
    cmd_replay,
)
from agent.hunt import command as hunt_command
from agent.hunt.search import QueryError
from agent.logs import replay as replay_logs
from agent.outbox.store import OutboxError
from agent.output import anonymiser
from agent.service import Service, agent_metrics, cmd_run
from agent.status import cmd_status
from common import config, logs, ownership

# tests/ and bench/ reach these through agent.cli, under the names they had here before
# the commands got modules of their own.
_anonymiser, _Service = anonymiser, Service
__all__ = ["_Service", "_anonymiser", "agent_metrics", "entry", "main", "parser"]

# Flags several subcommands share, declared once each.


def _settings_flags(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--config", help="TOML file (default: built-in defaults)")
    sp.add_argument("--state-dir", help="override state_dir")


def _output_flag(sp: argparse.ArgumentParser, default: str) -> None:
    sp.add_argument(
        "--output",
        choices=("jsonl", "collector"),
        default=default,
        help=f"where alerts go (default {default})",
    )


def _collector_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--collector", metavar="HOST:PORT", help="override collector.address")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vigie-agent", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("replay", help="run the pipeline on a pcap/pcapng, on its own timestamps")
    r.add_argument("pcap")
    _settings_flags(r)
    _output_flag(r, "jsonl")
    _collector_flag(r)
    r.add_argument("--stats", action="store_true", help="print pipeline counters to stderr")
    r.add_argument(
        "--journal",
        action="store_true",
        help="also write the capture's metadata to the journal (state_dir/journal), "
        "for `vigie-agent hunt` and retro-hunts",
    )

    live = sub.add_parser("run", help="capture live on an interface")
    live.add_argument("--interface", "-i", required=True)
    _settings_flags(live)
    _output_flag(live, "collector")
    _collector_flag(live)

    en = sub.add_parser("enroll", help="get this agent's certificate with a one-time token")
    # Not the shared --collector: this one is the enrollment port, and required.
    en.add_argument("--collector", required=True, metavar="HOST:PORT", help="enrollment port")
    en.add_argument(
        "--force",
        action="store_true",
        help="replace the identity an earlier enrollment left in state_dir/tls",
    )
    en.add_argument("--token", required=True, help="from 'vigie-collector token create'")
    pin = en.add_mutually_exclusive_group()
    pin.add_argument("--ca-fingerprint", default="", metavar="SHA256", help="pin the CA")
    pin.add_argument("--ca", default="", metavar="FILE", help="the collector's CA certificate")
    _settings_flags(en)

    doc = sub.add_parser(
        "doctor", help="check capabilities, interface, filter, config, certificate, collector"
    )
    _settings_flags(doc)
    doc.add_argument(
        "--interface",
        "-i",
        default=os.environ.get("VIGIE_INTERFACE"),
        help="capture interface (default: $VIGIE_INTERFACE)",
    )
    _collector_flag(doc)
    doc.add_argument("--timeout", type=float, default=5.0, help="network timeout, seconds")

    ex = sub.add_parser(
        "explain-anonymisation",
        help="show how addresses and names would be reported (for the data protection officer)",
    )
    ex.add_argument("values", nargs="+", metavar="VALUE", help="address or name")
    _settings_flags(ex)
    ex.add_argument("--json", action="store_true", help="machine-readable output")

    st = sub.add_parser(
        "status", help="identity, outbox, last queued alert, from the state directory alone"
    )
    _settings_flags(st)
    st.add_argument("--json", action="store_true", help="one JSON object")

    hunt_command.add_parser(sub, _settings_flags)
    replay_logs.add_parser(sub, _settings_flags, _output_flag)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.cmd == "doctor":
        return cmd_doctor(args)
    # stdout carries alerts with --output jsonl: logs go to stderr then.
    stream = sys.stderr if getattr(args, "output", "jsonl") == "jsonl" else sys.stdout
    logs.setup(stream)
    try:
        cfg = config.load(args.config, settings.SCHEMA)
        if args.state_dir:
            cfg["state_dir"] = args.state_dir
        # Commands that write the identity or the outbox hold the state directory.
        if args.cmd in ("enroll", "run") or getattr(args, "output", "") == "collector":
            # Before the lock: even agent.lock, made by root, would stop the service.
            ownership.check_writer(
                cfg["state_dir"], ownership.AGENT_USER, f"vigie-agent {args.cmd}"
            )
            statelock.hold(cfg["state_dir"], args.cmd)
        if args.cmd == "enroll":
            return cmd_enroll(args, cfg)
        if getattr(args, "collector", None):
            if problem := config.host_port(args.collector):
                raise config.ConfigError(f"--collector {problem}")
            cfg["collector"]["address"] = args.collector
        logs.setup(stream, cfg["log_level"])
        if args.cmd == "explain-anonymisation":
            return cmd_explain(args, cfg)
        if args.cmd == "status":
            return cmd_status(args, cfg)
        if args.cmd == "replay-logs":
            return replay_logs.cmd_replay_logs(args, cfg)
        if args.cmd == "hunt":
            return hunt_command.cmd_hunt(args, cfg)
        if args.cmd in ("replay", "run"):
            # The packet path allocates an event tuple, a packet or a message per flow:
            # at 700 allocations per collection the collector ran thousands of times a
            # second, each pass over the detectors' state (7 % of a replay). Objects made
            # at start-up are frozen out of its scans.
            gc.freeze()
            gc.set_threshold(50_000, 20, 20)
        if args.cmd == "replay":
            return cmd_replay(args, cfg)
        return cmd_run(args, cfg, stream)
    except (
        config.ConfigError,
        CaptureError,
        LiveError,
        OutboxError,
        AnonymisationError,
        FileNotFoundError,
        ownership.WrongUser,
        QueryError,
    ) as exc:
        print(f"vigie-agent: {exc}", file=sys.stderr)
        return EX_USAGE
    except statelock.StateLocked as exc:
        print(f"vigie-agent: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def entry() -> None:
    """The `vigie-agent` command. Once a command that streamed to the collector is done
    (its outbox closed, its output flushed), the process leaves without the interpreter's
    exit handlers: gRPC's can deadlock at exit now and then (grpc/grpc#20026), and an
    agent that never exits is worse than one that skips a cleanup it does not need."""
    rc = main()
    if "grpc" in sys.modules:
        for f in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing to keep
                f.flush()
        os._exit(rc if isinstance(rc, int) else 0)
    sys.exit(rc)


if __name__ == "__main__":
    entry()
