"""Temporal positions (RoPE) of the memory frames in front of a shot.

The released StoryMem code numbers memory and shot latent frames together, 0 .. M + T - 1
("released", what the LoRA was published with). The paper describes a negative shift instead: memory
frames at -M*S, ..., -S and the shot from 0 ("negative", S = `spacing`), so the shot keeps the
positions of a plain I2V clip and memory reads as the past.

"released" is the default everywhere and the placement golden parity holds for; "negative" is offered to
experiment with (`generate_memory_shot(memory_positions=...)`, `--memory-positions`, the Shot and Story Runner
nodes' `memory_positions`, and the StoryMem Memory Positions patch for ComfyUI's own models).
"""

from __future__ import annotations

import torch

from .choices import MEMORY_POSITIONS
from .errors import ConditioningError

DEFAULT_SPACING = 5


def check_placement(placement: str) -> None:
    """Refuse an unknown placement before any model runs."""
    if placement not in MEMORY_POSITIONS:
        raise ConditioningError(f"memory placement '{placement}' is unknown: use one of {', '.join(MEMORY_POSITIONS)}.")


def memory_frame_positions(memory_count: int, latent_frames: int, placement: str = "released",
                           spacing: int = DEFAULT_SPACING) -> torch.Tensor | None:
    """Positions of all `latent_frames` (memory first), or None for the released 0 .. n-1 numbering."""
    check_placement(placement)
    if not 0 <= memory_count <= latent_frames:
        raise ConditioningError(
            f"memory_latents = {memory_count} does not fit a latent of {latent_frames} frames: "
            "connect memory_latents of the StoryMem Conditioning that made this latent."
        )
    if placement == "released" or memory_count == 0:
        return None
    if spacing < 1:
        raise ConditioningError(f"memory spacing {spacing} must be at least 1 (the paper and kijai's wrapper use 5).")
    memory = torch.arange(-memory_count * spacing, 0, spacing)
    return torch.cat([memory, torch.arange(latent_frames - memory_count)])
