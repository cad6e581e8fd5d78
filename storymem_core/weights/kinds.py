"""The table of model kinds this pack reads: each kind one entry with its anchor tensors, the name users read,
the ComfyUI models folder it goes in, which files those are, how its config is read and its model built, and how
its keys are renamed. A new kind is a new entry here (and its recognition in classify.py).
See docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..scorers import vision_tower
from ..viclip import ViCLIP, ViCLIPConfig
from ..wan.dit import DiTConfig, WanDiT
from ..wan.t5 import T5Config, UMT5Encoder
from ..wan.vae import VAEConfig, WanVAE
from .configs import dit_check_config_from_shapes, t5_config_from_shapes, vae_config_from_shapes
from .renaming import hf_t5_name, lora_name, same_name

T2V_DIT = "wan22-t2v-dit"
I2V_DIT = "wan22-i2v-dit"
UMT5 = "umt5"
WAN21_VAE = "wan21-vae"
LORA = "lora"
CLIP_VISION = "clip-vision"
AESTHETIC_HEAD = "aesthetic-head"
VICLIP = "viclip"
UNKNOWN = "unknown"
DIT_KINDS = (T2V_DIT, I2V_DIT)

# ComfyUI's older model folder names, searched too (as ComfyUI does)
LEGACY_FOLDERS = {"text_encoders": ("clip",), "diffusion_models": ("unet",)}

Shapes = Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class Kind:
    """One kind of model file. `anchors`: tensor names (under the file's key prefix) that mark it; `sizes`: the
    model_sizes family its config is checked as; a kind without `builder` is only recognised, not built here."""

    name: str  # what a user reads: "a umT5-xxl text encoder"
    anchors: tuple[str, ...] = ()
    folder: str | None = None  # ComfyUI models folder
    files: str | None = None  # which published files these are, for "load the ... here"
    sizes: str | None = None
    config_from_dict: Callable[[dict], Any] | None = None  # a config stored in the file's metadata
    config_from_shapes: Callable[[Shapes, str], Any] | None = None
    builder: Callable[[Any], nn.Module] | None = None  # config -> model on the meta device
    rename: Callable[[str], str] = same_name  # key in the file (prefix removed) -> our parameter name


def _on_meta(model: type[nn.Module]) -> Callable[[Any], nn.Module]:
    def build(config) -> nn.Module:
        with torch.device("meta"):
            return model(config)
    return build


def _dit(name: str, files: str) -> Kind:
    return Kind(
        name=name, anchors=("head.modulation", "patch_embedding.weight"), folder="diffusion_models", files=files,
        sizes="dit", config_from_dict=DiTConfig.from_dict, config_from_shapes=dit_check_config_from_shapes,
        builder=_on_meta(WanDiT),
    )


KINDS: dict[str, Kind] = {
    T2V_DIT: _dit(
        "a Wan2.2 text-to-video DiT expert (16 input channels)",
        "wan2.2_t2v_high_noise_14B / low_noise_14B file or the high_noise_model/ / low_noise_model/ folder of "
        "Wan2.2-T2V-A14B",
    ),
    I2V_DIT: _dit(
        "a Wan2.2 image-to-video / StoryMem DiT expert (36 input channels)",
        "wan2.2_i2v_high_noise_14B / low_noise_14B file or the high_noise_model/ / low_noise_model/ folder of "
        "Wan2.2-I2V-A14B",
    ),
    UMT5: Kind(
        name="a umT5-xxl text encoder",
        anchors=("encoder.block.0.layer.0.SelfAttention.q.weight", "blocks.0.attn.q.weight"),  # HF, Wan-AI names
        folder="text_encoders",
        files="umt5_xxl_fp16 / umt5_xxl_fp8_e4m3fn_scaled file or models_t5_umt5-xxl-enc-bf16.pth",
        sizes="umt5", config_from_dict=T5Config.from_dict, config_from_shapes=t5_config_from_shapes,
        builder=_on_meta(UMT5Encoder), rename=hf_t5_name,
    ),
    WAN21_VAE: Kind(
        name="a Wan2.1 VAE",
        anchors=("decoder.middle.0.residual.0.gamma", "conv1.weight"),
        folder="vae",
        files="wan_2.1_vae.safetensors or Wan2.1_VAE.pth",
        sizes="wan21-vae", config_from_dict=VAEConfig.from_dict, config_from_shapes=vae_config_from_shapes,
        builder=_on_meta(WanVAE),
    ),
    LORA: Kind(  # recognised by its key pattern (renaming.LORA_PART), not by anchors
        name="a LoRA",
        folder="loras",
        files="LoRA file (StoryMem's backbone_high_noise.pth / backbone_low_noise.pth or a ComfyUI LoRA)",
        rename=lora_name,
    ),
    CLIP_VISION: Kind(  # built only from a stored open_clip config: its open_clip name is the user's choice
        name="an open_clip CLIP image encoder (keyframe selection)",
        anchors=("class_embedding", "proj"),
        folder="clip_vision",
        sizes="clip-vision", config_from_dict=dict, builder=lambda config: vision_tower(config, "meta"),
    ),
    VICLIP: Kind(
        name="a ViCLIP video-text encoder (the paper's prompt following and consistency)",
        anchors=("vision_encoder.temporal_positional_embedding", "text_encoder.text_projection"),
        folder="clip_vision",
        files="ViClip-InternVid-10M-FLT.pth (huggingface.co/OpenGVLab/VBench_Used_Models)",
        sizes="viclip", config_from_dict=ViCLIPConfig.from_dict,
        config_from_shapes=lambda shapes, name: ViCLIPConfig.from_shapes(shapes), builder=_on_meta(ViCLIP),
    ),
    AESTHETIC_HEAD: Kind(  # recognised as a chain of linear layers ending in one score
        name="an aesthetic head on CLIP embeddings (keyframe quality filter)",
        folder="clip_vision",
    ),
    UNKNOWN: Kind(name="not a model this pack reads"),
}
