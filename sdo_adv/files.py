"""Atomic file writes: a temporary ``.<name>.tmp`` beside the target, then ``os.replace``, so a
killed process leaves either the old file or the new one, plus at most a temporary file."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

STALE_GLOB = ".*.tmp"


def temp_path(path: Path) -> Path:
    """The temporary file :func:`atomic_write` writes before renaming it to ``path``."""
    return path.with_name(f".{path.name}.tmp")


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb", durable: bool = False) -> Iterator[IO]:
    """Open a temporary file for writing; on a clean exit, replace ``path`` with it
    (``durable``: flush and fsync first); on an error, remove it."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with tmp.open(mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str, durable: bool = False) -> None:
    """Write a text file atomically."""
    with atomic_write(path, "w", durable) as f:
        f.write(text)
