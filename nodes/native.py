"""StoryMem on ComfyUI's own models: the memory conditioning as standard CONDITIONING (memory time positions
included), the StoryMem LoRA as a MODEL patch, and trimming after sampling.

This is the one nodes module besides host.py that imports ComfyUI: it only loads inside ComfyUI. The
conditioning is the engine's (`build_conditioning`), encoded by ComfyUI's VAE and put on ComfyUI's keys
`concat_latent_image` (raw VAE latent; the model normalises it) and `concat_mask`, whose convention is
the inverse of the reference's (ComfyUI: 0 = known frame; the model feeds 1 - mask to the DiT).

The memory's time positions travel with the conditioning too, as a ComfyUI hook (see `with_memory_positions`):
whatever model, loader or sampler a user wires, a shot sampled with StoryMem Conditioning gets the authors'
placement, with no extra node to forget.
"""

from __future__ import annotations

import comfy.hooks
import comfy.lora
import comfy.model_management
import comfy.patcher_extension
import node_helpers
import torch

from storymem_core.choices import DEFAULT_MEMORY_POSITIONS, GIVEN_FRAMES, MOTION_FRAMES, NodeShotMode, ShotMode
from storymem_core.conditioning import build_conditioning, check_size
from storymem_core.errors import CheckpointError, ConditioningError
from storymem_core.lora import load_lora
from storymem_core.lora_convert import COMFY_PREFIX, comfy_lora_tensors
from storymem_core.memory import MemoryBank
from storymem_core.positions import memory_frame_positions
from storymem_core.video import image_batch_to_frames

from . import host
from .inputs import frames, memory_positions, model_file, size
from .shot_nodes import resolve_mode
from .types import BANK

CATEGORY = "StoryMem/native"
POSITIONS_WRAPPER = "storymem_memory_positions"


class ComfyVideoEncoder:
    """The engine's video encoder over ComfyUI's VAE: [B, 3, T, H, W] in [-1, 1] -> raw latents, each
    of the B clips encoded on its own (so a memory keyframe is one 1-frame video)."""

    def __init__(self, vae):
        self.vae = vae

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        clips = video.add(1).div(2).permute(0, 2, 3, 4, 1)  # [B, T, H, W, 3] in [0, 1], ComfyUI's IMAGE layout
        return torch.cat([self.vae.encode(clip) for clip in clips])


def memory_positions_wrapper(memory_latents: int, placement: str):
    """A DIFFUSION_MODEL wrapper giving Wan's RoPE the memory frames' time positions (see storymem_core.positions).

    ComfyUI's WanModel numbers the latent frames 0..T-1 in `rope_encode`. For the duration of one call the
    wrapper shadows that method on the model with one numbering them by `memory_frame_positions`, and runs the
    rest of the wrapper chain as usual, so other wrappers (EasyCache, ...) still run. Latents longer than the
    conditioning's (time_dim_concat, reference_latent) keep ComfyUI's numbering.
    """

    def forward(executor, x, *args, **kwargs):
        model = executor.class_obj
        positions = memory_frame_positions(memory_latents, x.shape[2], placement)
        numbered = model.rope_encode

        def rope_encode(t, h, w, device=None, dtype=None, **options):
            if t != len(positions) or options.get("t_start", 0) != 0:
                return numbered(t, h, w, device=device, dtype=dtype, **options)
            rows, columns = (-(-size // patch) for size, patch in zip((h, w), model.patch_size[1:]))  # as padded
            ids = torch.stack(torch.meshgrid(positions.float(), torch.arange(rows, dtype=torch.float32),
                                             torch.arange(columns, dtype=torch.float32), indexing="ij"), dim=-1)
            return model.rope_embedder(ids.reshape(1, -1, 3).to(device, dtype)).movedim(1, 2)

        model.rope_encode = rope_encode
        try:
            return executor(x, *args, **kwargs)
        finally:
            del model.rope_encode  # the class's method again

    return forward


def with_memory_positions(positive: list, negative: list, memory_latents: int, placement: str) -> tuple[list, list]:
    """Both conditionings with the memory's time positions attached, as one ComfyUI hook they share.

    A TransformerOptionsHook scoped to the conditionings it is set on adds `memory_positions_wrapper` to the
    model call of exactly those conditionings, on any MODEL (fp8, GGUF, patched by other nodes) and sampler. The
    first release's numbering is ComfyUI's own, so it needs no hook.
    """
    if memory_frame_positions(memory_latents, memory_latents, placement) is None:
        return positive, negative
    wrappers = {comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL: {
        POSITIONS_WRAPPER: [memory_positions_wrapper(memory_latents, placement)]}}
    hooks = comfy.hooks.HookGroup()
    hooks.add(comfy.hooks.TransformerOptionsHook({"wrappers": wrappers}, comfy.hooks.EnumHookScope.HookedOnly))
    return (comfy.hooks.set_hooks_for_conditioning(positive, hooks),
            comfy.hooks.set_hooks_for_conditioning(negative, hooks))


def storymem_conditioning(positive: list, negative: list, vae, memory: MemoryBank, mode: str, width: int, height: int,
                          length: int, batch_size: int, previous: torch.Tensor | None = None,
                          fix_mem: int | None = None,
                          placement: str = DEFAULT_MEMORY_POSITIONS) -> tuple[list, list, dict, int, int]:
    """(positive, negative, empty latent, memory latent frames, given frames) for one shot in `mode`.

    width x height is the pixel budget; the shot takes the aspect of its given frames or first keyframe,
    as in the StoryMem Shot node and the reference. `placement` sets the memory's time positions.
    """
    check_size(width, height)
    conditioning = build_conditioning(
        ComfyVideoEncoder(vae), memory.image_list(), length, width * height,
        first_frame=previous[-1] if mode == ShotMode.MI2V else None,
        motion_frames=previous[-MOTION_FRAMES:] if mode == ShotMode.MM2V else None,
        fix_mem=fix_mem,
    )
    latent = torch.zeros([batch_size, 16, *conditioning.y.shape[1:]],
                         device=comfy.model_management.intermediate_device())
    positive, negative = shot_conditioning(positive, negative, conditioning.y, conditioning.memory_count, placement)
    return positive, negative, {"samples": latent}, conditioning.memory_count, GIVEN_FRAMES[mode]


def shot_conditioning(positive: list, negative: list, y: torch.Tensor, memory_count: int,
                      placement: str) -> tuple[list, list]:
    """Both conditionings with the reference's `y` [4 + 16, T, h, w] (mask, raw latents) on ComfyUI's keys and the
    memory's time positions attached."""
    values = {"concat_latent_image": y[None, 4:], "concat_mask": 1.0 - y[None, :4]}
    return with_memory_positions(node_helpers.conditioning_set_values(positive, values),
                                 node_helpers.conditioning_set_values(negative, values), memory_count, placement)


class StoryMemConditioning:
    DESCRIPTION = ("StoryMem's memory conditioning for ComfyUI's Wan2.2 I2V models (Load Diffusion Model, GGUF, ...): "
                   "memory keyframes in front of the shot, plus the previous shot's last frame (MI2V) or last 5 frames "
                   "(MM2V) without a cut, and the memory's time positions (the authors' current placement by default). "
                   "Sample the latent with any sampler, then trim memory_latents off it and given_frames off the "
                   "decoded images.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "positive": ("CONDITIONING",
                             {"tooltip": "The shot's prompt, encoded (CLIP Text Encode with the umT5 loaded as type "
                                         "wan)."}),
                "negative": ("CONDITIONING", {"tooltip": "The negative prompt, encoded."}),
                "vae": ("VAE", {"tooltip": "The Wan2.1 VAE (wan_2.1_vae.safetensors) from Load VAE."}),
                "memory": (BANK, {"tooltip": "The memory bank: keyframes of the shots before (or references)."}),
                "cut": ("BOOLEAN",
                        {"default": True,
                         "tooltip": "True: the shot starts with a cut (memory only). False: it continues the previous "
                                    "shot."}),
                "mode": (NodeShotMode.names(),
                         {"default": NodeShotMode.AUTO_MI2V,
                          "tooltip": "auto-mi2v / auto-mm2v: M2V after a cut, else MI2V (last frame) / MM2V (last 5 "
                                     "frames), matching the StoryMem LoRA loaded. m2v, mi2v, mm2v force a mode."}),
                "width": size("width", 832),
                "height": size("height", 480),
                "length": frames(),
                "batch_size": ("INT",
                               {"default": 1, "min": 1, "max": 64,
                                "tooltip": "Videos sampled at once with this conditioning."}),
            },
            "optional": {
                "previous_frames": ("IMAGE",
                                    {"tooltip": "The previous shot's frames (at least its last 5), for MI2V / MM2V."}),
                "fix_mem": ("INT", {"default": -1, "min": -1, "max": 64, "advanced": True,
                                    "tooltip": "-1 (as released): every memory frame is marked 1. n >= 0: frames after "
                                               "the first n are marked 2, the reference's unused fix_mem option."}),
                "memory_positions": memory_positions(),
            },
        }

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT", "INT", "INT")
    RETURN_NAMES = ("positive", "negative", "latent", "memory_latents", "given_frames")
    OUTPUT_TOOLTIPS = (
        "The prompt with the memory conditioning (concat_latent_image, concat_mask) and the memory's time positions.",
        "The negative prompt with the same conditioning (as the reference uses one y for both).",
        "An empty latent covering memory + shot: the sampler's latent_image.",
        "Latent frames of memory in front of the shot: TrimVideoLatent's trim_amount after sampling.",
        "Frames the shot was given (0 M2V, 1 MI2V, 5 MM2V): StoryMem Trim Frames' count after decoding.",
    )
    FUNCTION = "condition"
    CATEGORY = CATEGORY

    def condition(self, positive: list, negative: list, vae, memory: MemoryBank, cut: bool, mode: str,
                  width: int, height: int, length: int, batch_size: int, previous_frames: torch.Tensor | None = None,
                  fix_mem: int = -1, memory_positions: str = DEFAULT_MEMORY_POSITIONS) -> tuple:
        mode = resolve_mode(mode, cut, previous_frames is not None)
        previous = None if mode == ShotMode.M2V else image_batch_to_frames(previous_frames)
        return storymem_conditioning(positive, negative, vae, memory, mode, width, height, length, batch_size, previous,
                                     None if fix_mem < 0 else fix_mem, memory_positions)


class TrimFrames:
    DESCRIPTION = ("Drops the frames a shot was given (MI2V: 1, MM2V: 5) from its decoded images, so the film shows "
                   "them once.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "The decoded shot (after TrimVideoLatent removed the memory)."}),
            "given_frames": ("INT",
                             {"default": 0, "min": 0, "max": 4096,
                              "tooltip": "given_frames of StoryMem Conditioning."}),
        }}

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    OUTPUT_TOOLTIPS = ("The shot's generated frames.",)
    FUNCTION = "trim"
    CATEGORY = CATEGORY

    def trim(self, images: torch.Tensor, given_frames: int) -> tuple:
        if images.shape[0] <= given_frames:
            raise ConditioningError(
                f"images has {images.shape[0]} frames, none left after dropping {given_frames} given frames: "
                "decode the shot after TrimVideoLatent, not the memory alone."
            )
        return (images[given_frames:],)


def add_storymem_lora(model, path, strength: float, alpha: float | None = None):
    """A clone of a ComfyUI MODEL with the LoRA at `path` (StoryMem .pth or any Wan LoRA file) as weight patches.

    The LoRA goes through the same conversion as `convert-lora` (rsLoRA scale in alpha), then ComfyUI's
    own loader and patching, so it works on fp8, fp16 and GGUF models and stacks with other LoRAs.
    `alpha` overrides the file's (a peft .pth stores none: StoryMem trains with alpha = rank).
    """
    tensors = comfy_lora_tensors(load_lora(path, alpha=alpha))
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    modules = {name.rsplit(".", 1)[0].removesuffix(".lora_down").removesuffix(".lora_up") for name in tensors}
    unmatched = sorted(m for m in modules if m not in key_map)
    if unmatched:
        names = ", ".join(m.removeprefix(COMFY_PREFIX) for m in unmatched[:3])
        raise CheckpointError(
            f"LoRA {path} has {len(unmatched)} modules this model lacks ({names}, ...): use a LoRA made for Wan2.2 "
            "A14B on a Wan2.2 I2V model."
        )
    patched = model.clone()
    patched.add_patches(comfy.lora.load_lora(tensors, key_map, log_missing=False), strength)
    return patched


class StoryMemLora:
    DESCRIPTION = ("Applies the StoryMem LoRA (the released backbone_*_noise.pth, rsLoRA-scaled, or a "
                   "ComfyUI-converted file) to a ComfyUI MODEL through ComfyUI's patching: fp8, fp16 and GGUF models, "
                   "stacks with LoRA loaders.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "A Wan2.2 I2V-A14B expert (high or low noise)."}),
            "lora_name": model_file("loras",
                                    "The StoryMem LoRA of this expert, e.g. "
                                    "StoryMem/Wan2.2-MI2V-A14B/backbone_high_noise.pth"),
            "strength": ("FLOAT",
                         {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01, "tooltip": "1.0 as trained."}),
        }, "optional": {
            "alpha": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 4096.0, "step": 1.0, "advanced": True,
                                "tooltip": "0: the file's alpha, or the rank for a peft .pth (StoryMem's release). Set "
                                           "it for a peft LoRA trained with another lora_alpha."}),
        }}

    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with the LoRA patched in (the input model is unchanged).",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, model, lora_name: str, strength: float, alpha: float = 0.0) -> tuple:
        return (add_storymem_lora(model, host.model_path("loras", lora_name), strength, alpha or None),)


NODE_CLASS_MAPPINGS = {
    "StoryMemConditioning": StoryMemConditioning,
    "StoryMemTrimFrames": TrimFrames,
    "StoryMemLoraModel": StoryMemLora,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "StoryMemConditioning": "StoryMem Conditioning",
    "StoryMemTrimFrames": "StoryMem Trim Frames",
    "StoryMemLoraModel": "StoryMem LoRA (MODEL)",
}
