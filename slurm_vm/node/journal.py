"""The per-job tracker: every host object a prolog creates is recorded *before* it is created.

The epilog (or a failed prolog's rollback) undoes the entries in reverse order. Undo steps are
idempotent, so an entry whose object was never made (crash between record and create) is harmless.
Journals live in a root-only directory: a job's user cannot steer what root deletes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from .layout import journal_path


@dataclass(frozen=True)
class Entry:
    kind: str      # a key of objects.KINDS (or one of its aliases)
    data: dict     # the object's record()


class Journal:
    def __init__(self, state_dir: str, job_id: int):
        self.path = journal_path(state_dir, job_id)
        self.job_id = job_id

    def record(self, kind: str, data: dict) -> None:
        line = json.dumps({"kind": kind, "data": data}, sort_keys=True) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def entries(self) -> list[Entry]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return []
        with os.fdopen(fd, "r", encoding="utf-8") as fh:
            lines = fh.read().splitlines()
        out = []
        for line in lines:
            try:
                data = json.loads(line)
                if "action" in data:   # written by slurm-vm 0.1
                    data = {"kind": data["action"], "data": data["args"]}
                out.append(Entry(str(data["kind"]), dict(data["data"])))
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line after a crash: the sweep covers what it named
        return out

    def exists(self) -> bool:
        return os.path.lexists(self.path)

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
