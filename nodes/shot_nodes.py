"""Shot nodes: the story's first shot from text (T2V) and memory-conditioned shots (M2V / MI2V / MM2V).

Each returns the shot's frames, the bank after it (its keyframes added) and its last frames for the
next shot. Re-rolling a shot (new seed) re-runs only that node and those after it: the bank it
receives is the cached output of the shot before, unchanged.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Iterator

import torch

from storymem_core.choices import (
    AUTO_CONTINUES,
    DEFAULT_MEMORY_POSITIONS,
    MOTION_FRAMES,
    ExpertKind,
    Offload,
    Preset,
    ShotMode,
)
from storymem_core.conditioning import check_size
from storymem_core.errors import ConditioningError, GenerationInterrupted, SettingsError, StoryMemError
from storymem_core.memory import MemoryBank
from storymem_core.presets import sampler_settings
from storymem_core.run_shot import ShotModels, ShotRequest, run_shot
from storymem_core.shot import T2V_SETTINGS
from storymem_core.video import frames_to_image_batch, image_batch_to_frames
from storymem_core.wan.vae import WanVAE

from . import host, inputs
from .loaders import with_preset_loras
from .memory_nodes import next_shot, with_bank_ui
from .previews import excerpt, shot_ui
from .types import BANK, KEYFRAME_ENCODER, MODEL, TEXT_ENCODER, VAE, KeyframeModel, TextModel, WanExperts

CATEGORY = "StoryMem/shots"
OUTPUTS = (
    ("IMAGE", BANK, "IMAGE"),
    ("frames", "memory", "last_frames"),
    ("The shot's frames (frames given by MI2V / MM2V removed).", "The memory bank with this shot's keyframes added.",
     f"The shot's last {MOTION_FRAMES} frames: connect to the next shot's previous_frames."),
)


def resolve_mode(mode: str, cut: bool, has_previous: bool, previous: str = "last_frames") -> str:
    """auto: M2V after a cut, else continue the previous shot (MI2V or MM2V as the mode names). `previous` is the
    output of the shot before that the node's previous_frames takes (the native chain's is Trim Frames' frames)."""
    if mode in AUTO_CONTINUES:
        if cut:
            return ShotMode.M2V
        mode = AUTO_CONTINUES[mode]
        if not has_previous:
            raise ConditioningError(
                "cut is false (the shot continues the previous one) but previous_frames is not connected: "
                f"connect the previous shot's {previous}, or set cut to true."
            )
    elif mode != ShotMode.M2V and not has_previous:
        raise ConditioningError(f"mode {mode.upper()} continues the previous shot: connect its {previous} to "
                                f"previous_frames, or use {ShotMode.M2V}.")
    return mode


def _common_inputs(model_tooltip: str) -> dict:
    return {
        "model": (MODEL, {"tooltip": model_tooltip}),
        "text_encoder": (TEXT_ENCODER, {"tooltip": "From Load umT5 Text Encoder."}),
        "vae": (VAE, {"tooltip": "From Load Wan VAE."}),
        "keyframe_encoder": (KEYFRAME_ENCODER,
                             {"tooltip": "From Load Keyframe Encoder: picks this shot's keyframes for the memory."}),
        "memory": (BANK, {"tooltip": "The memory bank from the previous shot (or an empty / reference bank)."}),
    }


def _optional_inputs() -> dict:
    return {"negative_prompt": inputs.negative_prompt(), "shot_number": inputs.shot_number(), "preset": inputs.preset()}


def _check_prompt(prompt: str) -> None:
    if not prompt.strip():
        raise SettingsError("prompt is empty: describe the shot, or connect the prompt output of Story Shot.")


def _make_room(model: WanExperts, device: torch.device) -> None:
    """Ask the host to unload its own models so the experts fit (block-swapped experts need little)."""
    if device.type != "cuda" or model.offload == Offload.BLOCKS:
        return
    expert_bytes = sum(p.numel() * p.element_size() for p in model.high.parameters())
    host.make_room(device, expert_bytes * (1 if model.offload == Offload.EXPERTS else 2))


@contextlib.contextmanager
def naming_node(label: str) -> Iterator[None]:
    """An error inside a node says which shot (or node) it is about: the host's error dialog names only the node
    type, and a story has many nodes of one type."""
    try:
        yield
    except GenerationInterrupted:
        raise
    except StoryMemError as error:
        raise type(error)(f"{label}: {error}") from error


def naming_shot(number: int, prompt: str) -> contextlib.AbstractContextManager[None]:
    """`naming_node` for a shot: its number, and its prompt's start where it has one."""
    return naming_node(f"shot {number} ('{excerpt(prompt, 40)}')" if prompt.strip() else f"shot {number}")


def node_title(unique_id: str | None, prompt: dict | None) -> str:
    """The node's title as the workflow shows it (ComfyUI's hidden UNIQUE_ID and PROMPT inputs), for messages."""
    title = ((prompt or {}).get(str(unique_id)) or {}).get("_meta", {}).get("title")
    return f"'{title}'" if title else f"node {unique_id}"


def _shot(request: ShotRequest, model: WanExperts, text_encoder: TextModel, vae: WanVAE, keyframe_model: KeyframeModel,
          cut: bool) -> dict:
    """The shot made by the engine's `run_shot` (as the Story Runner and the CLI make theirs) on one progress bar,
    and the node result: its frames, the bank after it, its last frames, and what the frontend shows (strip, title,
    video)."""
    device = host.device()
    progress = host.ShotProgress(request.settings.steps, f"shot {request.index + 1} ({request.mode.upper()})")
    _make_room(model, device)
    with model.sampling(device, host.offload_device()) as experts:
        models = ShotModels(experts, text_encoder.for_dit(model.config.text_len, host.offload_device()), vae,
                            keyframe_model.encoder, keyframe_model.scorer)
        outcome = run_shot(request, models, progress, progress.preview, progress.decoded)
    frames, bank = outcome.frames, outcome.memory
    result = with_bank_ui(bank, frames_to_image_batch(frames), bank, frames_to_image_batch(frames[-MOTION_FRAMES:]))
    result["ui"].update(shot_ui(request.index + 1, request.mode, cut, request.prompt, frames))
    progress.finished()
    return result


@dataclass(frozen=True, kw_only=True)
class FirstShotWidgets(inputs.ShotWidgets):
    cfg_high: float
    cfg_low: float
    shift: float
    solver: str
    preset: str = Preset.NONE


@dataclass(frozen=True, kw_only=True)
class MemoryShotWidgets(inputs.ShotWidgets):
    cut: bool
    mode: str
    cfg: float
    shift: float
    solver: str
    preset: str = Preset.NONE
    memory_positions: str = DEFAULT_MEMORY_POSITIONS


class FirstShot:
    DESCRIPTION = ("The story's first shot from its prompt alone, with the Wan2.2 T2V experts; its keyframes start the "
                   "memory.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **_common_inputs("Wan2.2 T2V-A14B experts."),
                "prompt": inputs.prompt(),
                "seed": inputs.seed(),
                "steps": inputs.steps(T2V_SETTINGS.steps),
                "cfg_high": ("FLOAT",
                             {"default": T2V_SETTINGS.guide_high, "min": 0.0, "max": 30.0, "step": 0.1,
                              "tooltip": "Guidance of the high-noise expert."}),
                "cfg_low": ("FLOAT",
                            {"default": T2V_SETTINGS.guide_low, "min": 0.0, "max": 30.0, "step": 0.1,
                             "tooltip": "Guidance of the low-noise expert."}),
                "shift": inputs.shift(T2V_SETTINGS.shift),
                "solver": inputs.solver(),
                "width": inputs.size("width", 832),
                "height": inputs.size("height", 480),
                "frames": inputs.frames(),
            },
            "optional": _optional_inputs(),
        }

    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = OUTPUTS
    FUNCTION = "generate"
    CATEGORY = CATEGORY

    def generate(self, model: WanExperts, text_encoder: TextModel, vae: WanVAE, keyframe_encoder: KeyframeModel,
                 memory: MemoryBank, **widgets) -> dict:
        shot = FirstShotWidgets(**widgets)
        number = shot.shot_number or 1
        with naming_shot(number, shot.prompt):
            model.require(ExpertKind.T2V, "First Shot")
            check_size(shot.width, shot.height)
            _check_prompt(shot.prompt)
            given = inputs.sampler_values(FirstShot, steps=shot.steps, shift=shot.shift, solver=shot.solver,
                                          cfg_low=shot.cfg_low, cfg_high=shot.cfg_high)
            settings = replace(sampler_settings(shot.preset, ShotMode.T2V, given), seed=shot.seed)
            model = with_preset_loras(model, shot.preset)
            request = ShotRequest(shot.prompt, ShotMode.T2V, memory, (shot.width, shot.height), shot.frames, settings,
                                  number - 1, negative_prompt=shot.negative_prompt)
            return _shot(request, model, text_encoder, vae, keyframe_encoder, cut=True)


class MemoryShot:
    DESCRIPTION = ("A shot conditioned on the memory bank (StoryMem M2V); without a cut it also continues the previous "
                   "shot from its last frame (MI2V) or last 5 frames (MM2V).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **_common_inputs("Wan2.2 I2V-A14B experts with the StoryMem LoRA."),
                "prompt": inputs.prompt(),
                "cut": inputs.cut(),
                "mode": inputs.shot_mode(),
                "seed": inputs.seed(),
                "steps": inputs.steps(inputs.M2V.steps),
                "cfg": inputs.cfg("Classifier-free guidance of both experts (3.5 in StoryMem)."),
                "shift": inputs.shift(inputs.M2V.shift),
                "solver": inputs.solver(),
                "width": inputs.size("width", 832),
                "height": inputs.size("height", 480),
                "frames": inputs.frames(),
            },
            "optional": {
                "previous_frames": ("IMAGE",
                                    {"tooltip": "The previous shot's last_frames, for MI2V / MM2V continuation."}),
                **_optional_inputs(),
                "memory_positions": inputs.memory_positions(),
            },
        }

    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = OUTPUTS
    FUNCTION = "generate"
    CATEGORY = CATEGORY

    def generate(self, model: WanExperts, text_encoder: TextModel, vae: WanVAE, keyframe_encoder: KeyframeModel,
                 memory: MemoryBank, previous_frames: torch.Tensor | None = None, **widgets) -> dict:
        shot = MemoryShotWidgets(**widgets)
        number = shot.shot_number or next_shot(memory) + 1
        with naming_shot(number, shot.prompt):
            model.require(ExpertKind.I2V, "StoryMem Shot")
            check_size(shot.width, shot.height)
            mode = resolve_mode(shot.mode, shot.cut, previous_frames is not None)
            _check_prompt(shot.prompt)
            given = inputs.sampler_values(MemoryShot, steps=shot.steps, shift=shot.shift, solver=shot.solver,
                                          cfg=shot.cfg)
            settings = replace(sampler_settings(shot.preset, ShotMode.M2V, given), seed=shot.seed)
            model = with_preset_loras(model, shot.preset)
            request = ShotRequest(
                shot.prompt, mode, memory, (shot.width, shot.height), shot.frames, settings, number - 1,
                previous_frames=None if mode == ShotMode.M2V else image_batch_to_frames(previous_frames),
                negative_prompt=shot.negative_prompt, memory_positions=shot.memory_positions,
            )
            return _shot(request, model, text_encoder, vae, keyframe_encoder, shot.cut)


NODE_CLASS_MAPPINGS = {"StoryMemFirstShot": FirstShot, "StoryMemShot": MemoryShot}
NODE_DISPLAY_NAME_MAPPINGS = {"StoryMemFirstShot": "First Shot (T2V)", "StoryMemShot": "StoryMem Shot"}
