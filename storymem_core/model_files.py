"""Model files -> ready modules, with the model size read from the file.

Real files give their sizes through tensor shapes (Wan's head width is 128 in every released model,
which fixes the head count). A file may also carry its config as JSON in the safetensors metadata key
`storymem_config`, which wins: tiny test models use it, and so can any non-standard size.
"""

from __future__ import annotations

import atexit
import json
import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from safetensors import SafetensorError, safe_open

from .choices import WEIGHT_DTYPE_NAMES
from .lora import apply_loras, load_lora
from .offload import BlockSwapDiT, resolve_offload
from .checkpoints import (
    KIND_NAMES, SAFETENSORS_SUFFIXES, Checkpoint, CheckpointInfo, anchor_shape, count_blocks, describe, detect, fit_faults, load_model,
    model_shapes,
)
from .errors import CheckpointError
from .keyframes import OpenClipEncoder, OpenClipTextEncoder, vision_tower
from .model_sizes import checked_sizes
from .safe_files import check_file
from .wan.attention import backend_name
from .wan.dit import DiTConfig, WanDiT
from .wan.t5 import T5Config, UMT5Encoder
from .wan.text_encoder import TextEncoder
from .wan.tokenizer import UMT5Tokenizer
from .wan.vae import VAEConfig, WanVAE

log = logging.getLogger(__name__)

CONFIG_KEY = "storymem_config"
DTYPES = dict(zip(WEIGHT_DTYPE_NAMES, (torch.bfloat16, torch.float16, torch.float32)))
WAN_HEAD_DIM = 128
DIT_KINDS = ("wan22-t2v-dit", "wan22-i2v-dit")


def stored_config(path: str | Path, kind: str) -> dict | None:
    """The JSON config in a safetensors file's metadata, its sizes checked for a model of `kind` (a checkpoint kind),
    or None (no key, or a .pth file)."""
    path = check_file(path, "model file", CheckpointError)
    if not path.name.lower().endswith(SAFETENSORS_SUFFIXES):
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} is not a complete safetensors file ({error}); download it again.") from None
    if CONFIG_KEY not in metadata:
        return None
    try:
        config = json.loads(metadata[CONFIG_KEY])
    except (ValueError, RecursionError):
        raise CheckpointError(f"{path} has an unreadable '{CONFIG_KEY}' metadata entry: rewrite the file with valid JSON there.") from None
    return checked_sizes(config, "dit" if kind in DIT_KINDS else kind, str(path))


def _opened(path: Path, kinds: tuple[str, ...], expected: str) -> Checkpoint:
    checkpoint = Checkpoint(path)
    if checkpoint.info.kind == "unknown" and checkpoint.info.problems:
        checkpoint.raise_problems()  # what it is not says more than "not a model this pack reads"
    if checkpoint.info.kind not in kinds:
        raise CheckpointError(f"{path.name} is {KIND_NAMES[checkpoint.info.kind]}, not {expected}: pick the right file in this loader.")
    checkpoint.raise_problems()
    return checkpoint


def dit_config_from_shapes(shapes: Mapping[str, tuple[int, ...]], source: str, num_heads: int | None = None) -> DiTConfig:
    """A Wan DiT's sizes from its tensor shapes (our names); the head count follows from Wan's 128-wide heads.

    `num_heads` serves widths that are not whole 128-wide heads where only the shapes matter (checks, not runs).
    """
    dim, in_dim, *patch = anchor_shape(shapes, "patch_embedding.weight", 5, source)
    if dim % WAN_HEAD_DIM and num_heads is None:
        raise CheckpointError(
            f"{source} has width {dim}, which is not a whole number of {WAN_HEAD_DIM}-wide heads: store its config "
            f"under the safetensors metadata key '{CONFIG_KEY}'."
        )
    config = DiTConfig(
        model_type="i2v" if in_dim == 36 else "t2v",
        patch_size=tuple(patch),
        in_dim=in_dim,
        dim=dim,
        ffn_dim=anchor_shape(shapes, "blocks.0.ffn.0.weight", 2, source)[0],
        freq_dim=anchor_shape(shapes, "time_embedding.0.weight", 2, source)[1],
        text_dim=anchor_shape(shapes, "text_embedding.0.weight", 2, source)[1],
        out_dim=anchor_shape(shapes, "head.head.weight", 2, source)[0] // (patch[0] * patch[1] * patch[2]),
        num_heads=num_heads if dim % WAN_HEAD_DIM else dim // WAN_HEAD_DIM,
        num_layers=count_blocks(shapes),
        qk_norm="blocks.0.self_attn.norm_q.weight" in shapes,
        cross_attn_norm="blocks.0.norm3.weight" in shapes,
    )
    checked_sizes(asdict(config), "dit", source)
    return config


def t5_config_from_shapes(shapes: Mapping[str, tuple[int, ...]], source: str = "It") -> T5Config:
    """umT5 sizes from tensor shapes: each layer's position bias is [buckets, heads]."""
    vocab, dim = anchor_shape(shapes, "token_embedding.weight", 2, source)
    buckets, heads = anchor_shape(shapes, "blocks.0.pos_embedding.embedding.weight", 2, source)
    config = T5Config(
        vocab=vocab, dim=dim, dim_attn=anchor_shape(shapes, "blocks.0.attn.q.weight", 2, source)[0],
        dim_ffn=anchor_shape(shapes, "blocks.0.ffn.fc1.weight", 2, source)[0], num_heads=heads, num_layers=count_blocks(shapes),
        num_buckets=buckets,
    )
    checked_sizes(asdict(config), "umt5", source)
    return config


def dit_config(path: str | Path) -> tuple[DiTConfig, Checkpoint]:
    """A Wan2.2 expert's config from its metadata or, failing that, its tensor shapes."""
    path = Path(path)
    checkpoint = _opened(path, DIT_KINDS, "a Wan2.2 A14B DiT expert (wan2.2_t2v_* / wan2.2_i2v_*)")
    stored = stored_config(path, checkpoint.info.kind)
    config = DiTConfig.from_dict(stored) if stored is not None else dit_config_from_shapes(checkpoint.shapes(), path.name)
    return config, checkpoint


def auto_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def expert_weights(choice: str, device: torch.device) -> tuple[torch.dtype, bool | None]:
    """(dtype, keep_fp8) for `load_dit` from a user's choice in WEIGHT_CHOICES.

    auto: fp8 files stay fp8 on a GPU (fp8 matmuls), everything else runs in bf16 (fp32 on the CPU).
    """
    keep_fp8 = {"fp8": True, "auto": None if device.type == "cuda" else False}.get(choice, False)
    return DTYPES.get(choice, auto_dtype(device)), keep_fp8


def load_dit(path: str | Path, dtype: torch.dtype, keep_fp8: bool | None = False) -> WanDiT:
    """Build the expert at the file's size on the meta device and take the file's tensors (no second copy).

    `keep_fp8`: fp8 layers stay fp8 (True), are dequantised to `dtype` (False), or stay fp8 when the file has them (None).
    """
    config, checkpoint = dit_config(path)
    if keep_fp8 is None:
        keep_fp8 = checkpoint.info.fp8 is not None
    elif keep_fp8 and checkpoint.info.fp8 is None:
        raise CheckpointError(f"{Path(path).name} holds no fp8 weights to keep: choose bf16 (or auto) as the weight dtype.")
    with torch.device("meta"):
        dit = WanDiT(config)
    load_model(dit, path, keep_fp8=keep_fp8, dequantize_to=dtype)
    return dit.cast_weights(torch.bfloat16 if keep_fp8 else dtype).eval().requires_grad_(False)


def described_model(kind: str, path: str | Path, shapes: Mapping[str, tuple[int, ...]]) -> nn.Module | None:
    """The model a DiT, umT5 or VAE file describes (its stored config, else its shapes), on the meta device.

    None for other kinds, and for an image encoder without a stored config (its open_clip name is the user's choice).
    The VAE's width is read from the file, the rest is Wan2.1's. Every size is checked before anything is built.
    """
    stored, name = stored_config(path, kind), Path(path).name
    if kind in DIT_KINDS:
        config = DiTConfig.from_dict(stored) if stored is not None else dit_config_from_shapes(shapes, name, num_heads=1)
        return _on_meta(WanDiT, config)
    if kind == "umt5":
        return _on_meta(UMT5Encoder, T5Config.from_dict(stored) if stored is not None else t5_config_from_shapes(shapes, name))
    if kind == "wan21-vae":
        if stored is None:
            stored = checked_sizes({"dim": anchor_shape(shapes, "encoder.conv1.weight", 5, name)[0]}, kind, name)
        return _on_meta(WanVAE, VAEConfig.from_dict(stored))
    if kind == "clip-vision" and stored is not None:
        return vision_tower(stored, "meta")
    return None


class ExpertLoras(NamedTuple):
    """A LoRA pair, one file per expert; `strict` False skips (and logs) entries matching no layer."""

    high: Path
    low: Path
    strict: bool = True


def _on_meta(model: type[nn.Module], config) -> nn.Module:
    with torch.device("meta"):
        return model(config)


def load_expert_pair(
    high: Path, low: Path, weights: str, offload: str, compile_blocks: bool, device: torch.device, free_bytes: int, tokens: int,
    loras: Sequence[ExpertLoras] = (),
) -> tuple[nn.Module, nn.Module, str]:
    """(high, low, placement): a Wan2.2 expert pair as a story runs it, for the nodes and the CLI alike.

    Dtype from `weights` (WEIGHT_CHOICES); placement from `offload` ('auto' plans from `free_bytes` for `tokens`);
    `loras` stay hooked, stacked in order; blocks compiled on a GPU when asked; 'blocks' wraps in BlockSwapDiT.
    """
    dtype, keep_fp8 = expert_weights(weights, device)
    pair = [load_dit(high, dtype, keep_fp8), load_dit(low, dtype, keep_fp8)]
    if pair[0].config.model_type != pair[1].config.model_type:
        kinds = [dit.config.model_type.upper() for dit in pair]
        raise CheckpointError(f"{high.name} is a {kinds[0]} expert but {low.name} is {kinds[1]}: load two experts of one pair.")
    for lora in loras:
        for dit, path in zip(pair, (lora.high, lora.low)):
            apply_loras(dit, [load_lora(path)], mode="hook", strict=lora.strict)
    placement = resolve_offload(offload, pair[0], device, free_bytes, tokens)
    if compile_blocks and device.type == "cuda":
        pair = [dit.compile_blocks() for dit in pair]
    if placement == "blocks":
        pair = [BlockSwapDiT(dit) for dit in pair]
    log.info("Wan experts: placement %s, attention %s%s", placement, backend_name(device),
             ", compiled blocks" if compile_blocks and device.type == "cuda" else "")
    return pair[0], pair[1], placement


def load_text_encoder(path: str | Path, dtype: torch.dtype) -> TextEncoder:
    """umT5 + its tokenizer: the one inside the file (ComfyUI files) or a spiece.model beside it."""
    path = Path(path)
    checkpoint = _opened(path, ("umt5",), "a umT5-xxl text encoder (umt5_xxl_*)")
    embedded = checkpoint.embedded_tokenizer()
    tokenizer = UMT5Tokenizer.from_bytes(embedded, f"the tokenizer inside {path.name}") if embedded is not None else UMT5Tokenizer.from_path(path.parent)
    encoder = load_model(described_model("umt5", path, checkpoint.shapes()), path, dequantize_to=dtype)
    return TextEncoder(tokenizer, encoder.to(dtype).eval().requires_grad_(False))


def load_vae(path: str | Path, dtype: torch.dtype) -> WanVAE:
    """The Wan2.1 VAE at the file's width."""
    path = Path(path)
    checkpoint = _opened(path, ("wan21-vae",), "a Wan2.1 VAE (wan_2.1_vae)")
    vae = load_model(described_model("wan21-vae", path, checkpoint.shapes()), path)
    return vae.to(dtype).eval().requires_grad_(False)


def fit_problems(info: CheckpointInfo) -> list[str]:
    """What in a DiT, umT5, VAE or image-encoder file does not fit the model its own sizes describe (sizes no model
    can have; missing, unexpected, wrong-shape tensors), so `inspect` finds what loading would refuse; empty for other kinds."""
    if info.problems or info.layout == "wan-folder" or info.kind not in (*DIT_KINDS, "umt5", "wan21-vae", "clip-vision"):
        return []
    shapes = Checkpoint(info.path).shapes()
    try:
        model = described_model(info.kind, info.path, shapes)
    except CheckpointError as error:
        return [str(error)]
    if model is None:
        return []
    faults = fit_faults(model_shapes(model), shapes)
    return [f"Its tensors do not fit the model its sizes describe: {'; '.join(faults)}; download it again."] if faults else []


def inspect_main(paths: list[str]) -> int:
    """`inspect FILE...`: print what each file is and what is wrong with it; 0 when every one is usable, else 2."""
    infos = [detect(path) for path in paths]
    for info in infos:
        for part, part_info in info.parts.items():
            found = fit_problems(part_info)
            part_info.problems += found
            info.problems += [f"{part}: {problem}" for problem in found]
        info.problems += fit_problems(info)
    print("\n\n".join(describe(info) for info in infos))
    return 0 if all(info.usable for info in infos) else 2


_registered_clip_configs: dict[str, str] = {}
_clip_config_dir: Path | None = None  # open_clip re-reads every registered file on each registration: kept until exit


def load_keyframe_encoder(path: str | Path, model_name: str, device: torch.device) -> OpenClipEncoder:
    """An open_clip vision tower; a file storing an open_clip config (tiny test models) is built from that config."""
    return OpenClipEncoder.from_file(path, model_name=_clip_model_name(path, model_name), device=device)


def load_clip_text_encoder(path: str | Path, model_name: str, device: torch.device) -> OpenClipTextEncoder:
    """The text tower of the same CLIP file (prompt following in story evaluation), built as the vision tower is."""
    return OpenClipTextEncoder.from_file(path, model_name=_clip_model_name(path, model_name), device=device)


def _clip_model_name(path: str | Path, model_name: str) -> str:
    """`model_name`, or the registered name of the open_clip config the file stores (tiny test models)."""
    stored = stored_config(path, "clip-vision")
    return model_name if stored is None else _register_clip_config(stored)


def _register_clip_config(config: dict) -> str:
    """open_clip builds models by registered config name: register a stored config once, under a name of its content."""
    import open_clip

    global _clip_config_dir
    text = json.dumps(config, sort_keys=True)
    if text not in _registered_clip_configs:
        if _clip_config_dir is None:
            _clip_config_dir = Path(tempfile.mkdtemp(prefix="storymem-clip-"))
            atexit.register(shutil.rmtree, _clip_config_dir, ignore_errors=True)
        name = f"storymem-stored-{len(_registered_clip_configs)}"
        config_file = _clip_config_dir / f"{name}.json"
        config_file.write_text(text)
        open_clip.add_model_config(config_file)
        _registered_clip_configs[text] = name
    return _registered_clip_configs[text]
