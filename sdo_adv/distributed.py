"""This process's place in a multi-process run (``torchrun`` or ``accelerate launch``).

Both launchers set ``WORLD_SIZE`` / ``RANK``; the process group itself comes from HF
accelerate's :class:`~accelerate.PartialState` (gloo on CPU, NCCL on GPUs), created with
``cpu=True`` on CPU, where it would otherwise count every rank as a world of one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

BARRIER_HOURS = 24


@dataclass(frozen=True)
class Process:
    """``rank`` of ``world`` processes; ``device``: this rank's device (``cuda:<local rank>``
    on GPUs); ``state``: the accelerate state, None in a single process."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"
    state: Any = None

    def barrier(self) -> None:
        """Wait until every process gets here (no-op in a single process)."""
        if self.state is not None:
            self.state.wait_for_everyone()

    def shard(self, items: list) -> list:
        """This rank's items: every ``world``-th from ``rank``, a split fixed by the order alone."""
        return items[self.rank::self.world]


def current_process(device: str) -> Process:
    """The launcher's process layout for ``device`` (``cpu`` or ``cuda``)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Process(device=device)
    from accelerate import PartialState

    # ranks wait for the slowest shard at the end: allow far longer than the backends' default
    state = PartialState(cpu=device == "cpu", timeout=timedelta(hours=BARRIER_HOURS))
    here = str(state.device) if device == "cuda" else "cpu"
    return Process(state.process_index, state.num_processes, here, state)
