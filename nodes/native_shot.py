"""StoryMem Native Shot: one memory-conditioned shot on ComfyUI's own models in one node.

It makes what the expanded native chain makes (StoryMem Conditioning, two KSamplerAdvanced, TrimVideoLatent, VAE
Decode, StoryMem Trim Frames, Select Keyframes) through `native.native_shot`, and returns what the engine's StoryMem
Shot returns: the frames, the bank after the shot and its last frames. Loaded only inside ComfyUI, as native.py is.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from storymem_core.choices import DEFAULT_MEMORY_POSITIONS, MOTION_FRAMES, ShotMode
from storymem_core.errors import SettingsError
from storymem_core.memory import MemoryBank
from storymem_core.run_shot import ShotRequest
from storymem_core.video import image_batch_to_frames

from . import inputs
from .memory_nodes import next_shot, with_bank_ui
from .native import CATEGORY, PREVIOUS_FRAMES, NativeExperts, encode_prompt, native_shot, negative_conditioning
from .previews import shot_ui
from .shot_nodes import OUTPUTS, naming_shot, resolve_mode
from .types import BANK, KEYFRAME_ENCODER, KeyframeModel


def shot_conditioning_inputs(clip, positive: list | None, negative: list | None, prompt: str,
                             negative_prompt: str) -> tuple[list, list]:
    """The shot's CONDITIONING: as connected, or the prompt (and negative prompt) encoded with `clip`; one of the two
    ways for each, never both, so what the shot shows is never a silent choice."""
    if positive is not None and prompt.strip():
        raise SettingsError("both positive and prompt are given: disconnect positive to use the prompt, or empty the "
                            "prompt to use positive.")
    if positive is None and not prompt.strip():
        raise SettingsError("the shot has no prompt: write one (with clip connected), or connect positive.")
    if negative is not None and negative_prompt.strip():
        raise SettingsError("both negative and negative_prompt are given: disconnect negative, or empty "
                            "negative_prompt.")
    if clip is None and (positive is None or negative is None):
        raise SettingsError("clip is not connected: connect the umT5 from Load CLIP (type wan) to encode the prompts, "
                            "or connect both positive and negative.")
    if positive is None:
        positive = encode_prompt(clip, prompt)
    if negative is None:
        negative = negative_conditioning(clip, negative_prompt)
    return positive, negative


@dataclass(frozen=True, kw_only=True)
class NativeShotWidgets(inputs.ShotWidgets):
    cut: bool
    mode: str
    cfg: float
    sampler_name: str
    scheduler: str
    switch_at_step: int = -1
    memory_positions: str = DEFAULT_MEMORY_POSITIONS


class NativeShot:
    DESCRIPTION = ("A whole memory-conditioned shot on ComfyUI's own Wan2.2 I2V models (any loader: Load Diffusion "
                   "Model, GGUF, with LoRAs): StoryMem conditioning, the high- then low-noise expert through ComfyUI's "
                   "samplers, decoding, trimming and keyframes into the memory, as the expanded native chain makes it.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_high": ("MODEL", {"tooltip": "The Wan2.2 I2V high-noise expert with the StoryMem LoRA (and its "
                                                    "shift, e.g. ModelSamplingSD3 at 4)."}),
                "model_low": ("MODEL", {"tooltip": "The Wan2.2 I2V low-noise expert with the StoryMem LoRA."}),
                "vae": ("VAE", {"tooltip": "The Wan2.1 VAE (wan_2.1_vae.safetensors) from Load VAE."}),
                "keyframe_encoder": (KEYFRAME_ENCODER,
                                     {"tooltip": "From Load Keyframe Encoder: picks this shot's keyframes."}),
                "memory": (BANK, {"tooltip": "The memory bank from the previous shot (or a bank of references)."}),
                "prompt": inputs.prompt("What the shot shows, encoded with clip; leave empty when positive is "
                                        "connected."),
                "cut": inputs.cut(),
                "mode": inputs.shot_mode(),
                "seed": inputs.seed(),
                "steps": inputs.steps(inputs.M2V.steps),
                "cfg": inputs.cfg("Classifier-free guidance of both experts (3.5 in StoryMem)."),
                "sampler_name": inputs.sampler_name(),
                "scheduler": inputs.scheduler(),
                "width": inputs.size("width", 832),
                "height": inputs.size("height", 480),
                "frames": inputs.frames(),
            },
            "optional": {
                "clip": ("CLIP", {"tooltip": "The umT5 from Load CLIP (type wan), to encode prompt and "
                                             "negative_prompt."}),
                "positive": ("CONDITIONING", {"tooltip": "The prompt already encoded, instead of prompt."}),
                "negative": ("CONDITIONING", {"tooltip": "The negative prompt already encoded, instead of "
                                                         "negative_prompt."}),
                "previous_frames": ("IMAGE",
                                    {"tooltip": "The previous shot's last_frames, for MI2V / MM2V continuation."}),
                "negative_prompt": inputs.negative_prompt(),
                "shot_number": inputs.shot_number(),
                "switch_at_step": inputs.switch_at_step(),
                "memory_positions": inputs.memory_positions(),
            },
        }

    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = OUTPUTS
    FUNCTION = "generate"
    CATEGORY = CATEGORY

    def generate(self, model_high, model_low, vae, keyframe_encoder: KeyframeModel, memory: MemoryBank, clip=None,
                 positive: list | None = None, negative: list | None = None,
                 previous_frames: torch.Tensor | None = None, **widgets) -> dict:
        shot = NativeShotWidgets(**widgets)
        number = shot.shot_number or next_shot(memory) + 1
        with naming_shot(number, shot.prompt):
            mode = resolve_mode(shot.mode, shot.cut, previous_frames is not None, PREVIOUS_FRAMES)
            positive, negative = shot_conditioning_inputs(clip, positive, negative, shot.prompt, shot.negative_prompt)
            settings = replace(inputs.M2V, steps=shot.steps, guide_high=shot.cfg, guide_low=shot.cfg, seed=shot.seed)
            request = ShotRequest(
                shot.prompt, mode, memory, (shot.width, shot.height), shot.frames, settings, number - 1,
                previous_frames=None if mode == ShotMode.M2V else image_batch_to_frames(previous_frames),
                negative_prompt=shot.negative_prompt, memory_positions=shot.memory_positions)
            experts = NativeExperts(model_high, model_low, shot.sampler_name, shot.scheduler, shot.switch_at_step)
            images, bank = native_shot(request, positive, negative, experts, vae, keyframe_encoder)
        result = with_bank_ui(bank, images, bank, images[-MOTION_FRAMES:])
        result["ui"].update(shot_ui(number, mode, shot.cut, shot.prompt, image_batch_to_frames(images)))
        return result


NODE_CLASS_MAPPINGS = {"StoryMemNativeShot": NativeShot}
NODE_DISPLAY_NAME_MAPPINGS = {"StoryMemNativeShot": "StoryMem Native Shot"}
