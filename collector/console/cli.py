"""`vigie-collector console user add|list|disable`: the console's analyst accounts."""

from __future__ import annotations

import argparse
import getpass
import sys

from collector.console import totp
from collector.console.accounts import AccountError, Accounts


def add_parser(sub, common_args, name_type, role_type) -> None:
    c = sub.add_parser("console", help="the analysts' web console: accounts")
    csub = c.add_subparsers(dest="console_cmd", required=True)
    u = csub.add_parser("user", help="analyst accounts of the web console")
    usub = u.add_subparsers(dest="user_cmd", required=True)
    ua = usub.add_parser(
        "add",
        help="create an account; prints its TOTP secret and otpauth:// URI once (for the "
        "analyst's authenticator app)",
    )
    common_args(ua)
    ua.add_argument("name", type=name_type)
    ua.add_argument("--role", required=True, type=role_type, help="national or regional:<code>")
    ua.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input (scripts) instead of "
        "asking twice on the terminal",
    )
    ul = usub.add_parser("list", help="every account: role, disabled, failed sign-ins")
    common_args(ul)
    ud = usub.add_parser("disable", help="refuse an account from now on and end its sessions")
    common_args(ud)
    ud.add_argument("name", type=name_type)


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise AccountError("the two passwords differ")
    return first


def run(args: argparse.Namespace, store) -> int:
    accounts = Accounts(store)
    try:
        if args.user_cmd == "add":
            secret = accounts.add_user(args.name, args.role, _password(args))
            print(f"console account {args.name} ({args.role}) created")
            print(f"TOTP secret (shown once): {secret}")
            print(f"authenticator URI: {totp.provisioning_uri(secret, args.name)}")
            return 0
        if args.user_cmd == "disable":
            if not accounts.disable(args.name):
                print(f"vigie-collector: no console account {args.name}", file=sys.stderr)
                return 2
            print(f"console account {args.name} disabled; its sessions are ended")
            return 0
        for u in accounts.users():
            state = "disabled" if u["disabled"] else "active"
            print(f"{u['name']}\t{u['role']}\t{state}\tfailed sign-ins {u['failures']}")
        return 0
    except AccountError as exc:
        print(f"vigie-collector: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
