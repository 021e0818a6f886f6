"""The journal and the retro-hunter in the running agent (`vigie-agent run`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from agent.hunt.journal import Journal, journal_dir
from agent.hunt.retro import RetroHunter


class IntelDoc:
    """state_dir/intel.json as a document, parsed again only when its stat moves."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._doc: dict = {}

    def __call__(self) -> dict:
        try:
            st = os.stat(self.path)
        except OSError:
            return {}
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                doc = json.loads(self.path.read_text("utf-8"))
            except (OSError, ValueError, RecursionError):
                return self._doc  # half-written: the next change re-reads it
            self._stamp, self._doc = stamp, doc if isinstance(doc, dict) else {}
        return self._doc


def start(cfg: dict[str, Any], pipe: Any, delivery: Any = None) -> RetroHunter | None:
    """Journal the pipeline's events and run retro-hunts; None when [journal] is off."""
    s = cfg["journal"]
    if not s["enabled"]:
        return None
    directory = journal_dir(cfg)
    pipe.add_taker(Journal(directory, s))
    hunter = RetroHunter(
        directory,
        IntelDoc(Path(cfg["state_dir"]) / "intel.json"),
        lambda findings, done: pipe.retro.put((findings, done)),
        duty=s["retro_duty"],
    )
    if delivery is not None:
        delivery.retro = hunter.status
    hunter.start()
    return hunter
