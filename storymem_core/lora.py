"""LoRA: StoryMem's M2V adapters (peft layout, rsLoRA) and ComfyUI-style Wan LoRAs, merged or hooked.

An adapted linear computes  W x + scale * B (A x)  with A [r, in] and B [out, r], as peft does.
StoryMem's `backbone_*_noise.pth` (peft `get_peft_model_state_dict`) store no alpha: StoryMem trains with
alpha = r and rsLoRA, so scale = alpha / sqrt(r). ComfyUI files may store `alpha` per module: scale =
alpha / r, or 1 without it. Merging changes the weights once, so a forward costs what the bare model's does: a story's
LoRAs (fixed strengths) are merged; fp8 layers are dequantised, merged and quantised again with a scale for the merged
range (one more fp8 rounding; the preset's tolerance, tests/test_merged_loras.py). Hooking adds the low-rank path at
run time (two more matmuls per linear), for strengths that change from shot to shot (the nodes).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from .errors import CheckpointError
from .wan.dit import LayerNorm, RMSNorm
from .wan.fp8 import Fp8Linear, quantize_per_tensor
from .weights.checkpoint import Checkpoint
from .weights.shapes import first_names

log = logging.getLogger(__name__)

_MODULE_PART = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|alpha|diff|diff_b)$")
_DELTA_PARAMS = {"diff": "weight", "diff_b": "bias"}


class LoraModule(NamedTuple):
    down: torch.Tensor  # A [r, in]
    up: torch.Tensor  # B [out, r]
    scale: float  # alpha / r (or / sqrt(r) for rsLoRA), times strength


@dataclass(frozen=True)
class LoraWeights:
    """One LoRA file, normalised: module name (ours) -> (A, B, scale)."""

    source: str
    modules: dict[str, LoraModule]
    unrecognized: tuple[str, ...] = ()  # tensors that are no LoRA part (reported when applied)
    deltas: dict[str, torch.Tensor] = field(default_factory=dict)  # parameter name -> full delta, times strength


def load_lora(
    source: str | Path | Mapping[str, torch.Tensor],
    strength: float = 1.0,
    alpha: float | None = None,
    rslora: bool | None = None,
) -> LoraWeights:
    """Read a LoRA file (or state dict) of any supported layout.

    `alpha` overrides the file's (peft default: alpha = rank, as StoryMem trains); `rslora` defaults to
    True for peft files (StoryMem's setting) and False for ComfyUI files.
    """
    checkpoint = Checkpoint(source, kind="lora")
    checkpoint.raise_problems()
    peft = checkpoint.info.lora.format == "peft"
    rslora = peft if rslora is None else rslora
    parts: dict[str, dict[str, torch.Tensor]] = {}
    unrecognized = []
    for name, tensor in checkpoint.tensors():
        if match := _MODULE_PART.match(name):
            parts.setdefault(match["module"], {})[match["part"]] = tensor
        else:
            unrecognized.append(name)
    modules, deltas = {}, {}
    for module, tensors in parts.items():
        for part, param in _DELTA_PARAMS.items():
            if part in tensors:
                deltas[f"{module}.{param}"] = tensors.pop(part) * strength
        if not tensors:
            continue
        down, up = tensors.get("lora_A.weight"), tensors.get("lora_B.weight")
        if down is None or up is None or down.dim() != 2 or up.dim() != 2 or up.shape[1] != down.shape[0]:
            shapes = {part: list(t.shape) for part, t in tensors.items()}
            raise CheckpointError(
                f"LoRA {checkpoint.info.path} has an incomplete or inconsistent pair for {module} ({shapes}); download "
                "the file again."
            )
        rank = down.shape[0]
        module_alpha = alpha if alpha is not None else float(tensors["alpha"]) if "alpha" in tensors else rank
        scale = module_alpha / (math.sqrt(rank) if rslora else rank) * strength
        modules[module] = LoraModule(down, up, scale)
    return LoraWeights(checkpoint.info.path, modules, tuple(unrecognized), deltas)


def is_peft_lora(path: str | Path) -> bool:
    """Whether `path` is a LoRA in peft's layout, as StoryMem releases its `.pth` pair: ComfyUI's own LoRA loaders
    match none of its keys and apply nothing (only `StoryMem LoRA (MODEL)` or a `convert-lora` copy work there).
    Reads names and shapes only; any file that is no readable LoRA is not one."""
    try:
        info = Checkpoint(path).info
    except CheckpointError:
        return False
    return info.lora is not None and info.lora.format == "peft"


@dataclass
class AppliedLoras:
    """What `apply_loras` changed; `remove()` undoes it (unmerge or unhook), last applied first."""

    mode: str
    unmatched: list[str] = field(default_factory=list)
    _undo: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def remove(self) -> None:
        while self._undo:
            self._undo.pop()()


def _target_layer(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _check_fits(layer: nn.Module, name: str, part: LoraModule, source: str) -> None:
    if not isinstance(layer, (nn.Linear, Fp8Linear)):
        raise CheckpointError(
            f"LoRA {source} adapts {name}, a {type(layer).__name__}; only linear layers can take a LoRA here, so "
            "remove that entry."
        )
    if part.down.shape[1] != layer.in_features or part.up.shape[0] != layer.out_features:
        raise CheckpointError(
            f"LoRA {source} does not fit this model: {name} is [{layer.out_features}, {layer.in_features}] but the "
            f"LoRA gives [{part.up.shape[0]}, {part.down.shape[1]}] (rank {part.down.shape[0]}); use a LoRA made for "
            "this base model."
        )


def _merge(layer: nn.Linear | Fp8Linear, part: LoraModule, sign: float, work: torch.device | None) -> None:
    device = work or layer.weight.device
    _merge_delta(layer, "weight",
                 part.up.to(device, torch.float32) @ part.down.to(device, torch.float32) * part.scale, sign, work)


def _free_buffer_index(layer: nn.Module, stem: str) -> int:
    """The first n with no `<stem>_<n>` on the layer: stacked LoRAs hook the same layer side by side."""
    index = 0
    while hasattr(layer, f"{stem}_{index}"):
        index += 1
    return index


def _hook(layer: nn.Module, part: LoraModule) -> Callable[[], None]:
    """Add scale * B(A x) to the layer's output; A and B ride along as non-persistent buffers (moved with the layer)."""
    index = _free_buffer_index(layer, "lora_down")
    names = (f"lora_down_{index}", f"lora_up_{index}")
    floating = layer.weight.is_floating_point() and layer.weight.dtype.itemsize > 1
    weight_dtype = layer.weight.dtype if floating else part.down.dtype
    layer.register_buffer(names[0], part.down.to(layer.weight.device, weight_dtype), persistent=False)
    layer.register_buffer(names[1], part.up.to(layer.weight.device, weight_dtype), persistent=False)

    def add_low_rank(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        x = inputs[0]
        down = getattr(module, names[0]).to(x.device, x.dtype)
        up = getattr(module, names[1]).to(x.device, x.dtype)
        return output + nn.functional.linear(nn.functional.linear(x, down), up) * part.scale

    handle = layer.register_forward_hook(add_low_rank)

    def undo() -> None:
        handle.remove()
        for name in names:
            delattr(layer, name)

    return undo


def _check_delta_fits(layer: nn.Module, name: str, param: str, delta: torch.Tensor, source: str, mode: str) -> None:
    target = getattr(layer, param)
    if tuple(delta.shape) != tuple(target.shape):
        raise CheckpointError(
            f"LoRA {source} does not fit this model: {name} is {list(target.shape)} but the LoRA's delta is "
            f"{list(delta.shape)}; use a LoRA made for this base model."
        )
    if mode == "hook" and not isinstance(layer, _DELTA_HOOKS[param]):
        raise CheckpointError(
            f"LoRA {source} changes {name}, a {type(layer).__name__} {param}, which can only be merged: apply it with "
            "mode='merge'."
        )


def _merge_delta(layer: nn.Module, param: str, delta: torch.Tensor, sign: float, work: torch.device | None) -> None:
    """`param += sign * delta`, computed in float32 on `work` (default: where the parameter is)."""
    target = getattr(layer, param)
    work = work or target.device
    with torch.no_grad():
        if isinstance(layer, Fp8Linear) and param == "weight":
            merged = (layer.weight.to(work).float() * layer.scale_weight.to(work)).add_(
                delta.to(work, torch.float32), alpha=sign)
            weight, scale = quantize_per_tensor(merged)  # a new scale: the merged weights may span another range
            layer.weight.data, layer.scale_weight = weight.to(target.device), scale.to(target.device)
        else:
            target.copy_(target.to(work, torch.float32).add_(delta.to(work, torch.float32), alpha=sign))


def _hook_delta(layer: nn.Module, param: str, delta: torch.Tensor) -> Callable[[], None]:
    """Add what `param + delta` would add to the layer's output; the delta rides along as a non-persistent buffer."""
    name = f"lora_delta_{param}_{_free_buffer_index(layer, f'lora_delta_{param}')}"
    layer.register_buffer(name, delta.to(getattr(layer, param).device, torch.float32), persistent=False)

    def add_delta(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        x, d = inputs[0], getattr(module, name)
        if param == "bias":
            shape = (-1,) + (1,) * (output.dim() - 2) if isinstance(module, nn.Conv3d) else (-1,)
            return output + d.to(output.dtype).view(shape)
        if isinstance(module, (nn.Linear, Fp8Linear)):
            return output + nn.functional.linear(x, d.to(x.dtype))
        return output + (module.normalize(x) * d).to(output.dtype)

    handle = layer.register_forward_hook(add_delta)

    def undo() -> None:
        handle.remove()
        delattr(layer, name)

    return undo


# layers whose output a weight / bias delta can be added to at run time
_DELTA_HOOKS = {"weight": (nn.Linear, Fp8Linear, RMSNorm, LayerNorm),
                "bias": (nn.Linear, Fp8Linear, LayerNorm, nn.Conv3d)}


def apply_loras(model: nn.Module, loras: list[LoraWeights], mode: str = "merge", strict: bool = True,
                work_device: torch.device | None = None) -> AppliedLoras:
    """Apply LoRAs (each already scaled by its strength) to `model`; stacked LoRAs add up.

    Merges compute on `work_device` when given (the GPU, for a model still on the CPU: fp8 arithmetic there is slow).
    Removing a merge from fp8 layers re-quantises them once more, so it restores them only to fp8 rounding.

    Every module is checked before anything changes. Entries that match no layer of the model raise a
    CheckpointError listing them; with `strict=False` they are logged and returned in `unmatched` instead,
    unless no entry matches at all. Besides low-rank pairs, a LoRA may carry full weight / bias deltas
    (`.diff` / `.diff_b`, as speed LoRAs do) for linear, norm and patch-embedding layers.
    """
    if mode not in ("merge", "hook"):
        raise ValueError(f"mode must be 'merge' or 'hook', not {mode!r}")
    applied = AppliedLoras(mode)
    plan, delta_plan = [], []
    for lora in loras:
        applied.unmatched += [f"{lora.source}: {key}" for key in lora.unrecognized]
        for name, part in lora.modules.items():
            layer = _target_layer(model, name)
            if layer is None:
                applied.unmatched.append(f"{lora.source}: {name}")
                continue
            _check_fits(layer, name, part, lora.source)
            plan.append((layer, part))
        for name, delta in lora.deltas.items():
            module_name, _, param = name.rpartition(".")
            layer = _target_layer(model, module_name)
            if layer is None or getattr(layer, param, None) is None:
                applied.unmatched.append(f"{lora.source}: {name}")
                continue
            _check_delta_fits(layer, name, param, delta, lora.source, mode)
            delta_plan.append((layer, param, delta))
    if applied.unmatched:
        shown = first_names(applied.unmatched)
        if strict or not (plan or delta_plan):  # nothing fits at all: a LoRA for another architecture
            raise CheckpointError(
                f"{len(applied.unmatched)} LoRA entries match no layer of this model ({shown}); use a LoRA made for "
                "Wan2.2 A14B."
            )
        log.warning("LoRA entries matching no layer were skipped: %s", shown)
    for layer, part in plan:
        if mode == "merge":
            _merge(layer, part, +1.0, work_device)
            applied._undo.append(lambda layer=layer, part=part: _merge(layer, part, -1.0, work_device))
        else:
            applied._undo.append(_hook(layer, part))
    for layer, param, delta in delta_plan:
        if mode == "merge":
            _merge_delta(layer, param, delta, +1.0, work_device)
            applied._undo.append(
                lambda layer=layer, param=param, delta=delta: _merge_delta(layer, param, delta, -1.0, work_device))
        else:
            applied._undo.append(_hook_delta(layer, param, delta))
    return applied
