"""vigie-collector: serve, and manage the PKI."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import time
from pathlib import Path

from collector import server, settings
from collector.pki import ca as pki
from collector.pki import intel
from collector.pki.registry import RevocationCache, format_token
from common import config, logs, ownership
from common import identity as rules

# Every value that names a site or a person is checked by the rules shared with the CA
# and the collector's reading of certificates: refused here, exit 2, nothing written.
FINESS = rules.argument(rules.check_finess)
GHT = rules.argument(rules.check_ght)
REGION = rules.argument(rules.check_region)
AGENT_ID = rules.argument(rules.check_agent_id)
ANALYST_NAME = rules.argument(rules.check_analyst_name)
ROLE = rules.argument(rules.check_role)
TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# A running collector sees a revocation within its cache's recheck period and cuts the
# agent's stream at its next message; `agent retire` waits that long (and a group commit
# in flight) before it removes the agent's row, so a last heartbeat cannot write it back.
RETIRE_WAIT = 3 * RevocationCache.RECHECK


def parse_ttl(text: str) -> float:
    """'24h', '30m', '7d', '90s' or a number of seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise config.ConfigError(f"--ttl {text!r}: use a duration such as 30m, 24h or 7d")
    seconds = float(m.group(1)) * TTL_UNITS[m.group(2) or "s"]
    if seconds > 30 * 86400:
        raise config.ConfigError("--ttl: an enrollment token lives at most 30 days")
    return seconds


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
    s.add_argument("--enroll-listen", help="override enroll.listen (HOST:PORT, 'auto' or '')")
    s.add_argument("--console-listen", help="override console.listen (HOST:PORT or '')")

    k = sub.add_parser("pki", help="manage the collector's certificate authority")
    ksub = k.add_subparsers(dest="pki_cmd", required=True)
    ki = ksub.add_parser("init", help="create the CA and the server certificate")
    common_args(ki)
    ka = ksub.add_parser("issue-agent", help="issue development agent credentials (key made here)")
    common_args(ka)
    ka.add_argument("--finess", required=True, type=FINESS, help="9-character FINESS number")
    ka.add_argument("--ght", required=True, type=GHT)
    ka.add_argument("--region", required=True, type=REGION)
    ka.add_argument("--agent-id", type=AGENT_ID, help="default: a new random id")
    ka.add_argument("--out", required=True, help="directory for agent.crt, agent.key, ca.crt")
    kn = ksub.add_parser("issue-analyst", help="issue an analyst certificate")
    common_args(kn)
    kn.add_argument("--name", required=True, type=ANALYST_NAME)
    kn.add_argument("--role", required=True, type=ROLE, help="national or regional:<code>")
    kn.add_argument("--out", required=True)
    kr = ksub.add_parser(
        "rollover", help="make a new issuing CA; the old one stays trusted until it expires"
    )
    common_args(kr)
    ks = ksub.add_parser(
        "reissue-server",
        help="the last step of a rollover: a server certificate from the new CA, once every "
        "agent has renewed since (and so trusts it)",
    )
    common_args(ks)
    ks.add_argument(
        "--force",
        action="store_true",
        help="reissue even though some agents have not renewed: they will be unable to connect "
        "until re-enrolled",
    )

    t = sub.add_parser("token", help="enrollment tokens")
    tsub = t.add_subparsers(dest="token_cmd", required=True)
    tc = tsub.add_parser("create", help="issue a one-time, expiring enrollment token")
    common_args(tc)
    tc.add_argument("--region", required=True, type=REGION)
    tc.add_argument("--ght", required=True, type=GHT)
    tc.add_argument("--finess", required=True, type=FINESS, help="9-character FINESS number")
    tc.add_argument("--ttl", default="24h", help="lifetime: 30m, 24h, 7d (default 24h)")
    tl = tsub.add_parser("list", help="every token: site, dates, used by which agent (no secret)")
    common_args(tl)
    tv = tsub.add_parser("revoke", help="refuse an unused token from now on")
    common_args(tv)
    tv.add_argument("token_id", help="the id shown by 'token list' (2nd part of the token)")

    ag = sub.add_parser("agent", help="manage enrolled agents")
    agsub = ag.add_subparsers(dest="agent_cmd", required=True)
    ar = agsub.add_parser("revoke", help="refuse an agent from now on (every call is checked)")
    common_args(ar)
    ar.add_argument("agent_id")
    ar.add_argument("--reason", default="")
    al = agsub.add_parser(
        "list", help="every agent: site, certificate dates, revoked or retired, last seen"
    )
    common_args(al)
    at = agsub.add_parser(
        "retire",
        help="a decommissioned or re-enrolled agent: revoke it and take it out of the fleet "
        "view (no longer shown silent, nor counted by the dark-site rule)",
    )
    common_args(at)
    at.add_argument("agent_id", type=AGENT_ID)
    at.add_argument("--reason", default="")
    an = agsub.add_parser(
        "rename",
        help="give an agent a name shown by 'agent list' and 'vigie agents' ('' forgets it)",
    )
    common_args(an)
    an.add_argument("agent_id", type=AGENT_ID)
    an.add_argument("name", help="e.g. 'PACS, building B' (at most 64 characters)")

    dr = sub.add_parser(
        "doctor", help="check the store, PKI, dead letters, agents and sinks; exit 1 on a failure"
    )
    common_args(dr)

    dl = sub.add_parser(
        "dead-letter", help="alerts the store refused, or a correlation rule failed on"
    )
    dlsub = dl.add_subparsers(dest="dead_cmd", required=True)
    dll = dlsub.add_parser("list", help="the held alerts, newest first, with their reason")
    common_args(dll)
    dll.add_argument("--limit", type=int, default=50)
    dlr = dlsub.add_parser(
        "retry", help="store or correlate every held alert again (after the cause is fixed)"
    )
    common_args(dlr)

    it = sub.add_parser("intel", help="the intel bundle distributed to agents")
    isub = it.add_subparsers(dest="intel_cmd", required=True)
    il = isub.add_parser("load", help="validate a JSON bundle and publish it as a new version")
    common_args(il)
    il.add_argument("file")

    from collector.console import cli as console_cli

    console_cli.add_parser(sub, common_args, ANALYST_NAME, ROLE)

    args = p.parse_args(argv)
    logs.setup(sys.stdout)
    try:
        cfg = _load(args)
        logs.setup(sys.stdout, cfg["log_level"])
        if args.cmd != "doctor":
            _check_writer(args, cfg)
        if args.cmd == "serve":
            if args.enroll_listen is not None:
                cfg["enroll"]["listen"] = args.enroll_listen
            if args.console_listen is not None:
                cfg["console"]["listen"] = args.console_listen
            server.serve(cfg)
            return 0
        if args.cmd == "doctor":
            from collector import doctor

            return doctor.run(cfg, sys.stdout)
        if args.cmd == "dead-letter":
            return _dead_letters(args, cfg)
        if args.cmd == "console":
            return console_cli.run(args, server.open_store(cfg))
        d = server.pki_dir(cfg)
        if args.cmd == "token":
            if args.token_cmd == "list":
                return _token_list(cfg)
            if args.token_cmd == "revoke":
                return _token_revoke(args, cfg)
            return _token_create(args, cfg, d)
        if args.cmd == "agent" and args.agent_cmd == "list":
            return _agent_list(cfg)
        if args.cmd == "agent" and args.agent_cmd == "retire":
            return _agent_retire(args, cfg)
        if args.cmd == "agent" and args.agent_cmd == "rename":
            return _agent_rename(args, cfg)
        if args.cmd == "agent":
            reg = server.open_registry(cfg)
            reg.revoke(args.agent_id, args.reason)
            reg.close()
            print(f"agent {args.agent_id} revoked: its calls are refused from now on")
            return 0
        if args.cmd == "intel":
            bundle = intel.load_file(args.file)
            reg = server.open_registry(cfg)
            version = reg.load_intel(bundle)
            reg.close()
            counts = ", ".join(f"{len(bundle[k])} {k}" for k in intel.KEYS)
            print(f"intel version {version} loaded: {counts}")
            return 0
        names = pki.configured_names(cfg["pki"]["server_names"], cfg["listen"])
        if args.pki_cmd == "init":
            pki.init(d, names)
            print(f"CA and server certificate in {d}")
            print(f"CA fingerprint (SHA-256): {pki.server_ca_fingerprint(d)}")
            # init never replaces a server certificate: say so when the names moved on.
            missing = pki.missing_server_names(d, names)
            if missing:
                print(
                    f"vigie-collector: the server certificate does not cover {', '.join(missing)}"
                    ": run 'vigie-collector pki reissue-server'",
                    file=sys.stderr,
                )
            return 0
        if args.pki_cmd == "rollover":
            new = pki.rollover(d)
            print(
                f"new issuing CA {pki.fingerprint(new.cert)}; trusted: "
                + ", ".join(pki.fingerprint(c)[:16] for c in pki.trusted_cas(d))
            )
            print("restart the collector so that it trusts both; once every agent has renewed")
            print("(within the certificate lifetime), finish with 'pki reissue-server'")
            return 0
        if args.pki_cmd == "reissue-server":
            since = pki.last_rollover(d)
            reg = server.open_registry(cfg)
            try:
                lagging = reg.not_renewed_since(since) if since is not None else []
            finally:
                reg.close()
            if lagging and not args.force:
                shown = ", ".join(lagging[:10]) + (" ..." if len(lagging) > 10 else "")
                print(
                    f"vigie-collector: {len(lagging)} agent(s) have not renewed since the "
                    f"rollover and trust only the old CA: {shown}. Wait for their renewal, "
                    "or pass --force (they would have to enroll again).",
                    file=sys.stderr,
                )
                return 2
            before = pki.server_certificate_names(d)
            cert = pki.reissue_server(d, names)
            print(f"server certificate reissued by {cert.issuer.rfc4514_string()}")
            print(f"names: {', '.join(pki.certificate_names(cert))}")
            dropped = pki.missing_server_names(d, before)
            if dropped:
                # Agents configured with these would now fail hostname verification.
                print(
                    f"no longer covered (not in [pki] server_names nor listen): "
                    f"{', '.join(dropped)}",
                    file=sys.stderr,
                )
            print("restart the collector to serve it")
            return 0
        authority = pki.Authority(d)
        if args.pki_cmd == "issue-agent":
            ident = pki.Identity(
                "agent", args.agent_id or pki.new_agent_id(), args.finess, args.ght, args.region
            )
            path = authority.issue(args.out, "agent", identity=ident)
        else:
            ident = pki.Identity("analyst", args.name, role=args.role)
            path = authority.issue(args.out, "analyst", identity=ident)
        print(f"{ident.kind} {ident.name} certificate: {Path(path)}")
        return 0
    except (
        config.ConfigError,
        server.StartError,
        pki.PkiError,
        intel.IntelError,
        ownership.WrongUser,
    ) as exc:
        print(f"vigie-collector: {exc}", file=sys.stderr)
        return 2


def _check_writer(args: argparse.Namespace, cfg: dict) -> None:
    """Every subcommand but doctor opens the registry, the store or the PKI, and SQLite
    creates a database (and its -wal) on opening it: as root, in the service's directory,
    that leaves files `serve` then cannot write. `pki issue-*` writes to --out too, which
    is the operator's to choose and not checked."""
    words = " ".join(
        [args.cmd] + [v for k, v in sorted(vars(args).items()) if k.endswith("_cmd") and v]
    )
    command = f"vigie-collector {words}"
    ownership.check_writer(cfg["state_dir"], ownership.COLLECTOR_USER, command)
    if cfg["pki"]["dir"]:  # a PKI kept elsewhere (replicas sharing /etc/vigie/pki)
        ownership.check_writer(server.pki_dir(cfg), ownership.COLLECTOR_USER, command)


def _dead_letters(args: argparse.Namespace, cfg: dict) -> int:
    store = server.open_store(cfg)
    try:
        if args.dead_cmd == "list":
            rows = store.dead_letters(args.limit)
            for r in rows:
                when = dt.datetime.fromtimestamp(r["last_try"], dt.UTC).strftime("%Y-%m-%d %H:%M")
                what = r["kind"] + (f"/{r['rule']}" if r["rule"] else "")
                print(
                    f"{when}Z  {what:<24} agent {r['agent_id']} ({r['finess']}, {r['ght']}) "
                    f"alert {r['alert_id']}  tries {r['attempts']}\n    {r['reason']}"
                )
            total = sum(store.dead_letter_counts().values())
            print(f"{total} alert(s) held" + (f", {len(rows)} shown" if total > len(rows) else ""))
            return 0
        done, failed = store.retry_dead_letters()
        print(f"{done} stored or correlated again, {failed} still held")
        return 0 if not failed else 1
    finally:
        store.close()


def _token_create(args: argparse.Namespace, cfg: dict, d: Path) -> int:
    # --finess, --ght and --region were checked by argparse (the shared rules).
    ttl = parse_ttl(args.ttl)
    if not pki.Authority.exists(d) or not (d / "server.crt").exists():
        pki.init(d, pki.configured_names(cfg["pki"]["server_names"], cfg["listen"]))
    fp = pki.server_ca_fingerprint(d)
    reg = server.open_registry(cfg)
    token_id, secret, expires = reg.create_token(args.finess, args.ght, args.region, ttl)
    reg.close()
    until = dt.datetime.fromtimestamp(expires, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(format_token(token_id, secret, fp))
    print(
        f"one-time token {token_id} for FINESS {args.finess}, GHT {args.ght}, region "
        f"{args.region}; expires {until}; CA fingerprint (SHA-256) {fp}",
        file=sys.stderr,
    )
    return 0


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M") + "Z"


def _table(header: list[str], rows: list[list[str]]) -> None:
    # Columns as wide as their longest value: a GHT or agent id is never cut.
    widths = [max(len(str(v)) for v in col) for col in zip(header, *rows, strict=True)]
    for r in (header, *rows):
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _token_list(cfg: dict) -> int:
    reg = server.open_registry(cfg)
    try:
        tokens = reg.tokens()
    finally:
        reg.close()
    now = time.time()
    rows = []
    for t in tokens:
        if t["used_at"] is not None:
            state = f"used {_when(t['used_at'])} by {t['agent_id']}"
        elif t["revoked_at"] is not None:
            state = f"revoked {_when(t['revoked_at'])}"
        elif t["expires_at"] < now:
            state = "expired"
        else:
            state = "unused"
        rows.append(
            [
                t["id"],
                t["finess"],
                t["ght"],
                t["region"],
                _when(t["created_at"]),
                _when(t["expires_at"]),
                state,
            ]
        )
    _table(["TOKEN", "FINESS", "GHT", "REGION", "CREATED", "EXPIRES", "STATE"], rows)
    return 0


def _token_revoke(args: argparse.Namespace, cfg: dict) -> int:
    reg = server.open_registry(cfg)
    try:
        t = reg.revoke_token(args.token_id)
    except KeyError:
        print(f"vigie-collector: no token {rules.shown(args.token_id)}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(
            f"vigie-collector: {exc}; revoke or retire that agent instead "
            "('vigie-collector agent retire AGENT_ID')",
            file=sys.stderr,
        )
        return 2
    finally:
        reg.close()
    print(
        f"token {t['id']} (FINESS {t['finess']}, GHT {t['ght']}) revoked: enrollment with it "
        "is refused from now on"
    )
    return 0


def _last_seen(cfg: dict) -> dict[str, dict] | None:
    """The store's agents rows by agent id; None when there is no store yet (a SQLite file
    not created: opening it would create one just to list nothing)."""
    url = server.store_url(cfg)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return None
    store = server.open_store(cfg)
    try:
        return {r["agent_id"]: r for r in store.list_agents()}
    finally:
        store.close()


def _agent_list(cfg: dict) -> int:
    reg = server.open_registry(cfg)
    try:
        issued = {a["agent_id"]: a for a in reg.agents()}
        states = reg.agent_states()
        names = reg.names()
    finally:
        reg.close()
    seen = _last_seen(cfg) or {}
    now = time.time()
    rows = []
    # Agents the store knows but the registry never issued to (development certificates
    # from `pki issue-agent`) are listed too, without certificate dates.
    for agent_id in sorted(issued.keys() | seen.keys(), key=lambda a: (
        (issued.get(a) or seen[a])["finess"], a)):  # fmt: skip
        a = issued.get(agent_id) or seen[agent_id]
        revoked_at, reason, retired_at = states.get(agent_id, (None, "", None))
        if retired_at is not None:
            state = f"retired {_when(retired_at)}"
        elif revoked_at is not None:
            state = f"revoked {_when(revoked_at)}" + (f" ({reason})" if reason else "")
        elif agent_id in issued and a["not_after"] < now:
            state = "expired"
        else:
            state = "active"
        cert = issued.get(agent_id, {})
        label = ""
        if agent_id in seen:
            try:
                label = str(json.loads(seen[agent_id]["host"] or "{}").get("label", ""))
            except (ValueError, AttributeError):
                label = ""
        rows.append(
            [
                agent_id,
                names.get(agent_id) or label or "-",
                a["finess"],
                a["ght"],
                a["region"],
                _when(cert.get("enrolled_at")),
                _when(cert.get("renewed_at")),
                _when(cert.get("not_after")),
                state,
                _when(seen[agent_id]["last_seen"]) if agent_id in seen else "-",
            ]
        )
    _table(
        [
            "AGENT",
            "NAME/HOST",
            "FINESS",
            "GHT",
            "REGION",
            "ENROLLED",
            "RENEWED",
            "CERT EXPIRES",
            "STATE",
            "LAST SEEN",
        ],
        rows,
    )
    return 0


def _agent_rename(args: argparse.Namespace, cfg: dict) -> int:
    name = " ".join(args.name.split())  # one line: it goes in tables and logs
    if len(name) > 64 or not name.isprintable():
        print("vigie-collector: a name is at most 64 printable characters", file=sys.stderr)
        return 2
    reg = server.open_registry(cfg)
    try:
        if not reg.known_agent(args.agent_id) and args.agent_id not in (_last_seen(cfg) or {}):
            print(f"vigie-collector: no agent {args.agent_id}", file=sys.stderr)
            return 2
        reg.rename(args.agent_id, name)
    finally:
        reg.close()
    print(f"agent {args.agent_id} " + (f"named {name!r}" if name else "no longer named"))
    return 0


def _agent_retire(args: argparse.Namespace, cfg: dict) -> int:
    reg = server.open_registry(cfg)
    try:
        seen = _last_seen(cfg) or {}
        if not reg.known_agent(args.agent_id) and args.agent_id not in seen:
            print(f"vigie-collector: no agent {args.agent_id}", file=sys.stderr)
            return 2
        reg.retire(args.agent_id, args.reason)
    finally:
        reg.close()
    if args.agent_id in seen:
        # Retired means out of the fleet view: the store's agents row is what `vigie
        # agents` shows silent and what the dark-site rule counts, so it goes. Its alerts
        # and incidents stay. The row is deleted rather than flagged so that neither the
        # store's schema nor its readers change; the revocation (above, and final) keeps
        # the agent from ever writing the row again, once the collector has cut it.
        time.sleep(RETIRE_WAIT)
        store = server.open_store(cfg)
        try:
            with store.backend.tx() as tx:
                tx.execute("DELETE FROM agents WHERE agent_id = ?", (args.agent_id,))
        finally:
            store.close()
    print(
        f"agent {args.agent_id} retired: its certificate is revoked and it is no longer "
        "listed among the agents (its alerts stay)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
