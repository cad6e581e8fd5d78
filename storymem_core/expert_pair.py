"""A story's Wan2.2 expert pair as it runs: weight dtype from the user's choice, LoRAs merged, blocks compiled,
GPU placement. This is policy on top of loading (storymem_core/weights loads one expert); see docs/architecture.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from .choices import Offload, WeightDtype
from .errors import CheckpointError
from .lora import apply_loras, load_lora
from .offload import BlockSwapDiT, resolve_offload
from .wan.attention import backend_name
from .weights.checkpoint import Checkpoint
from .weights.kinds import LORA
from .weights.loading import TensorProgress, load_dit

log = logging.getLogger(__name__)

LoadProgress = Callable[[int, int], None]  # (percent done, 100) of loading a pair; may raise to stop it

DTYPES = {WeightDtype.BF16: torch.bfloat16, WeightDtype.FP16: torch.float16, WeightDtype.FP32: torch.float32}


def auto_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def expert_weights(choice: str, device: torch.device) -> tuple[torch.dtype, bool | None]:
    """(dtype, keep_fp8) for `load_dit` from a user's choice (`choices.WeightDtype`).

    auto: fp8 files stay fp8 on a GPU (fp8 matmuls), everything else runs in bf16 (fp32 on the CPU).
    """
    keep_fp8 = {WeightDtype.FP8: True, WeightDtype.AUTO: None if device.type == "cuda" else False}.get(choice, False)
    return DTYPES.get(choice, auto_dtype(device)), keep_fp8


class ExpertLoras(NamedTuple):
    """A LoRA pair, one file per expert; `strict` False skips (and logs) entries matching no layer."""

    high: Path
    low: Path
    strict: bool = True


def load_expert_pair(
    high: Path, low: Path, weights: str, offload: str, compile_blocks: bool, device: torch.device, free_bytes: int,
    tokens: int, loras: Sequence[ExpertLoras] = (), on_progress: LoadProgress | None = None,
) -> tuple[nn.Module, nn.Module, str]:
    """(high, low, placement): a Wan2.2 expert pair as a story runs it, for the nodes and the CLI alike.

    Dtype from `weights` (`WeightDtype`); placement from `offload` ('auto' plans from `free_bytes` for `tokens`);
    `loras` are merged in order (their strengths are fixed; fp8 layers re-quantised, computed on `device`): a forward
    costs what the bare expert's does; blocks compiled on a GPU when asked; 'blocks' wraps in BlockSwapDiT.
    `on_progress` follows the reading of each expert and each merge, as one bar.
    """
    for lora in loras:  # a damaged LoRA file is refused before tens of GB of experts are read, not after
        for path in (lora.high, lora.low):
            Checkpoint(path, kind=LORA).raise_problems()
    dtype, keep_fp8 = expert_weights(weights, device)
    stages = _Stages(2 + 2 * len(loras), on_progress)
    pair = [load_dit(path, dtype, keep_fp8, stages.part(index)) for index, path in enumerate((high, low))]
    if pair[0].config.model_type != pair[1].config.model_type:
        kinds = [dit.config.model_type.upper() for dit in pair]
        raise CheckpointError(
            f"{high.name} is a {kinds[0]} expert but {low.name} is {kinds[1]}: load two experts of one pair."
        )
    merges = [(dit, path, lora.strict) for lora in loras for dit, path in zip(pair, (lora.high, lora.low))]
    for stage, (dit, path, strict) in enumerate(merges, start=len(pair)):
        apply_loras(dit, [load_lora(path)], mode="merge", strict=strict, work_device=device)
        stages.report(stage + 1)
    placement = resolve_offload(offload, pair[0], device, free_bytes, tokens)
    if compile_blocks and device.type == "cuda":
        pair = [dit.compile_blocks() for dit in pair]
    if placement == Offload.BLOCKS:
        pair = [BlockSwapDiT(dit) for dit in pair]
    log.info("Wan experts: placement %s, attention %s%s", placement, backend_name(device),
             ", compiled blocks" if compile_blocks and device.type == "cuda" else "")
    return pair[0], pair[1], placement


class _Stages:
    """Equal stages of one load (an expert's tensors, a LoRA merge) reported as one percentage."""

    def __init__(self, count: int, on_progress: LoadProgress | None):
        self.count, self.on_progress = count, on_progress

    def part(self, index: int) -> TensorProgress:
        """The `on_tensor` of stage `index`: the share of its tensors read moves the whole on by up to one stage."""
        return lambda done, total: self.report(index + done / max(total, 1))

    def report(self, stages_done: float) -> None:
        if self.on_progress is not None:
            self.on_progress(int(100 * stages_done / self.count), 100)
