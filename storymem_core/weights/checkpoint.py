"""An opened checkpoint: what it is (kind, layout, fp8 generation, sizes, problems), read from headers alone, and
its tensors under this engine's parameter names, each read on demand.

Layouts: Wan-AI download folders (sharded safetensors + index, `.pth` text encoder and VAE), ComfyUI single files
(keys with or without `model.diffusion_model.`, fp8 "scaled" in its old `scaled_fp8` / `scale_weight` and new
`comfy_quant` / `weight_scale` generations, Hugging Face T5 names for umT5) and LoRA files (peft or ComfyUI).
See docs/architecture.md.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..wan.fp8 import FP8_DTYPES
from .classify import classify
from .kinds import KINDS, LORA, UMT5, UNKNOWN, WAN21_VAE
from .readers import PTH_SUFFIXES, SAFETENSORS_SUFFIXES, TensorDict
from .renaming import PEFT_PREFIX
from .sources import find_wan_parts, is_wan_folder, open_source

DEQUANTIZED_DTYPE = torch.bfloat16  # fp8 weights become this when no dtype is asked for

_SHARD_NAME = re.compile(r"-(\d+)-of-(\d+)\.safetensors$")
_WEIGHT_SCALES = ("scale_weight", "weight_scale")  # old / new fp8 generation
_INPUT_SCALES = ("scale_input", "input_scale")  # activations are quantised dynamically here
_FP8_MARKER = "scaled_fp8"
_TOKENIZER_TENSOR = "spiece_model"
_FP8_FORMATS = ("float8_e4m3fn", "float8_e5m2")


@dataclass
class LoraSummary:
    """What a LoRA file adapts; peft files (StoryMem's) store no alpha."""

    format: str  # "peft" | "comfy"
    ranks: list[int]
    alphas: list[float]
    targets: list[str]  # module names with the block index removed, e.g. "self_attn.q"
    modules: int


@dataclass
class CheckpointInfo:
    """What a checkpoint is, read from headers; `problems` non-empty means it cannot be used as it is."""

    path: str
    layout: str  # "wan-folder" | "sharded-safetensors" | "safetensors" | "pth" | "state-dict"
    kind: str = UNKNOWN
    prefix: str = ""
    dtypes: dict[str, int] = field(default_factory=dict)  # dtype name -> tensor count
    fp8: str | None = None  # "scaled_fp8" (old ComfyUI) | "comfy_quant" (new) | "unscaled"
    parameter_count: int = 0
    architecture: dict[str, int] = field(default_factory=dict)
    lora: LoraSummary | None = None
    parts: dict[str, CheckpointInfo] = field(default_factory=dict)  # Wan-AI folder pieces
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class _Entry:
    key: str  # name in the file
    shape: tuple[int, ...]
    dtype: torch.dtype
    scale_key: str | None = None  # fp8 weight scale


def _dequantize(weight: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    weight = weight.float()
    if scale is not None:
        scale = scale.float()
        # per-tensor scales are scalars; per-output-channel scales broadcast over the input dimension
        weight = weight * (scale.reshape(-1, *[1] * (weight.dim() - 1)) if scale.numel() > 1 else scale.reshape(()))
    return weight.to(dtype)


class Checkpoint:
    """An opened checkpoint: what it is (`info`) and its tensors under our names, each read on demand.

    `source`: a file, a shard folder or index, a Wan-AI folder (narrowed to the part `kind` names) or a
    state dict. A `kind` the source is not raises a CheckpointError naming both.
    """

    def __init__(self, source: str | Path | Mapping[str, torch.Tensor], kind: str | None = None):
        if isinstance(source, Mapping):
            layout, name, self._reader = "state-dict", "the given state dict", TensorDict(source)
        else:
            layout, path, self._reader = open_source(Path(source), kind)
            name = str(path)
        shapes = {key: shape for key, (shape, _) in self._reader.headers.items()}
        detected, prefix, architecture, problems = classify(shapes)
        if kind is not None and detected != kind:
            found = KINDS[detected].name
            if problems and detected == UNKNOWN:
                found += f" ({problems[0]})"
            raise CheckpointError(
                f"{name} is {found}, but {KINDS[kind].name} was expected: "
                f"load the {KINDS[kind].files or 'matching'} here."
            )
        self.info = CheckpointInfo(
            path=name, layout=layout, kind=detected, prefix=prefix, architecture=architecture, problems=problems
        )
        if shard := _SHARD_NAME.search(name):  # first: a lone shard's other problems all follow from it
            self.info.problems.insert(
                0,
                f"This is shard {int(shard[1])} of {int(shard[2])}; "
                "give its folder or .index.json to load the whole model.",
            )
        self._entries = self._plan("" if detected == LORA else prefix)  # LoRA keys lose their prefix one by one
        self.info.dtypes = dict(Counter(str(e.dtype).removeprefix("torch.") for e in self._entries.values()))
        self.info.parameter_count = sum(
            math.prod(e.shape) for name, e in self._entries.items() if not name.endswith(".alpha")
        )
        if detected == LORA:
            self.info.lora = self._lora_summary()

    def _plan(self, prefix: str) -> dict[str, _Entry]:
        """Our name -> where it is in the file; drops fp8 bookkeeping tensors and records what the file is."""
        info, headers = self.info, self._reader.headers
        entries: dict[str, _Entry] = {}
        scales: dict[str, str] = {}
        outside = []
        for key, (shape, dtype) in headers.items():
            if key in (_FP8_MARKER, prefix + _FP8_MARKER):
                info.fp8 = "scaled_fp8"
            elif key == _TOKENIZER_TENSOR:
                info.notes.append("It carries its tokenizer (spiece_model).")
            elif not key.startswith(prefix):
                outside.append(key)
            else:
                name = KINDS[info.kind].rename(key[len(prefix):])
                layer, _, param = name.rpartition(".")
                if param in _WEIGHT_SCALES:
                    scales[layer] = key
                    info.fp8 = info.fp8 or ("scaled_fp8" if param == "scale_weight" else "comfy_quant")
                elif param == "comfy_quant":
                    info.fp8 = "comfy_quant"
                    self._check_quant_format(layer, key)
                elif param == "weight_scale_2":
                    info.problems.append(f"Layer {layer} is quantised as nvfp4, which this loader cannot read; "
                                         "use an fp8 or bf16 file.")
                elif param in _INPUT_SCALES:
                    pass
                elif name not in entries:
                    entries[name] = _Entry(key, shape, dtype)
                elif entries[name].shape != shape:  # equal duplicates (HF's tied embed_tokens) are dropped
                    info.problems.append(f"'{key}' and '{entries[name].key}' both map to {name} with different shapes.")
        for layer, scale_key in scales.items():
            weight = f"{layer}.weight"
            if weight in entries:
                entries[weight] = replace(entries[weight], scale_key=scale_key)
                scale_size, outputs = math.prod(headers[scale_key][0]), (entries[weight].shape or (1,))[0]
                if scale_size not in (1, outputs):
                    info.problems.append(f"The fp8 scale '{scale_key}' holds {scale_size} numbers for a weight of "
                                         f"{outputs} outputs; "
                                         "the file is damaged or was altered; download it again.")
            else:
                info.problems.append(f"The fp8 scale '{scale_key}' belongs to no weight in the file.")
        if info.fp8 is None and any(e.dtype in FP8_DTYPES for e in entries.values()):
            info.fp8 = "unscaled"
        if outside:
            info.notes.append(
                f"It holds {len(outside)} tensors outside '{prefix}' (e.g. {outside[0]}), which are ignored."
            )
        return entries

    def _check_quant_format(self, layer: str, key: str) -> None:
        try:
            quant_format = json.loads(self._reader.read(key).numpy().tobytes()).get("format")
        except (ValueError, AttributeError, TypeError, RuntimeError):  # not JSON, not an object, not a byte tensor
            quant_format = "unreadable"
        if quant_format not in _FP8_FORMATS:
            self.info.problems.append(
                f"Layer {layer} is quantised as {quant_format}, which this loader cannot read; use an fp8 or bf16 file."
            )

    def _lora_summary(self) -> LoraSummary:
        """What the LoRA adapts; a pair part that is not a matrix or an alpha that is not one finite number is a
        problem."""
        pairs = {name: e for name, e in self._entries.items() if name.endswith((".lora_A.weight", ".lora_B.weight"))}
        if bad := [e for e in pairs.values() if len(e.shape) != 2 or 0 in e.shape]:
            self.info.problems.append(f"Its '{bad[0].key}' has shape {list(bad[0].shape)}, "
                                      "not a LoRA matrix of rank 1 or more: "
                                      "the file is damaged or was altered; download it again.")
        modules = {
            name[: -len(".lora_A.weight")]: e
            for name, e in pairs.items() if name.endswith(".lora_A.weight") and e not in bad
        }
        alphas = set()
        for name, entry in self._entries.items():
            if name.endswith(".alpha"):
                alpha = self._reader.read(entry.key) if math.prod(entry.shape) == 1 else None
                if alpha is None or not torch.isfinite(alpha.double()).all():
                    found = "not one number" if alpha is None else alpha.item()
                    self.info.problems.append(f"Its '{entry.key}' is {found}, where a LoRA stores a single finite "
                                              "alpha: the file is damaged or was altered; download it again.")
                else:
                    alphas.add(alpha.item())
        return LoraSummary(
            format="peft" if self.info.prefix == PEFT_PREFIX else "comfy",
            ranks=sorted({e.shape[0] for e in modules.values()}),
            alphas=sorted(alphas),
            targets=sorted({re.sub(r"^blocks\.\d+\.", "", name) for name in modules}),
            modules=len(modules),
        )

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: entry.shape for name, entry in self._entries.items()}

    def raise_problems(self) -> None:
        if self.info.problems:
            raise CheckpointError(f"{self.info.path}: {self.info.problems[0]}")

    def read(
        self, name: str, dtype: torch.dtype | None = None, device: torch.device | str = "cpu", keep_fp8: bool = False,
        dequantize_to: torch.dtype = DEQUANTIZED_DTYPE,
    ) -> torch.Tensor:
        """One tensor under our name in `dtype` (None: as stored); fp8 weights are dequantised (weight x scale)
        to `dtype`, or to `dequantize_to` when no dtype is asked, unless `keep_fp8`."""
        entry = self._entries[name]
        tensor = self._reader.read(entry.key).to(device)
        if entry.dtype in FP8_DTYPES and keep_fp8:
            return tensor
        if entry.dtype in FP8_DTYPES or entry.scale_key is not None:
            scale = None if entry.scale_key is None else self._reader.read(entry.scale_key).to(device)
            return _dequantize(tensor, scale, dtype or dequantize_to)
        return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor

    def tensors(
        self, dtype: torch.dtype | None = None, device: torch.device | str = "cpu", keep_fp8: bool = False
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) one at a time; with `keep_fp8`, fp8 weights stay fp8 and `<layer>.scale_weight` follows
        each."""
        for name, entry in self._entries.items():
            yield name, self.read(name, dtype, device, keep_fp8)
            if keep_fp8 and entry.dtype in FP8_DTYPES and entry.scale_key is not None:
                layer = name.removesuffix(".weight")
                yield f"{layer}.scale_weight", self._reader.read(entry.scale_key).to(device).float()

    def embedded_tokenizer(self) -> torch.Tensor | None:
        """The serialised sentencepiece model some ComfyUI text-encoder files carry (uint8), if any."""
        return self._reader.read(_TOKENIZER_TENSOR) if _TOKENIZER_TENSOR in self._reader.headers else None


def detect(path: str | Path) -> CheckpointInfo:
    """What a file or folder is, from headers only; never raises for a bad file (see `problems`)."""
    path = Path(path)
    if path.is_dir() and is_wan_folder(path):
        return _detect_wan_folder(path)
    try:
        return Checkpoint(path).info
    except CheckpointError as error:
        name = path.name.lower()
        if name.endswith(PTH_SUFFIXES):
            layout = "pth"
        elif path.is_dir() or name.endswith(".index.json"):
            layout = "sharded-safetensors"
        else:
            layout = "safetensors" if name.endswith(SAFETENSORS_SUFFIXES) else "not a model file"
        return CheckpointInfo(path=str(path), layout=layout, problems=[str(error)])


def _detect_wan_folder(root: Path) -> CheckpointInfo:
    parts = find_wan_parts(root)
    missing = [f"Missing {piece}." for piece in parts.missing]
    info = CheckpointInfo(path=str(root), layout="wan-folder", problems=missing)
    pieces = {**parts.experts, "text_encoder": parts.text_encoder, "vae": parts.vae}
    expected = {"text_encoder": UMT5, "vae": WAN21_VAE}
    for part, path in pieces.items():
        if path is None:
            continue
        part_info = info.parts[part] = detect(path)
        info.parameter_count += part_info.parameter_count
        info.problems += [f"{part}: {problem}" for problem in part_info.problems]
        if part in expected and part_info.kind != expected[part]:
            found, wanted = KINDS[part_info.kind].name, KINDS[expected[part]].name
            info.problems.append(f"{part}: {path.name} is {found}, not {wanted}.")
    expert_kinds = {info.parts[name].kind for name in parts.experts}
    info.kind = expert_kinds.pop() if len(expert_kinds) == 1 else UNKNOWN
    return info

