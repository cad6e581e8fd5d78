"""Temporal positions (RoPE) of the memory frames in front of a shot.

"upstream" (the default) is how the StoryMem authors ship it since their fix of January 2026
(Kevin-thu/StoryMem issue #17, commit 052c68d) and how the LoRA was trained: the M memory latent frames
sit at -M*S, ..., -2S, -S (S = `spacing`, 5 upstream) and the shot keeps the positions of a plain I2V
clip, 0, 1, ... So memory reads as the past, however many keyframes it holds.

"first-release" is the numbering of the first public release (e027735): memory and shot together,
0 .. M + T - 1. The authors call it a bug; it stays for stories begun with it (a story folder records its
placement, and one film never mixes the two) and for comparing with shots made before the fix.
"""

from __future__ import annotations

import torch

from .choices import DEFAULT_MEMORY_POSITIONS, MemoryPositions
from .errors import ConditioningError

DEFAULT_SPACING = 5  # MEMORY_ROPE_SHIFT of the authors' fixed code


def check_placement(placement: str) -> None:
    """Refuse an unknown placement before any model runs."""
    if placement not in MemoryPositions.names():
        raise ConditioningError(f"memory placement '{placement}' is unknown: use one of "
                                f"{', '.join(MemoryPositions.names())}.")


def memory_frame_positions(memory_count: int, latent_frames: int, placement: str = DEFAULT_MEMORY_POSITIONS,
                           spacing: int = DEFAULT_SPACING) -> torch.Tensor | None:
    """Positions of all `latent_frames` (memory first), or None where they are the plain 0 .. n-1."""
    check_placement(placement)
    if not 0 <= memory_count <= latent_frames:
        raise ConditioningError(
            f"{memory_count} memory latent frames do not fit a latent of {latent_frames} frames: sample the latent "
            "made with the memory (StoryMem Conditioning's latent output)."
        )
    if placement == MemoryPositions.FIRST_RELEASE or memory_count == 0:
        return None
    if spacing < 1:
        raise ConditioningError(f"memory spacing {spacing} must be at least 1 (the authors' code uses 5).")
    memory = torch.arange(-memory_count * spacing, 0, spacing)
    return torch.cat([memory, torch.arange(latent_frames - memory_count)])
