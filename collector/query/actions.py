"""What an analyst may change, as plain code shared by the gRPC analyst service and the web
console: the role is checked here, not by each door."""

from __future__ import annotations

import json

from collector.pki.intel import KEYS, validate
from collector.query.scope import Scope


class NotAllowed(Exception):
    """The role may not do this (PERMISSION_DENIED / 403)."""


def publish_intel(registry, scope: Scope, bundle_json: str, replace: bool) -> tuple[int, dict]:
    """Add (or replace) the intel bundle's indicators; agents receive the new version on
    their stream. Returns (version, the bundle published). Raises NotAllowed for a
    regional analyst, ValueError (IntelError) for a bad bundle."""
    if not scope.national:
        raise NotAllowed("only a national analyst publishes intel for the whole fleet")
    new = validate(json.loads(bundle_json))
    if not replace:
        _, current = registry.current_intel()
        merged = {
            k: sorted(set(current.get(k, [])) | set(new.get(k, [])))
            for k in KEYS
            if k != "thresholds"
        }
        merged["thresholds"] = current.get("thresholds", {}) | new.get("thresholds", {})
        new = validate(merged)
    return registry.load_intel(new), new
