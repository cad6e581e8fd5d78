"""StoryMem's LoRA as a ComfyUI LoRA: the rsLoRA scale folded into each module's `alpha`.

ComfyUI (and most loaders) scale a LoRA module by alpha / rank. The released StoryMem `.pth` files
(peft, rsLoRA, no alpha) need alpha / sqrt(rank), so a plain rename would apply them sqrt(rank) times
too weakly. Writing alpha = scale * rank makes every loader's alpha / rank give the intended scale.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from .errors import CheckpointError
from .files import atomic_write_path
from .lora import LoraWeights, load_lora

COMFY_PREFIX = "diffusion_model."


def comfy_lora_tensors(weights: LoraWeights) -> dict[str, torch.Tensor]:
    """`diffusion_model.<module>.lora_down/lora_up.weight` + `.alpha` (and `.diff` / `.diff_b` deltas)."""
    tensors = {}
    for module, part in weights.modules.items():
        rank = part.down.shape[0]
        tensors[f"{COMFY_PREFIX}{module}.lora_down.weight"] = part.down.contiguous()
        tensors[f"{COMFY_PREFIX}{module}.lora_up.weight"] = part.up.contiguous()
        tensors[f"{COMFY_PREFIX}{module}.alpha"] = torch.tensor(part.scale * rank, dtype=torch.float32)
    for name, delta in weights.deltas.items():
        module, _, param = name.rpartition(".")
        tensors[f"{COMFY_PREFIX}{module}.{'diff' if param == 'weight' else 'diff_b'}"] = delta.contiguous()
    return tensors


def convert_lora(source: str | Path, target: str | Path, strength: float = 1.0, alpha: float | None = None) -> Path:
    """Write `source` (any LoRA layout the engine reads) as a ComfyUI LoRA safetensors file at `target`.

    `alpha` overrides the file's (a peft .pth stores none: StoryMem trains with alpha = rank).
    """
    if not str(target).lower().endswith(".safetensors"):  # checked before the LoRA is read
        raise CheckpointError(f"the converted LoRA {target} is written as safetensors: name it "
                              f"{Path(target).with_suffix('.safetensors').name}, so ComfyUI and the pack read it as "
                              "one.")
    tensors = comfy_lora_tensors(load_lora(source, strength, alpha))
    with atomic_write_path(target) as temp:
        save_file(tensors, str(temp), metadata={"format": "pt", "storymem_source": Path(source).name})
    return Path(target)
