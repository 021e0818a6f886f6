"""Connection settings for the analysts' CLI: flags, then environment, then config file.

    ~/.config/vigie/cli.toml (or $VIGIE_CLI_CONFIG):
        collector = "collector.example:4443"
        ca = "/path/ca.crt"
        cert = "/path/analyst.crt"
        key = "/path/analyst.key"
Environment: VIGIE_COLLECTOR, VIGIE_CA, VIGIE_CERT, VIGIE_KEY.
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc

from common.config import ConfigError, Option, host_port, load

SCHEMA = {
    "collector": Option(str, "localhost:4443", "Collector HOST:PORT.", host_port),
    "ca": Option(str, "", "CA certificate of the collector."),
    "cert": Option(str, "", "Your analyst certificate."),
    "key": Option(str, "", "Your private key."),
}


class ConnectError(Exception):
    pass


def settings(flags: dict[str, str | None]) -> dict[str, str]:
    path = os.environ.get("VIGIE_CLI_CONFIG") or Path.home() / ".config/vigie/cli.toml"
    cfg = load(path, SCHEMA) if Path(path).exists() else load(None, SCHEMA)
    for key in SCHEMA:
        env = os.environ.get(f"VIGIE_{key.upper()}")
        if flags.get(key):
            cfg[key] = flags[key]
        elif env:
            cfg[key] = env
    if problem := host_port(cfg["collector"]):
        raise ConfigError(f"collector {problem}")
    return cfg


def channel(cfg: dict[str, str]) -> grpc.Channel:
    missing = [k for k in ("ca", "cert", "key") if not cfg[k]]
    if missing:
        raise ConnectError(
            f"no {', '.join(missing)} given: set VIGIE_{missing[0].upper()} or "
            f"--{missing[0]}, or write ~/.config/vigie/cli.toml"
        )
    try:
        ca, cert, key = (Path(cfg[k]).read_bytes() for k in ("ca", "cert", "key"))
    except OSError as exc:
        raise ConnectError(f"cannot read {exc.filename}: {exc.strerror}") from None
    creds = grpc.ssl_channel_credentials(ca, key, cert)
    return grpc.secure_channel(cfg["collector"], creds)
