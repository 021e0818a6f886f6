"""Log detectors, one per file. They run on log events (agent/logs/event.py) through the
pipeline's `on_log` hook; add one: a file here and a line in LOG_DETECTORS."""

from __future__ import annotations

from agent.logs.detectors.auth_compromise import AuthCompromise
from agent.logs.detectors.auth_guessing import AuthGuessing
from agent.logs.detectors.base import LogDetector
from agent.logs.detectors.log_tampering import LogTampering
from agent.logs.detectors.persistence import Persistence
from agent.logs.detectors.privilege import Privilege

LOG_DETECTORS: list[type[LogDetector]] = [
    AuthGuessing,
    AuthCompromise,
    Privilege,
    Persistence,
    LogTampering,
]
