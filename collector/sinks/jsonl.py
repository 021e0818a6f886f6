"""Incident changes as JSON lines in a size-rotated file.

One line per incident change (the canonical `incident_dict`). Rotation renames, never
copies: FILE.N-1 -> FILE.N, ..., FILE -> FILE.1, then a fresh FILE, each step an atomic
rename, so a reader tailing the file never sees a half-copied one. Every line is flushed
(and by default fsynced) before `send` returns. One lock serialises writers.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from collector.sinks.base import SinkError, incident_dict
from vigie.v1 import analyst_pb2


class JsonlSink:
    name = "jsonl"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = 50 * 1024 * 1024,
        backups: int = 5,
        fsync: bool = True,
    ) -> None:
        if max_bytes <= 0 or backups < 0:
            raise ValueError("max_bytes must be > 0 and backups >= 0")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.fsync = fsync
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._size = 0

    def send(
        self, incident: analyst_pb2.Incident, alerts: Sequence[analyst_pb2.StoredAlert]
    ) -> None:
        line = json.dumps(incident_dict(incident, alerts), ensure_ascii=False, sort_keys=False)
        data = (line + "\n").encode("utf-8")
        with self._lock:
            try:
                self._open()
                if self._size > 0 and self._size + len(data) > self.max_bytes:
                    self._rotate()
                self._write(data)
            except OSError as exc:
                self._close_fd()  # reopen next time: the file may have been moved away
                raise SinkError(f"jsonl: cannot write {self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._close_fd()

    # --------------------------------------------------------------------------------

    def _open(self) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._size = os.fstat(self._fd).st_size

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._size += len(data)
        if self.fsync:
            os.fsync(self._fd)

    def _rotated(self, i: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{i}")

    def _rotate(self) -> None:
        self._close_fd()
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self.backups - 1, 0, -1):
                src = self._rotated(i)
                if src.exists():
                    os.replace(src, self._rotated(i + 1))
            os.replace(self.path, self._rotated(1))
        self._fsync_dir()
        self._open()

    def _fsync_dir(self) -> None:
        if not self.fsync:
            return
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
