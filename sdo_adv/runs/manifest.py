"""The resumable record of a run: ``manifest.jsonl``, the ranks' parts, the folder lock.

One JSON row per finished item, appended durably, so a re-run resumes. Under ``torchrun`` /
``accelerate launch`` each rank appends to ``manifest.rank<r>.jsonl``; the parts are merged
into ``manifest.jsonl`` at the end (or by ``RunOutputs.merge`` after a crash).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..files import write_text
from .errors import RunError

MANIFEST = "manifest.jsonl"
PART_GLOB = "manifest.rank*.jsonl"
LOCK = ".lock"


class Manifest:
    """Append-only JSON-lines record of finished items, keyed by ``source``.

    A torn last line (an interrupted append: no final newline) is dropped on reading and cut
    from the file before the next append.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[str, dict[str, Any]] = {}
        data = path.read_bytes() if path.exists() else b""
        end = data.rfind(b"\n") + 1
        for number, line in enumerate(data[:end].splitlines(), start=1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise RunError(f"{path} line {number} is not JSON ({err}); fix or remove it") from err
                self.rows[row["source"]] = row
        if end < len(data):
            with path.open("r+b") as f:
                f.truncate(end)

    def append(self, row: dict[str, Any]) -> None:
        """Append one row durably (flush + fsync)."""
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.rows[row["source"]] = row


def part_path(out: Path, rank: int) -> Path:
    """Rank ``rank``'s manifest part in a multi-process run."""
    return out / PART_GLOB.replace("*", str(rank))


def finished_rows(out: Path) -> dict[str, dict[str, Any]]:
    """Rows of every finished item in ``out``: ``manifest.jsonl`` and any ranks' parts."""
    rows: dict[str, dict[str, Any]] = {}
    for path in [out / MANIFEST, *sorted(out.glob(PART_GLOB))]:
        rows.update(Manifest(path).rows)
    return rows


@contextmanager
def run_lock(out: Path, exclusive: bool = False) -> Iterator[None]:
    """Hold ``out/.lock``: shared while a run's ranks write, exclusive for a merge, so that a
    merge never folds manifests that a running rank still appends to."""
    import fcntl

    with (out / LOCK).open("a") as f:
        try:
            fcntl.flock(f, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"{out} is in use: " + ("an attack is still writing to it" if exclusive
                                                   else "a merge is running on it"), "out") from None
        yield


def merge_manifests(out: Path, order: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Fold the ranks' parts into ``manifest.jsonl``: each source once, in ``order`` (then any
    other sources), written atomically before the parts are removed, so a crash at any point
    loses nothing. Returns the merged rows."""
    parts = sorted(out.glob(PART_GLOB))
    rows = finished_rows(out)
    if parts:
        position = {source: i for i, source in enumerate(order)}
        ranked = sorted(rows.values(), key=lambda r: position.get(r["source"], len(position)))
        write_text(out / MANIFEST, "".join(json.dumps(r) + "\n" for r in ranked), durable=True)
        for part in parts:
            part.unlink()
    return rows
