"""vigie-collector: serve, and manage the PKI."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from collector import server, settings
from collector.pki import ca as pki
from common import config, logs


def _load(args: argparse.Namespace) -> dict:
    cfg = config.load(args.config, settings.SCHEMA)
    if getattr(args, "state_dir", None):
        cfg["state_dir"] = args.state_dir
    if getattr(args, "listen", None):
        cfg["listen"] = args.listen
    return cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vigie-collector", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    def common_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", help="TOML file (default: built-in defaults)")
        sp.add_argument("--state-dir", help="override state_dir")

    s = sub.add_parser("serve", help="run the collector")
    common_args(s)
    s.add_argument("--listen", help="override listen (HOST:PORT; port 0 picks one)")

    k = sub.add_parser("pki", help="manage the collector's certificate authority")
    ksub = k.add_subparsers(dest="pki_cmd", required=True)
    ki = ksub.add_parser("init", help="create the CA and the server certificate")
    common_args(ki)
    ka = ksub.add_parser("issue-agent", help="issue development agent credentials (key made here)")
    common_args(ka)
    ka.add_argument("--finess", required=True)
    ka.add_argument("--ght", required=True)
    ka.add_argument("--region", required=True)
    ka.add_argument("--agent-id", default="")
    ka.add_argument("--out", required=True, help="directory for agent.crt, agent.key, ca.crt")
    kn = ksub.add_parser("issue-analyst", help="issue an analyst certificate")
    common_args(kn)
    kn.add_argument("--name", required=True)
    kn.add_argument("--role", required=True, help="national or regional:<code>")
    kn.add_argument("--out", required=True)

    args = p.parse_args(argv)
    logs.setup(sys.stdout)
    try:
        cfg = _load(args)
        logs.setup(sys.stdout, cfg["log_level"])
        if args.cmd == "serve":
            server.serve(cfg)
            return 0
        d = server.pki_dir(cfg)
        if args.pki_cmd == "init":
            pki.init(d, cfg["pki"]["server_names"])
            print(f"CA and server certificate in {d}")
            return 0
        authority = pki.Authority(d)
        if args.pki_cmd == "issue-agent":
            ident = pki.Identity(
                "agent", args.agent_id or pki.new_agent_id(), args.finess, args.ght, args.region
            )
            path = authority.issue(args.out, "agent", identity=ident)
        else:
            if not pki.valid_role(args.role):
                raise pki.PkiError(f"role must be national or regional:<code>, got {args.role!r}")
            ident = pki.Identity("analyst", args.name, role=args.role)
            path = authority.issue(args.out, "analyst", identity=ident)
        print(f"{ident.kind} {ident.name} certificate: {Path(path)}")
        return 0
    except (config.ConfigError, server.StartError, pki.PkiError) as exc:
        print(f"vigie-collector: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
