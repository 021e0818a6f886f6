"""Where each source stopped reading (file inode, offset and head; journal cursor), kept
in state_dir/logs/positions.json and written atomically (beside, fsync, rename): a
restart, a crash or a reload starts from the last position whose events the pipeline
handled, so that no line is replayed as a new alert and none written while the agent was
down is skipped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common import logs
from common.files import write_atomic

log = logs.get("agent.logs")


class Positions:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict[str, Any] = {"files": {}, "journal": {}, "keys": {}}
        self._written = ""
        if path is None:
            return
        try:
            loaded = json.loads(path.read_text())
            for k in self.data:
                if isinstance(loaded.get(k), dict):
                    self.data[k] = loaded[k]
            self._written = json.dumps(self.data, sort_keys=True)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            # A damaged file costs at most `catch_up` of backlog, not the agent.
            log.warning("log_positions_unreadable", path=str(path), error=str(exc)[:200])

    def snapshot(self) -> str:
        return json.dumps(self.data, sort_keys=True)

    def commit(self, snap: str) -> None:
        """Write `snap` (taken when its events were read): called once the pipeline has
        handled them."""
        if self.path is None or snap == self._written:
            return
        try:
            write_atomic(self.path, snap.encode(), 0o600)
            self._written = snap
        except OSError as exc:
            log.warning("log_positions_not_saved", path=str(self.path), error=str(exc)[:200])
