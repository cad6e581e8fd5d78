"""Seconds per phase of a shot or a story, for benchmarks and profiling (docs/benchmarks.md).

The engine marks its phases with `phase(name)`; outside `recording` that costs nothing. Inside it, each phase
synchronises the device at its start and end, so GPU work is counted in the phase that queued it (that waiting is
why only a caller who asks for the figures pays it).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch

TEXT_ENCODING = "text encoding"
MEMORY_ENCODING = "memory encoding"  # the VAE encoding the memory and the given frames: the conditioning
SAMPLING_HIGH = "sampling, high-noise expert"
SAMPLING_LOW = "sampling, low-noise expert"
DECODE = "decode"
KEYFRAME_SELECTION = "keyframe selection"
WRITES = "writes"  # waiting for a shot's files (written behind the next shot's sampling); the film at the end
PHASES = (TEXT_ENCODING, MEMORY_ENCODING, SAMPLING_HIGH, SAMPLING_LOW, DECODE, KEYFRAME_SELECTION, WRITES)


@dataclass
class PhaseTimes:
    """Seconds and entries per phase, summed over every time the phase ran."""

    device: torch.device
    seconds: dict[str, float] = field(default_factory=dict)
    entries: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.entries[name] = self.entries.get(name, 0) + 1


_recorder: ContextVar[PhaseTimes | None] = ContextVar("storymem_phase_times", default=None)


@contextlib.contextmanager
def recording(device: torch.device | str) -> Iterator[PhaseTimes]:
    """Record the phases run inside the block; the figures fill the yielded PhaseTimes."""
    times = PhaseTimes(torch.device(device))
    token = _recorder.set(times)
    try:
        yield times
    finally:
        _recorder.reset(token)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Count the block's seconds under `name` while recording; phases do not nest (an inner one would count twice)."""
    times = _recorder.get()
    if times is None:
        yield
        return
    _synchronize(times.device)
    start = time.perf_counter()
    try:
        yield
    finally:
        _synchronize(times.device)
        times.add(name, time.perf_counter() - start)
