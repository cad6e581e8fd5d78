"""StoryMem on ComfyUI's own models: the memory conditioning as standard CONDITIONING (memory time positions
included), the StoryMem LoRA as a MODEL patch, trimming after sampling, and a whole shot (conditioning, the two experts
through ComfyUI's sampling, decoding, keyframes) for the Native Shot and Native Story Runner nodes.

This is the one nodes module besides host.py that imports ComfyUI: it only loads inside ComfyUI. The
conditioning is the engine's (`build_conditioning`), encoded by ComfyUI's VAE and put on ComfyUI's keys
`concat_latent_image` (raw VAE latent; the model normalises it) and `concat_mask`, whose convention is
the inverse of the reference's (ComfyUI: 0 = known frame; the model feeds 1 - mask to the DiT).

The memory's time positions travel with the conditioning too, as a ComfyUI hook (see `with_memory_positions`):
whatever model, loader or sampler a user wires, a shot sampled with StoryMem Conditioning gets the authors'
placement, with no extra node to forget.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import comfy.hooks
import comfy.lora
import comfy.model_management
import comfy.patcher_extension
import comfy.sample
import comfy.samplers
import comfy.sd
import comfy.utils
import node_helpers
import torch
from comfy.model_patcher import ModelPatcher

from storymem_core.choices import DEFAULT_MEMORY_POSITIONS, GIVEN_FRAMES, MOTION_FRAMES, ShotMode
from storymem_core.conditioning import VAE_STRIDE, build_conditioning, check_frame_num, check_size, latent_frame_count
from storymem_core.errors import CheckpointError, ConditioningError
from storymem_core.lora import load_lora
from storymem_core.lora_convert import COMFY_PREFIX, comfy_lora_tensors
from storymem_core.memory import MemoryBank
from storymem_core.positions import memory_frame_positions
from storymem_core.run_shot import ShotOutcome, ShotRequest
from storymem_core.sampling import SamplerSettings
from storymem_core.shot import DEFAULT_NEGATIVE_PROMPT
from storymem_core.video import image_batch_to_frames

from . import host
from .inputs import cut, frames, memory_positions, model_file, node_identity, shot_mode, size
from .memory_nodes import add_shot_keyframes
from .shot_nodes import naming_node, naming_shot, node_title, resolve_mode
from .types import BANK, KeyframeModel

CATEGORY = "StoryMem/native"
PREVIOUS_FRAMES = "frames (StoryMem Trim Frames' frames, or StoryMem Native Shot's last_frames)"
POSITIONS_WRAPPER = "storymem_memory_positions"


class ComfyVideoEncoder:
    """The engine's video encoder over ComfyUI's VAE: [B, 3, T, H, W] in [-1, 1] -> raw latents, each
    of the B clips encoded on its own (so a memory keyframe is one 1-frame video)."""

    def __init__(self, vae: comfy.sd.VAE):
        self.vae = vae

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        clips = video.add(1).div(2).permute(0, 2, 3, 4, 1)  # [B, T, H, W, 3] in [0, 1], ComfyUI's IMAGE layout
        return torch.cat([self.vae.encode(clip) for clip in clips])


def memory_positions_wrapper(memory_latents: int, placement: str) -> Callable[..., torch.Tensor]:
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

        shadowed = model.__dict__.get("rope_encode")  # another pack's own patch, if any, comes back afterwards
        model.rope_encode = rope_encode
        try:
            return executor(x, *args, **kwargs)
        finally:
            if shadowed is None:
                del model.rope_encode  # the class's method again
            else:
                model.rope_encode = shadowed

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


def storymem_conditioning(positive: list, negative: list, vae: comfy.sd.VAE, memory: MemoryBank, mode: str,
                          width: int, height: int, length: int, batch_size: int, previous: torch.Tensor | None = None,
                          fix_mem: int | None = None,
                          placement: str = DEFAULT_MEMORY_POSITIONS) -> tuple[list, list, dict, int, int]:
    """(positive, negative, empty latent, memory latent frames, given frames) for one shot in `mode`.

    width x height is the pixel budget; the shot takes the aspect of its given frames or first keyframe,
    as in the StoryMem Shot node and the reference. `placement` sets the memory's time positions.
    """
    check_size(width, height)
    if not memory.keyframes:
        raise ConditioningError("the memory bank is empty: start it from reference images (StoryMem Memory Bank from "
                                "Images), or from the keyframes of a first shot made from text (Select Keyframes).")
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


@dataclass(frozen=True, kw_only=True)
class ConditioningWidgets:
    """StoryMem Conditioning's widgets, as ComfyUI passes them (by name)."""

    cut: bool
    mode: str
    width: int
    height: int
    length: int
    batch_size: int
    fix_mem: int = -1
    memory_positions: str = DEFAULT_MEMORY_POSITIONS


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
                "cut": cut(),
                "mode": shot_mode(),
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
            "hidden": node_identity(),
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

    def condition(self, positive: list, negative: list, vae: comfy.sd.VAE, memory: MemoryBank,
                  previous_frames: torch.Tensor | None = None, unique_id: str | None = None, prompt: dict | None = None,
                  **widgets) -> tuple:
        """`unique_id` and `prompt` are ComfyUI's hidden inputs (the node's title names it in errors)."""
        shot = ConditioningWidgets(**widgets)
        with naming_node(node_title(unique_id, prompt)):
            mode = resolve_mode(shot.mode, shot.cut, previous_frames is not None, PREVIOUS_FRAMES)
            previous = None if mode == ShotMode.M2V else image_batch_to_frames(previous_frames)
            return storymem_conditioning(positive, negative, vae, memory, mode, shot.width, shot.height, shot.length,
                                         shot.batch_size, previous, None if shot.fix_mem < 0 else shot.fix_mem,
                                         shot.memory_positions)


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
        }, "hidden": node_identity()}

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    OUTPUT_TOOLTIPS = ("The shot's generated frames.",)
    FUNCTION = "trim"
    CATEGORY = CATEGORY

    def trim(self, images: torch.Tensor, given_frames: int, unique_id: str | None = None,
             prompt: dict | None = None) -> tuple:
        with naming_node(node_title(unique_id, prompt)):
            return (drop_given_frames(images, given_frames),)


def drop_given_frames(images: torch.Tensor, given_frames: int) -> torch.Tensor:
    """A decoded shot without the frames it was given (a new tensor view; the input is unchanged)."""
    if images.shape[0] <= given_frames:
        raise ConditioningError(
            f"images has {images.shape[0]} frames, none left after dropping {given_frames} given frames: "
            "decode the shot after TrimVideoLatent, not the memory alone."
        )
    return images[given_frames:]


def add_storymem_lora(model: ModelPatcher, path: Path, strength: float, alpha: float | None = None) -> ModelPatcher:
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
        }, "hidden": node_identity()}

    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with the LoRA patched in (the input model is unchanged).",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, model, lora_name: str, strength: float, alpha: float = 0.0, unique_id: str | None = None,
             prompt: dict | None = None) -> tuple:
        with naming_node(node_title(unique_id, prompt)):
            return (add_storymem_lora(model, host.model_path("loras", lora_name), strength, alpha or None),)


def encode_prompt(clip: comfy.sd.CLIP, text: str) -> list:
    """`text` as CONDITIONING, encoded as ComfyUI's CLIP Text Encode does."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def negative_conditioning(clip: comfy.sd.CLIP, negative_prompt: str) -> list:
    """A shot's negative prompt encoded; empty: Wan2.2's standard one, as the engine's shots use."""
    return encode_prompt(clip, negative_prompt.strip() or DEFAULT_NEGATIVE_PROMPT)


@dataclass(frozen=True)
class NativeExperts:
    """A Wan2.2 expert pair as ComfyUI MODELs and how ComfyUI samples them: sampler and scheduler by name, and the step
    where the low-noise expert takes over (-1: where the high-noise model's sigma falls below the mode's boundary)."""

    high: object
    low: object
    sampler_name: str
    scheduler: str
    switch_at_step: int = -1

    def switch(self, settings: SamplerSettings) -> int:
        """The first step the low-noise expert samples, on the high-noise model's own sigmas (its shift included)."""
        if self.switch_at_step >= 0:
            return min(self.switch_at_step, settings.steps)
        sigmas = comfy.samplers.KSampler(self.high, settings.steps, self.high.load_device, self.sampler_name,
                                         self.scheduler, 1.0).sigmas
        return next((step for step, sigma in enumerate(sigmas[:-1].tolist()) if sigma < settings.boundary),
                    settings.steps)

    def sample(self, positive: list, negative: list, latent: torch.Tensor, settings: SamplerSettings,
               progress: host.ShotProgress) -> torch.Tensor:
        """`latent` denoised by the high-noise expert up to the switch and the low-noise one after it, with ComfyUI's
        sampling (its samplers, model management, Cancel) as two KSamplerAdvanced nodes sharing one latent would: the
        seed's noise added once, the leftover noise handed on."""
        switch = self.switch(settings)
        parts = [(self.high, settings.guide_high, 0, switch), (self.low, settings.guide_low, switch, settings.steps)]
        parts = [part for part in parts if part[2] < part[3]]
        samples = comfy.sample.fix_empty_latent_channels(self.high, latent)
        noise = comfy.sample.prepare_noise(samples, settings.seed)
        for number, (model, cfg, start, end) in enumerate(parts):
            last = number == len(parts) - 1
            samples = comfy.sample.sample(
                model, noise if number == 0 else torch.zeros_like(noise), settings.steps, cfg, self.sampler_name,
                self.scheduler, positive, negative, samples, disable_noise=number > 0, start_step=start,
                last_step=10000 if last else end, force_full_denoise=last, callback=_stepper(progress, start),
                disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=settings.seed)
        return samples


def _stepper(progress: host.ShotProgress, start: int):
    """ComfyUI's sampler callback for steps from `start` on: the shot's bar, Cancel, and the denoised latent as the
    live preview of the shot's last frame."""

    def callback(step: int, denoised: torch.Tensor, latent: torch.Tensor, total_steps: int) -> None:
        progress.preview(denoised[0])
        progress(start + step + 1, progress.steps)

    return callback


def native_shot(request: ShotRequest, positive: list, negative: list, experts: NativeExperts, vae: comfy.sd.VAE,
                keyframe_model: KeyframeModel) -> tuple[torch.Tensor, MemoryBank]:
    """The shot `request` asks for on ComfyUI's models, as the expanded native chain makes it (StoryMem Conditioning,
    two KSamplerAdvanced, TrimVideoLatent, VAE Decode, Trim Frames, Select Keyframes; a T2V shot from an empty latent):
    its frames as an IMAGE and the bank with its keyframes. The request's settings give steps, CFG, seed and the expert
    boundary; the shift is the MODELs' own (ModelSamplingSD3)."""
    progress = host.ShotProgress(request.settings.steps, f"shot {request.index + 1} ({request.mode.upper()})")
    width, height = request.size_wh
    if request.mode == ShotMode.T2V:
        check_size(width, height)
        check_frame_num(request.frames)
        shape = [1, 16, latent_frame_count(request.frames), height // VAE_STRIDE[1], width // VAE_STRIDE[2]]
        latent, memory_latents, given = torch.zeros(shape, device=comfy.model_management.intermediate_device()), 0, 0
    else:
        positive, negative, empty, memory_latents, given = storymem_conditioning(
            positive, negative, vae, request.memory, request.mode, width, height, request.frames, 1,
            request.previous_frames, request.fix_mem, request.memory_positions)
        latent = empty["samples"]
    progress(0, request.settings.steps)
    samples = experts.sample(positive, negative, latent, request.settings, progress)
    images = vae.decode(samples[:, :, memory_latents:])
    progress.decoded()
    images = drop_given_frames(images.reshape(-1, *images.shape[-3:]), given)
    bank = add_shot_keyframes(image_batch_to_frames(images), request.memory, keyframe_model, request.index,
                              request.ablations)
    progress.finished()
    return images, bank


@dataclass(frozen=True)
class NativeStoryModels:
    """A story's models on the native path, making its shots for the engine's story loop (`pipeline.run_story`)."""

    m2v: NativeExperts
    clip: object
    vae: object
    keyframe_model: KeyframeModel
    t2v: NativeExperts | None = None

    def with_prompts(self, batches: list[list[str]]) -> NativeStoryModels:
        """As they are: ComfyUI's model management moves the CLIP for each shot's encoding."""
        return self

    def make_shot(self, request: ShotRequest, on_step: Callable[[int, int], None] | None = None) -> ShotOutcome:
        """The story's shot. `on_step` goes unused: each shot has its own progress bar, previews and Cancel
        (`native_shot`), as a Native Shot node has."""
        experts = self.t2v if request.mode == ShotMode.T2V else self.m2v
        with naming_shot(request.index + 1, request.prompt):
            positive = encode_prompt(self.clip, request.prompt)
            negative = negative_conditioning(self.clip, request.negative_prompt)
            images, bank = native_shot(request, positive, negative, experts, self.vae, self.keyframe_model)
        added = sum(k.source == "generated" and k.shot == request.index for k in bank.keyframes)
        return ShotOutcome(image_batch_to_frames(images), bank, added)


def story_sources(models: NativeStoryModels, sampling: tuple) -> list[str]:
    """What names the Native Story Runner's folder besides the options (`StoryPlan.named_folder`): every model it runs
    and how they are sampled, so other models or sampling start a fresh story instead of continuing this one."""
    t2v = [] if models.t2v is None else [fingerprint(models.t2v.high), fingerprint(models.t2v.low)]
    return ["native", fingerprint(models.m2v.high), fingerprint(models.m2v.low), fingerprint(models.clip.patcher),
            models.keyframe_model.name, *t2v, *map(str, sampling)]


def fingerprint(patcher: ModelPatcher) -> str:
    """What tells one ComfyUI model (a ModelPatcher: MODEL, or CLIP's `.patcher`) from another, cheaply: a byte sample
    of its weights, its patches (LoRAs and their strengths) and its sampling schedule (the shift). It names the
    Native Story Runner's folders, as file names do the engine runner's."""
    digest = hashlib.sha1(type(patcher.model).__name__.encode())
    weights = patcher.model.state_dict()
    names = sorted(weights)
    for name in names[:: max(1, len(names) // 8)]:
        tensor = weights[name]
        digest.update(f"{name}{tuple(tensor.shape)}".encode() + bytes(tensor.untyped_storage()[:64].cpu()))
    for key in sorted(patcher.patches, key=str):
        for patch in patcher.patches[key]:
            sample = next((t for t in getattr(patch[1], "weights", patch[1]) if isinstance(t, torch.Tensor)), None)
            digest.update(f"{key}{patch[0]}{patch[2]}".encode())
            if sample is not None:
                digest.update(bytes(sample.untyped_storage()[:64].cpu()))
    if hasattr(patcher.model, "model_sampling"):  # a MODEL (CLIP has none): its sigmas, after ModelSamplingSD3's shift
        digest.update(patcher.get_model_object("model_sampling").sigmas.float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


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
