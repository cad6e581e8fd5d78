"""Every checkpoint layout users have -> tensors under this engine's parameter names.

Layouts: Wan-AI download folders (sharded safetensors + index, `.pth` text encoder and VAE), ComfyUI
single files (keys with or without `model.diffusion_model.`, fp8 "scaled" in its old `scaled_fp8` /
`scale_weight` and new `comfy_quant` / `weight_scale` generations, Hugging Face T5 names for umT5) and
LoRA files (peft or ComfyUI). A file is recognised and checked against a model from its header alone;
tensors are then read one at a time (safetensors / mmap), so loading never holds a second full copy (older
non-zip .pth files cannot be mapped and are read whole).
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from .errors import CheckpointError
from .safe_files import check_file, read_bytes
from .wan.fp8 import FP8_DTYPES, load_fp8_weights
from .wan.tokenizer import SPIECE_FILE, WAN_TOKENIZER_DIR

log = logging.getLogger(__name__)

KIND_NAMES = {
    "wan22-t2v-dit": "a Wan2.2 text-to-video DiT expert (16 input channels)",
    "wan22-i2v-dit": "a Wan2.2 image-to-video / StoryMem DiT expert (36 input channels)",
    "umt5": "a umT5-xxl text encoder",
    "wan21-vae": "a Wan2.1 VAE",
    "lora": "a LoRA",
    "clip-vision": "an open_clip CLIP image encoder (keyframe selection)",
    "aesthetic-head": "an aesthetic head on CLIP embeddings (keyframe quality filter)",
    "unknown": "not a model this pack reads",
}
KIND_FILES = {
    "wan22-t2v-dit": "wan2.2_t2v_high_noise_14B / low_noise_14B file or the high_noise_model/ / low_noise_model/ folder of Wan2.2-T2V-A14B",
    "wan22-i2v-dit": "wan2.2_i2v_high_noise_14B / low_noise_14B file or the high_noise_model/ / low_noise_model/ folder of Wan2.2-I2V-A14B",
    "umt5": "umt5_xxl_fp16 / umt5_xxl_fp8_e4m3fn_scaled file or models_t5_umt5-xxl-enc-bf16.pth",
    "wan21-vae": "wan_2.1_vae.safetensors or Wan2.1_VAE.pth",
    "lora": "LoRA file (StoryMem's backbone_high_noise.pth / backbone_low_noise.pth or a ComfyUI LoRA)",
}

DIT_SHARD_PREFIX = "diffusion_pytorch_model"
EXPERT_FOLDERS = {"high_noise": "high_noise_model", "low_noise": "low_noise_model"}
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
VAE_FILE = "Wan2.1_VAE.pth"
PTH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
MODEL_SUFFIXES = SAFETENSORS_SUFFIXES + PTH_SUFFIXES
# ComfyUI's older model folder names, searched too (as ComfyUI does)
LEGACY_FOLDERS = {"text_encoders": ("clip",), "diffusion_models": ("unet",)}
DEQUANTIZED_DTYPE = torch.bfloat16  # fp8 weights become this when no dtype is asked for

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
_SHARD_NAME = re.compile(r"-(\d+)-of-(\d+)\.safetensors$")
_WEIGHT_SCALES = ("scale_weight", "weight_scale")  # old / new fp8 generation
_INPUT_SCALES = ("scale_input", "input_scale")  # activations are quantised dynamically here
_FP8_MARKER = "scaled_fp8"
_TOKENIZER_TENSOR = "spiece_model"
_FP8_FORMATS = ("float8_e4m3fn", "float8_e5m2")
_ZIP_MAGIC, _EMPTY_ZIP_MAGIC, _PICKLE_PROTOCOL = b"PK\x03\x04", b"PK\x05\x06", b"\x80"

# Hugging Face T5 layer names (ComfyUI text-encoder files) -> the Wan-AI umT5 names
_HF_T5_LAYERS = [
    (re.compile(r"^(?:shared|encoder\.embed_tokens)$"), "token_embedding"),
    (re.compile(r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.relative_attention_bias$"), r"blocks.\1.pos_embedding.embedding"),
    (re.compile(r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.([qkvo])$"), r"blocks.\1.attn.\2"),
    (re.compile(r"^encoder\.block\.(\d+)\.layer\.0\.layer_norm$"), r"blocks.\1.norm1"),
    # T5DenseGatedActDense: gelu(wi_0(x)) * wi_1(x), so wi_0 is the gate and wi_1 the plain branch
    (re.compile(r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_0$"), r"blocks.\1.ffn.gate.0"),
    (re.compile(r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_1$"), r"blocks.\1.ffn.fc1"),
    (re.compile(r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wo$"), r"blocks.\1.ffn.fc2"),
    (re.compile(r"^encoder\.block\.(\d+)\.layer\.1\.layer_norm$"), r"blocks.\1.norm2"),
    (re.compile(r"^encoder\.final_layer_norm$"), "norm"),
]

_T5_LAYOUTS = (  # (anchor, blocks prefix, layer-1 position bias that only umT5 has, embedding) for HF and Wan-AI names
    ("encoder.block.0.layer.0.SelfAttention.q.weight", "encoder.block.",
     "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight", "shared.weight"),
    ("blocks.0.attn.q.weight", "blocks.", "blocks.1.pos_embedding.embedding.weight", "token_embedding.weight"),
)

_LORA_PART = re.compile(r"^(?P<module>.+?)\.(?P<part>lora_A|lora_B|lora_down|lora_up)(?:\.\w+)?\.weight$")
_LORA_ALPHA = re.compile(r"^(?P<module>.+)\.alpha$")
_LORA_DIFF = re.compile(r"^(?P<module>.+)\.(?P<part>diff|diff_b)$")  # full weight / bias deltas (lightx2v-style LoRAs)
_LORA_PARTS = {"lora_A": "lora_A", "lora_down": "lora_A", "lora_B": "lora_B", "lora_up": "lora_B"}
PEFT_PREFIX = "base_model.model."
_LORA_PREFIXES = (PEFT_PREFIX, "model.diffusion_model.", "diffusion_model.", "lora_unet_")
# Wan module names with underscores, longest first, for `lora_unet_blocks_0_self_attn_q`-style keys
_UNDERSCORED = sorted(
    ("self_attn", "cross_attn", "norm_q", "norm_k", "norm_k_img", "k_img", "v_img", "img_emb",
     "patch_embedding", "text_embedding", "time_embedding", "time_projection"),
    key=len, reverse=True,
)


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
    kind: str = "unknown"
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


@dataclass
class WanFolder:
    """The pieces of a Wan-AI download folder; `missing` names what is not there."""

    root: Path
    experts: dict[str, Path]  # "high_noise" / "low_noise" (A14B) or "dit" (one model) -> folder of DiT shards
    text_encoder: Path | None
    vae: Path | None
    tokenizer: Path | None

    @property
    def missing(self) -> list[str]:
        missing = []
        if not self.experts:
            missing.append(f"the DiT ({'/ and '.join(EXPERT_FOLDERS.values())}/ with {DIT_SHARD_PREFIX}*.safetensors)")
        elif "dit" not in self.experts:
            missing += [f"{folder}/" for name, folder in EXPERT_FOLDERS.items() if name not in self.experts]
        if self.text_encoder is None:
            missing.append(f"{T5_FILE} (the umT5 text encoder)")
        if self.vae is None:
            missing.append(VAE_FILE)
        if self.tokenizer is None:
            missing.append(f"{WAN_TOKENIZER_DIR / SPIECE_FILE} (the tokenizer)")
        return missing


def _is_shard_folder(folder: Path) -> bool:
    return any(folder.glob("*.safetensors.index.json")) or any(folder.glob("*.safetensors"))


def _is_wan_folder(folder: Path) -> bool:
    markers = [folder / name for name in EXPERT_FOLDERS.values()] + [folder / T5_FILE, folder / VAE_FILE]
    return any(path.exists() for path in markers)


def find_wan_parts(root: str | Path) -> WanFolder:
    """Locate DiT shards (high/low-noise subfolders or top level), umT5 .pth, VAE .pth and tokenizer."""
    root = Path(root)
    experts = {name: root / folder for name, folder in EXPERT_FOLDERS.items() if (root / folder).is_dir()}
    experts = {name: folder for name, folder in experts.items() if _is_shard_folder(folder)}
    if not experts and any(root.glob(f"{DIT_SHARD_PREFIX}*.safetensors")):
        experts["dit"] = root
    tokenizer = root / WAN_TOKENIZER_DIR / SPIECE_FILE
    return WanFolder(
        root=root,
        experts=experts,
        text_encoder=root / T5_FILE if (root / T5_FILE).is_file() else None,
        vae=root / VAE_FILE if (root / VAE_FILE).is_file() else None,
        tokenizer=tokenizer if tokenizer.is_file() else None,
    )


# ---------------------------------------------------------------- reading tensors


class _SafetensorsFiles:
    """Tensors of one .safetensors file or of all shards of a model, read one at a time."""

    def __init__(self, files: list[Path]):
        self.headers: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        self._handles = {}
        for path in files:
            check_file(path, "model file", CheckpointError)
            try:
                handle = safe_open(str(path), framework="pt")
                names = list(handle.keys())
            except (SafetensorError, OSError) as error:
                raise CheckpointError(f"{path} is not a complete safetensors file ({error}); download it again.") from None
            for name in names:
                view = handle.get_slice(name)
                dtype = _SAFETENSORS_DTYPES.get(view.get_dtype())
                if dtype is None:
                    raise CheckpointError(
                        f"{path} stores '{name}' as {view.get_dtype()}, a type this loader cannot read; use a bf16, fp16 or fp8 file."
                    )
                self.headers[name] = (tuple(view.get_shape()), dtype)
                self._handles[name] = handle

    def read(self, name: str) -> torch.Tensor:
        try:
            return self._handles[name].get_tensor(name)
        except SafetensorError as error:
            raise CheckpointError(f"Tensor '{name}' cannot be read ({error}); download the file again.") from None


class _TensorDict:
    """Tensors already in memory: a state dict given by the caller or a .pth mapped with mmap."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        self._tensors = {name: t for name, t in tensors.items() if isinstance(t, torch.Tensor)}
        self.headers = {name: (tuple(t.shape), t.dtype) for name, t in self._tensors.items()}

    def read(self, name: str) -> torch.Tensor:
        return self._tensors[name]


def _pth_format(path: Path) -> str:
    """'zip' (torch.save since 1.6), 'pickle' (the older single stream), or what else the file holds."""
    with open(path, "rb") as handle:
        start = handle.read(4)
    if start in (_ZIP_MAGIC, _EMPTY_ZIP_MAGIC):
        return "zip"
    if start[:1] == _PICKLE_PROTOCOL:
        return "pickle"
    if not start:
        return "it is empty"
    if not start.strip(b"\0"):
        return "it starts with zero bytes"
    return "it holds text" if all(32 <= byte < 127 or byte in b"\t\n\r" for byte in start) else "it holds unknown data"


def read_pth(path: Path) -> Mapping[str, torch.Tensor]:
    """A .pth / .bin / .ckpt state dict, tensors only: a file holding other Python objects is refused, never unpickled."""
    check_file(path, "model file", CheckpointError)
    file_format = _pth_format(path)
    if file_format not in ("zip", "pickle"):
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint ({file_format}, not a zip archive or a pickle stream); download it again."
        )
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing or reading: our sentence says it
            warnings.simplefilter("ignore")
            # mmap needs torch's zip format; older .pth files (one pickle stream) load whole, just as safely
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=file_format == "zip")
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path} contains Python objects besides tensors and was refused, since loading it could run code; "
            "use a .safetensors copy or a file from a trusted source."
        ) from None
    except Exception as error:  # a damaged file fails anywhere in torch's readers, with any exception type
        reason = re.split(r"(?<=[.:;])\s", str(error).strip())[0].rstrip(".:;")[:120] or type(error).__name__
        damage = "a cut-off or damaged zip archive" if file_format == "zip" else "a damaged pickle stream"
        raise CheckpointError(f"{path} is {damage}, not a readable PyTorch checkpoint ({reason}); download it again.") from None
    if not isinstance(state, Mapping) or not any(isinstance(t, torch.Tensor) for t in state.values()):
        raise CheckpointError(f"{path} holds no flat name -> tensor state dict; save the model's state_dict() instead.")
    return state


def _shard_files(folder_or_index: Path) -> list[Path]:
    """The shard files of a sharded model, every one present, from its index (or all .safetensors without one)."""
    if folder_or_index.is_dir():
        indexes = sorted(folder_or_index.glob("*.safetensors.index.json"))
        if not indexes:
            return sorted(folder_or_index.glob("*.safetensors"))
        folder_or_index = indexes[0]
    try:
        weight_map = json.loads(read_bytes(folder_or_index, "shard index", CheckpointError))["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{folder_or_index} is not a shard index with a weight_map ({error}); download it again.") from None
    shard_names = set(weight_map.values()) if isinstance(weight_map, dict) else {None}
    if outside := [name for name in shard_names if not isinstance(name, str) or Path(name).name != name or name in ("", ".", "..")]:
        raise CheckpointError(
            f"{folder_or_index} names the shard {outside[0]!r}, which is not a file beside it: download the index again."
        )
    files = [folder_or_index.parent / name for name in sorted(shard_names)]
    absent = [f.name for f in files if not f.is_file()]
    if absent:
        raise CheckpointError(
            f"{folder_or_index} lists shard(s) {', '.join(absent)} that are missing: download them into {folder_or_index.parent}."
        )
    return files


def _open_source(path: Path, kind: str | None) -> tuple[str, Path, _SafetensorsFiles | _TensorDict]:
    """(layout, the path actually opened, reader); a Wan-AI folder is narrowed to the part `kind` asks for."""
    check_file(path, "model file", CheckpointError)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: check the path and that the download finished.")
    if path.is_dir():
        if _is_wan_folder(path):
            return _open_source(_wan_part(path, kind), kind)
        if not _is_shard_folder(path):
            raise CheckpointError(f"{path} holds no .safetensors shards or index: give a model file or a Wan-AI model folder.")
        return "sharded-safetensors", path, _SafetensorsFiles(_shard_files(path))
    name = path.name.lower()
    if name.endswith(".safetensors.index.json"):
        return "sharded-safetensors", path, _SafetensorsFiles(_shard_files(path))
    if name.endswith(SAFETENSORS_SUFFIXES):
        return "safetensors", path, _SafetensorsFiles([path])
    if name.endswith(PTH_SUFFIXES):
        return "pth", path, _TensorDict(read_pth(path))
    raise CheckpointError(f"{path} is neither .safetensors nor .pth: give a model file, a shard index or a model folder.")


def _wan_part(root: Path, kind: str | None) -> Path:
    parts = find_wan_parts(root)
    wanted = {"umt5": parts.text_encoder, "wan21-vae": parts.vae}
    if kind in wanted:
        if wanted[kind] is None:
            raise CheckpointError(f"{root} has no {T5_FILE if kind == 'umt5' else VAE_FILE}: download it into that folder.")
        return wanted[kind]
    if len(parts.experts) == 1:
        return next(iter(parts.experts.values()))
    if not parts.experts:
        raise CheckpointError(f"{root} has no DiT shards: download {', '.join(EXPERT_FOLDERS.values())} into it.")
    high, low = (root / EXPERT_FOLDERS[name] for name in ("high_noise", "low_noise"))
    raise CheckpointError(f"{root} holds two DiT experts: give {high} or {low}.")


# ---------------------------------------------------------------- recognising and renaming


def _find_prefix(names, anchor: str) -> str | None:
    """The shortest key prefix (ending at a dot) under which `anchor` occurs, or None."""
    prefixes = [name[: -len(anchor)] for name in names if name == anchor or name.endswith("." + anchor)]
    return min(prefixes, key=len) if prefixes else None


def count_blocks(names: Iterable[str], blocks_prefix: str = "blocks.") -> int:
    """Layers of a model from its tensor names (`blocks.0.`, `blocks.1.`, ...)."""
    return len({name[len(blocks_prefix):].split(".")[0] for name in names if name.startswith(blocks_prefix)})


def _natural_key(prefix: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", prefix)]


def linear_chain(shapes: Mapping[str, tuple[int, ...]]) -> tuple[list[str], str | None]:
    """The layer prefixes of a chain of linear layers, in order (`weight`, or `layers.0.weight`, `layers.2.weight`,
    ...; dropouts hold no tensors), and what keeps it from being an aesthetic head (None when nothing)."""
    prefixes = sorted((name[: -len("weight")] for name in shapes if name.endswith("weight")), key=_natural_key)
    out_features = None
    for prefix in prefixes:
        shape = tuple(shapes[prefix + "weight"])
        if len(shape) != 2 or out_features not in (None, shape[1]):
            return prefixes, f"is not a chain of linear layers (at '{prefix}weight' {shape})"
        out_features = shape[0]
    if out_features != 1:
        return prefixes, "does not end in a single score output"
    return prefixes, None


def anchor_shape(shapes: Mapping[str, tuple[int, ...]], name: str, rank: int, source: str = "It") -> tuple[int, ...]:
    """The shape of a tensor the model's sizes are read from, once it has `rank` sizes and none is zero."""
    if name not in shapes:
        raise CheckpointError(f"{source} lacks '{name}', which gives the model's size: the file is incomplete; download it again.")
    shape = tuple(shapes[name])
    if len(shape) != rank or 0 in shape:
        raise CheckpointError(f"{source} has '{name}' of shape {list(shape)}, where a model has {rank} sizes above 0: "
                              "the file is damaged or was altered; download it again.")
    return shape


def _lora_prefix(module: str) -> str:
    return next((p for p in _LORA_PREFIXES if module.startswith(p)), "")


def _classify(shapes: Mapping[str, tuple[int, ...]]) -> tuple[str, str, dict[str, int], list[str]]:
    """(kind, key prefix, architecture sizes, problems) from tensor names and shapes alone."""
    try:
        return _classify_by_anchors(shapes)
    except CheckpointError as error:  # an anchor tensor of the wrong rank or with a zero size
        return "unknown", "", {}, [str(error)]


def _classify_by_anchors(shapes: Mapping[str, tuple[int, ...]]) -> tuple[str, str, dict[str, int], list[str]]:
    lora_keys = [m["module"] for m in map(_LORA_PART.match, shapes) if m]
    if lora_keys:
        return "lora", _lora_prefix(lora_keys[0]), {}, []
    if (prefix := _find_prefix(shapes, "head.modulation")) is not None:
        return _classify_dit(shapes, prefix)
    if (prefix := _find_prefix(shapes, "decoder.middle.0.residual.0.gamma")) is not None:
        z_dim = anchor_shape(shapes, prefix + "conv1.weight", 5)[0] // 2
        if z_dim == 16:
            return "wan21-vae", prefix, {"z_dim": z_dim}, []
        return "unknown", prefix, {"z_dim": z_dim}, [
            f"This is a Wan VAE with {z_dim} latent channels (the Wan2.2 TI2V-5B VAE has 48); the A14B experts need the Wan2.1 VAE (16)."
        ]
    for anchor, blocks, per_layer_bias, embedding in _T5_LAYOUTS:
        if (prefix := _find_prefix(shapes, anchor)) is not None:
            layers = count_blocks(shapes, prefix + blocks)
            architecture = {"dim": anchor_shape(shapes, prefix + anchor, 2)[1], "layers": layers,
                            "vocab": anchor_shape(shapes, prefix + embedding, 2)[0] if prefix + embedding in shapes else 0}
            if layers > 1 and prefix + per_layer_bias not in shapes:
                return "unknown", prefix, architecture, [
                    "This T5 encoder shares one position bias across layers (T5 v1.1, e.g. t5xxl for Flux), so it is not "
                    "umT5-xxl; use umt5_xxl_fp16 / umt5_xxl_fp8_e4m3fn_scaled."
                ]
            return "umt5", prefix, architecture, []
    if (prefix := _find_prefix(shapes, "class_embedding")) is not None and len(shapes.get(prefix + "proj", ())) == 2:
        width, embed_dim = shapes[prefix + "proj"]
        layers = count_blocks(shapes, prefix + "transformer.resblocks.")
        architecture = {"width": width, "layers": layers, "embed_dim": embed_dim}
        empty = [f"its {name} is 0" for name, size in architecture.items() if size == 0]
        return "clip-vision", prefix, architecture, [f"This image encoder cannot work: {', '.join(empty)}; download it again."] if empty else []
    if _find_prefix(shapes, "vision_model.embeddings.class_embedding") is not None:
        return "unknown", "", {}, [
            "This is a Hugging Face CLIP vision model, but keyframe selection reads open_clip files: use "
            "open_clip_model.safetensors of timm/vit_base_patch32_clip_224.openai."
        ]
    if all(name.endswith(("weight", "bias")) for name in shapes):
        prefixes, problem = linear_chain(shapes)
        if prefixes and problem is None:
            zero = [prefix + "weight" for prefix in prefixes if 0 in shapes[prefix + "weight"]]
            problems = [f"This aesthetic head cannot work: layer '{zero[0]}' has width 0; download it again."] if zero else []
            return "aesthetic-head", "", {"embed_dim": shapes[prefixes[0] + "weight"][1], "layers": len(prefixes)}, problems
    first = ", ".join(list(shapes)[:3]) or "no tensors"
    return "unknown", "", {}, [
        f"It has none of the tensors of a Wan2.2 DiT, umT5 encoder, Wan2.1 VAE, LoRA, open_clip image encoder or aesthetic head "
        f"(first names: {first})."
    ]


def _classify_dit(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> tuple[str, str, dict[str, int], list[str]]:
    in_dim = anchor_shape(shapes, prefix + "patch_embedding.weight", 5)[1]
    architecture = {"dim": anchor_shape(shapes, prefix + "head.modulation", 3)[-1], "in_dim": in_dim, "layers": count_blocks(shapes, prefix + "blocks.")}
    kind = {16: "wan22-t2v-dit", 36: "wan22-i2v-dit"}.get(in_dim, "unknown")
    problems = []
    if kind == "unknown":
        problems.append(
            f"This Wan DiT takes {in_dim} input channels (Wan2.2 TI2V-5B takes 48); StoryMem needs a Wan2.2 A14B T2V (16) or I2V (36) expert."
        )
    if any(name.startswith(prefix + "img_emb.") for name in shapes):
        problems.append("This is a Wan2.1 I2V model (it has a CLIP image embedding); StoryMem needs a Wan2.2 I2V-A14B expert.")
    return kind, prefix, architecture, problems


def _lora_name(key: str) -> str:
    """peft / ComfyUI / kohya LoRA key -> `<module>.lora_A.weight`, `<module>.lora_B.weight`, `<module>.alpha`,
    or a weight / bias delta `<module>.diff` / `<module>.diff_b`."""
    if match := _LORA_PART.match(key):
        suffix = f"{_LORA_PARTS[match['part']]}.weight"
    elif match := _LORA_ALPHA.match(key):
        suffix = "alpha"
    elif match := _LORA_DIFF.match(key):
        suffix = match["part"]
    else:
        return key  # no LoRA part: reported when the LoRA is applied
    module = match["module"]
    prefix = _lora_prefix(module)
    module = module[len(prefix):]
    if prefix == "lora_unet_":
        module = module.replace("_", ".")
        for name in _UNDERSCORED:
            module = module.replace(name.replace("_", "."), name)
    return f"{module}.{suffix}"


def _rename(name: str, kind: str) -> str:
    if kind == "lora":
        return _lora_name(name)
    if kind == "umt5":
        layer, dot, param = name.rpartition(".")
        for pattern, replacement in _HF_T5_LAYERS:
            if pattern.match(layer):
                return pattern.sub(replacement, layer) + dot + param
    return name


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
            layout, name, self._reader = "state-dict", "the given state dict", _TensorDict(source)
        else:
            layout, path, self._reader = _open_source(Path(source), kind)
            name = str(path)
        shapes = {key: shape for key, (shape, _) in self._reader.headers.items()}
        detected, prefix, architecture, problems = _classify(shapes)
        if kind is not None and detected != kind:
            found = f"{KIND_NAMES[detected]} ({problems[0]})" if problems and detected == "unknown" else KIND_NAMES[detected]
            raise CheckpointError(
                f"{name} is {found}, but {KIND_NAMES[kind]} was expected: load the {KIND_FILES.get(kind, 'matching')} here."
            )
        self.info = CheckpointInfo(path=name, layout=layout, kind=detected, prefix=prefix, architecture=architecture, problems=problems)
        if shard := _SHARD_NAME.search(name):  # first: a lone shard's other problems all follow from it
            self.info.problems.insert(
                0,
                f"This is shard {int(shard[1])} of {int(shard[2])}; give its folder or .index.json to load the whole model.",
            )
        self._entries = self._plan("" if detected == "lora" else prefix)  # LoRA keys lose their prefix one by one
        self.info.dtypes = dict(Counter(str(e.dtype).removeprefix("torch.") for e in self._entries.values()))
        self.info.parameter_count = sum(math.prod(e.shape) for name, e in self._entries.items() if not name.endswith(".alpha"))
        if detected == "lora":
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
                name = _rename(key[len(prefix):], info.kind)
                layer, _, param = name.rpartition(".")
                if param in _WEIGHT_SCALES:
                    scales[layer] = key
                    info.fp8 = info.fp8 or ("scaled_fp8" if param == "scale_weight" else "comfy_quant")
                elif param == "comfy_quant":
                    info.fp8 = "comfy_quant"
                    self._check_quant_format(layer, key)
                elif param == "weight_scale_2":
                    info.problems.append(f"Layer {layer} is quantised as nvfp4, which this loader cannot read; use an fp8 or bf16 file.")
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
                    info.problems.append(f"The fp8 scale '{scale_key}' holds {scale_size} numbers for a weight of {outputs} outputs; "
                                         "the file is damaged or was altered; download it again.")
            else:
                info.problems.append(f"The fp8 scale '{scale_key}' belongs to no weight in the file.")
        if info.fp8 is None and any(e.dtype in FP8_DTYPES for e in entries.values()):
            info.fp8 = "unscaled"
        if outside:
            info.notes.append(f"It holds {len(outside)} tensors outside '{prefix}' (e.g. {outside[0]}), which are ignored.")
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
        """What the LoRA adapts; a pair part that is not a matrix or an alpha that is not one finite number is a problem."""
        pairs = {name: e for name, e in self._entries.items() if name.endswith((".lora_A.weight", ".lora_B.weight"))}
        if bad := [e for e in pairs.values() if len(e.shape) != 2 or 0 in e.shape]:
            self.info.problems.append(f"Its '{bad[0].key}' has shape {list(bad[0].shape)}, not a LoRA matrix of rank 1 or more: "
                                      "the file is damaged or was altered; download it again.")
        modules = {name[: -len(".lora_A.weight")]: e for name, e in pairs.items() if name.endswith(".lora_A.weight") and e not in bad}
        alphas = set()
        for name, entry in self._entries.items():
            if name.endswith(".alpha"):
                alpha = self._reader.read(entry.key) if math.prod(entry.shape) == 1 else None
                if alpha is None or not torch.isfinite(alpha.double()).all():
                    self.info.problems.append(f"Its '{entry.key}' is {'not one number' if alpha is None else alpha.item()}, "
                                              "where a LoRA stores a single finite alpha: the file is damaged or was altered; download it again.")
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
        """(name, tensor) one at a time; with `keep_fp8`, fp8 weights stay fp8 and `<layer>.scale_weight` follows each."""
        for name, entry in self._entries.items():
            yield name, self.read(name, dtype, device, keep_fp8)
            if keep_fp8 and entry.dtype in FP8_DTYPES and entry.scale_key is not None:
                layer = name.removesuffix(".weight")
                yield f"{layer}.scale_weight", self._reader.read(entry.scale_key).to(device).float()

    def embedded_tokenizer(self) -> torch.Tensor | None:
        """The serialised sentencepiece model some ComfyUI text-encoder files carry (uint8), if any."""
        return self._reader.read(_TOKENIZER_TENSOR) if _TOKENIZER_TENSOR in self._reader.headers else None


# ---------------------------------------------------------------- public entry points


def detect(path: str | Path) -> CheckpointInfo:
    """What a file or folder is, from headers only; never raises for a bad file (see `problems`)."""
    path = Path(path)
    if path.is_dir() and _is_wan_folder(path):
        return _detect_wan_folder(path)
    try:
        return Checkpoint(path).info
    except CheckpointError as error:
        layout = "pth" if path.name.lower().endswith(PTH_SUFFIXES) else "sharded-safetensors" if path.is_dir() else "safetensors"
        return CheckpointInfo(path=str(path), layout=layout, problems=[str(error)])


def _detect_wan_folder(root: Path) -> CheckpointInfo:
    parts = find_wan_parts(root)
    info = CheckpointInfo(path=str(root), layout="wan-folder", problems=[f"Missing {piece}." for piece in parts.missing])
    pieces = {**parts.experts, "text_encoder": parts.text_encoder, "vae": parts.vae}
    expected = {"text_encoder": "umt5", "vae": "wan21-vae"}
    for part, path in pieces.items():
        if path is None:
            continue
        part_info = info.parts[part] = detect(path)
        info.parameter_count += part_info.parameter_count
        info.problems += [f"{part}: {problem}" for problem in part_info.problems]
        if part in expected and part_info.kind != expected[part]:
            info.problems.append(f"{part}: {path.name} is {KIND_NAMES[part_info.kind]}, not {KIND_NAMES[expected[part]]}.")
    expert_kinds = {info.parts[name].kind for name in parts.experts}
    info.kind = expert_kinds.pop() if len(expert_kinds) == 1 else "unknown"
    return info


def load_state_dict(
    path: str | Path | Mapping[str, torch.Tensor],
    kind: str | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    keep_fp8: bool = False,
) -> dict[str, torch.Tensor]:
    """All tensors under our names: prefix stripped, HF-T5 renamed, fp8 dequantised to `dtype` (bf16 when None).

    `keep_fp8=True` keeps fp8 weights with `<layer>.scale_weight` beside them (for `wan.fp8.load_fp8_weights`).
    """
    checkpoint = Checkpoint(path, kind)
    checkpoint.raise_problems()
    return dict(checkpoint.tensors(dtype, device, keep_fp8))


def first_names(names: list[str], limit: int = 5) -> str:
    """'a, b, c and 4 more': enough names for an error message to be acted on."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def fit_faults(expected: Mapping[str, tuple[int, ...]], given: Mapping[str, tuple[int, ...]], strict: bool = True) -> list[str]:
    """What keeps a file's tensors (`given`) from fitting a model's (`expected`): missing, unexpected, wrong shape."""
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    shared = sorted(expected.keys() & given.keys())
    wrong = [f"{n} (file {list(given[n])}, model {list(expected[n])})" for n in shared if given[n] != expected[n]]
    faults = []
    if missing and strict:
        faults.append(f"missing {first_names(missing)}")
    if unexpected and strict:
        faults.append(f"unexpected {first_names(unexpected)}")
    if wrong:
        faults.append(f"wrong shape {first_names(wrong, 3)}")
    return faults


def model_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """A module's tensor names and shapes as a checkpoint must hold them (fp8 scales travel beside their weights)."""
    return {name: tuple(t.shape) for name, t in module.state_dict().items() if not name.endswith(".scale_weight")}


def _check_fit(expected: dict[str, tuple[int, ...]], given: dict[str, tuple[int, ...]], source: str, strict: bool) -> None:
    """Raise before anything is assigned when the file's names or shapes do not fit the model."""
    missing = expected.keys() - given.keys()
    unexpected = given.keys() - expected.keys()
    if faults := fit_faults(expected, given, strict):
        raise CheckpointError(
            f"{source} does not fit this model: {'; '.join(faults)}; load the checkpoint made for this model size and version."
        )
    if missing or unexpected:
        log.warning("%s: %d model tensors not in the file, %d file tensors not in the model", source, len(missing), len(unexpected))


def _assign(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Copy into the existing tensor, or take the tensor as it is where the model is on the meta device."""
    owner_name, _, attr = name.rpartition(".")
    owner = module.get_submodule(owner_name)
    target = getattr(owner, attr)
    if not target.is_meta:
        with torch.no_grad():
            target.copy_(tensor)
    elif isinstance(target, nn.Parameter):
        setattr(owner, attr, nn.Parameter(tensor, requires_grad=target.requires_grad))
    else:
        setattr(owner, attr, tensor)


def load_model(
    module: nn.Module,
    source: str | Path | Mapping[str, torch.Tensor],
    strict: bool = True,
    keep_fp8: bool = False,
    device: torch.device | str = "cpu",
    dequantize_to: torch.dtype = DEQUANTIZED_DTYPE,
) -> nn.Module:
    """Load weights into `module`, checking kind, names and shapes from the header before assigning anything.

    Tensors stream one at a time into the module's own tensors (cast to their dtype); a module built on the
    meta device takes the file's tensors on `device` instead, fp8 weights dequantised to `dequantize_to` (one
    rounding of weight x scale into the dtype the caller will run in). `keep_fp8=True` turns layers with fp8
    weights into Fp8Linear layers.
    """
    expected = model_shapes(module)
    kind = _classify(expected)[0]
    checkpoint = Checkpoint(source, None if kind == "unknown" else kind)
    checkpoint.raise_problems()
    _check_fit(expected, checkpoint.shapes(), checkpoint.info.path, strict)
    if keep_fp8:
        on_meta = any(t.is_meta for t in module.state_dict().values())
        return load_fp8_weights(module, dict(checkpoint.tensors(device=device, keep_fp8=True)), strict=strict, assign=on_meta)
    targets = module.state_dict(keep_vars=True)
    for name in checkpoint.shapes().keys() & targets.keys():
        target = targets[name]
        tensor = checkpoint.read(name, dtype=None if target.is_meta else target.dtype, device=device if target.is_meta else target.device,
                                 dequantize_to=dequantize_to)
        _assign(module, name, tensor)
    return module


# ---------------------------------------------------------------- inspect


def _count(n: int) -> str:
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


def describe(info: CheckpointInfo, indent: str = "") -> str:
    """Human-readable lines about one checkpoint, as `inspect` prints them."""
    layout = info.layout + (f" (keys under '{info.prefix}')" if info.prefix else "")
    sizes = ", ".join(f"{k} {v}" for k, v in info.architecture.items())
    kind = f"{info.kind}: {KIND_NAMES[info.kind]}" + (f"; {sizes}" if sizes else "")
    lines = [f"{indent}{info.path}", f"{indent}  layout      {layout}", f"{indent}  kind        {kind}"]
    if info.dtypes:
        dtypes = ", ".join(f"{name} x{count}" for name, count in sorted(info.dtypes.items(), key=lambda item: -item[1]))
        lines.append(f"{indent}  dtype       {dtypes}" + (f" (fp8: {info.fp8})" if info.fp8 else ""))
    if info.parameter_count:
        lines.append(f"{indent}  parameters  {_count(info.parameter_count)}")
    if info.lora is not None:
        lora = info.lora
        default = "StoryMem's alpha = rank with rsLoRA" if lora.format == "peft" else "scale 1"
        alpha = ", ".join(f"{a:g}" for a in lora.alphas) if lora.alphas else f"not stored ({default})"
        lines.append(f"{indent}  lora        {lora.format}, rank {', '.join(map(str, lora.ranks))}, alpha {alpha}, {lora.modules} modules")
        lines.append(f"{indent}  targets     {', '.join(lora.targets)}")
    lines += [f"{indent}  note        {note}" for note in info.notes]
    lines += [f"{indent}  problem     {problem}" for problem in info.problems]
    for part, part_info in info.parts.items():
        lines.append(f"{indent}  [{part}]")
        lines.append(describe(part_info, indent + "    "))
    lines.append(f"{indent}  -> {'usable' if info.usable else 'NOT usable'}")
    return "\n".join(lines)
