"""The analysts' web console, served by the collector on a listener of its own
([console] listen, HTTPS). It reads the collector's store through the role scoping of the
gRPC analyst service (collector/query/scope.py) and writes to the same audit trail.

    server.py    HTTPS, sessions, CSRF, security headers
    accounts.py  analyst accounts (Argon2id, TOTP) and sessions, in the store
    pages.py     one method per page; live updates by server-sent events
    totp.py      RFC 6238; i18n.py: gettext catalogues; html.py, charts.py: rendering
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common import logs

log = logs.get("collector.console")


def start(cfg: dict[str, Any], store, registry, pki_dir: Path):
    """Start the console if [console] listen is set; returns it (to stop) and its port."""
    from collector.console.server import Console, tls_context
    from collector.pki import ca as pki
    from collector.pki.registry import RevocationCache

    c = cfg["console"]
    if not c["listen"]:
        return None, 0
    if bool(c["certificate"]) != bool(c["key"]):
        from collector.server import StartError

        raise StartError("[console] certificate and key are given together, or neither")
    cert = Path(c["certificate"]) if c["certificate"] else pki_dir / "server.crt"
    key = Path(c["key"]) if c["key"] else pki_dir / "server.key"
    client_ca = pki.trust_bundle(pki_dir) if c["client_certificates"] else None
    try:
        ctx = tls_context(cert, key, client_ca)
    except (OSError, ValueError) as exc:
        from collector.server import StartError

        raise StartError(f"[console] cannot load {cert}: {exc}") from None
    console = Console(
        c,
        store,
        registry=registry,
        revoked=RevocationCache(registry),
        silent_after=cfg["silent_after_seconds"],
        stix=cfg["sinks"]["stix"],
    )
    try:
        port = console.start(c["listen"], ctx)
    except OSError as exc:
        from collector.server import StartError

        raise StartError(f"[console] cannot listen on {c['listen']}: {exc}") from None
    host = c["listen"].rpartition(":")[0]
    log.info("console_listening", address=f"https://{host}:{port}/")
    return console, port
