"""Upper and lower bounds on every number a user gives, and the checks that apply them.

Torch-free so the CLI can refuse a typo before anything heavy is imported or allocated. The bounds are
generous for real runs (Wan2.2 makes 81 frames at 832x480 or 1280x720) and small enough that a value inside
them never asks for memory no machine has.
"""

from __future__ import annotations

import math

from .errors import SettingsError

MAX_SIDE = 2048  # pixels per side; Wan2.2 A14B is trained up to 1280x720
MAX_FRAMES = 481  # 30 s at 16 fps, six times StoryMem's 81
MAX_STEPS = 1000  # the training schedule has 1000 timesteps
MAX_MEMORY = 64  # keyframes; StoryMem keeps 10
MIN_SHIFT = 0.1
MAX_SHIFT = 100.0
MAX_GUIDE = 100.0
MAX_SEED = 2**64 - 1  # the range torch.Generator.manual_seed takes (and ComfyUI's seed widgets)


def check_number(value: float, name: str, low: float, high: float, fix: str) -> None:
    """`value` finite and in [low, high], else one sentence naming `name`, the range and `fix`."""
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingsError(f"{name} {value} is not a number a sampler can use: {fix}.")
    if not low <= value <= high:
        raise SettingsError(f"{name} {value} is outside {low:g} to {high:g}: {fix}.")


def check_seed(seed: int, shots: int, name: str = "seed") -> None:
    """Shot k of a story samples with seed + k - 1, so the last shot's seed must still fit the generator."""
    if not 0 <= seed <= MAX_SEED - max(shots - 1, 0):
        raise SettingsError(f"{name} {seed} is outside 0 to {MAX_SEED - max(shots - 1, 0)} (each shot adds 1): use a "
                            "smaller seed.")
