"""Story Runner: a whole story script in one node, through the engine's resumable story loop.

The story goes to `<output>/<output_folder>/<story name>-<settings hash>`: the same story with the same
settings finds its finished shots there and continues (after a Cancel, say); other settings or another
seed get a fresh folder, so changing them really regenerates.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

import torch

from storymem_core.choices import DEFAULT_MEMORY_POSITIONS
from storymem_core.errors import StoryMemError
from storymem_core.memory import MemoryBank
from storymem_core.pipeline import StoryModels, StoryOptions, run_story
from storymem_core.sampling import SamplerSettings
from storymem_core.shot import T2V_SETTINGS
from storymem_core.story import Story
from storymem_core.story_folder import UNRECORDED_PLACEMENT, StoryFolder, pending_shots
from storymem_core.video import frames_to_image_batch, image_batch_to_frames, read_mp4
from storymem_core.wan.vae import WanVAE

from . import host, inputs
from .loaders import with_preset
from .previews import bank_ui, video_ui
from .types import BANK, KEYFRAME_ENCODER, MODEL, STORY, TEXT_ENCODER, VAE, KeyframeModel, TextModel, WanExperts

CATEGORY = "StoryMem/story"
M2V = StoryOptions().m2v


def story_folder(root: Path, story: Story, options: StoryOptions, sources: list[str]) -> Path:
    """The story's folder: named after it, suffixed by a hash of everything that shapes its frames."""
    settings = asdict(options)
    if settings["memory_positions"] == UNRECORDED_PLACEMENT:
        del settings["memory_positions"]  # as before placements were recorded: stories begun then keep their folders
    fingerprint = json.dumps([asdict(story), settings, sources], sort_keys=True, default=str)
    safe_name = "".join(c if c.isalnum() or c in "-_" else "_" for c in story.name)[:60] or "story"
    return root / f"{safe_name}-{hashlib.sha1(fingerprint.encode()).hexdigest()[:10]}"


class StoryRunner:
    DESCRIPTION = ("Generates every shot of a story script in order (first shot, then memory shots, keyframes into the "
                   "bank after each), saving each finished shot; re-running continues where it stopped.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "story": (STORY, {"tooltip": "The story from Story Script."}),
                "model": (MODEL, {"tooltip": "Wan2.2 I2V-A14B experts with the StoryMem LoRA (memory shots)."}),
                "text_encoder": (TEXT_ENCODER, {"tooltip": "From Load umT5 Text Encoder."}),
                "vae": (VAE, {"tooltip": "From Load Wan VAE."}),
                "keyframe_encoder": (KEYFRAME_ENCODER, {"tooltip": "From Load Keyframe Encoder."}),
                "first_shot": (["t2v", "mr2v"],
                               {"default": "t2v", "tooltip": "t2v: first shot from text (connect t2v_model); mr2v: "
                                                             "first shot from reference images as memory (connect "
                                                             "reference_images)."}),
                "continuation": (["m2v", "mi2v", "mm2v"],
                                 {"default": "mi2v", "tooltip": "For shots without a cut: m2v (memory only), mi2v "
                                                                "(from the last frame) or mm2v (last 5 frames), "
                                                                "matching the LoRA."}),
                "seed": inputs.seed("Seed of shot 1; shot k uses seed + k - 1."),
                "steps": inputs.steps(M2V.steps),
                "cfg": ("FLOAT",
                        {"default": M2V.guide_low, "min": 0.0, "max": 30.0, "step": 0.1,
                         "tooltip": "Guidance of the memory shots (the T2V first shot keeps Wan2.2's 3 / 4)."}),
                "shift": inputs.shift(M2V.shift),
                "solver": inputs.solver(),
                "width": inputs.size("width", 832),
                "height": inputs.size("height", 480),
                "frames": inputs.frames(),
                "fps": ("INT",
                        {"default": 16, "min": 1, "max": 120, "tooltip": "Frames per second of the saved videos."}),
                **inputs.memory_size(),
                "output_folder": ("STRING",
                                  {"default": "storymem/stories",
                                   "tooltip": "Folder under the output folder; each story and setting gets its own "
                                              "subfolder."}),
                "from_shot": ("INT",
                              {"default": 0, "min": 0, "max": 999,
                               "tooltip": "0: continue where the story stopped. n: regenerate from shot n on, from the "
                                          "bank before it."}),
            },
            "optional": {
                "t2v_model": (MODEL, {"tooltip": "Wan2.2 T2V-A14B experts, for a T2V first shot."}),
                "reference_images": ("IMAGE", {"tooltip": "Reference images, the first memory of an MR2V story."}),
                "negative_prompt": inputs.negative_prompt(),
                "preset": inputs.preset(),
                "memory_positions": inputs.memory_positions(),
            },
        }

    RETURN_TYPES = ("IMAGE", BANK, "STRING")
    RETURN_NAMES = ("film", "memory", "video_path")
    OUTPUT_TOOLTIPS = ("Every shot's frames in order (read back from the film mp4).",
                       "The memory bank after the last shot.", "The film mp4.")
    FUNCTION = "run"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True

    def run(self, story: Story, model: WanExperts, text_encoder: TextModel, vae: WanVAE,
            keyframe_encoder: KeyframeModel, first_shot: str, continuation: str, seed: int, steps: int, cfg: float,
            shift: float, solver: str,
            width: int, height: int, frames: int, fps: int, max_size: int, fixed: int, output_folder: str,
            from_shot: int, t2v_model: WanExperts | None = None, reference_images: torch.Tensor | None = None,
            negative_prompt: str = "", preset: str = "none",
            memory_positions: str = DEFAULT_MEMORY_POSITIONS) -> dict:
        model.require("i2v", "Story Runner")
        if from_shot > len(story.shots):
            raise StoryMemError(f"from_shot {from_shot} is not a shot of '{story.name}' (it has shots 1 to "
                                f"{len(story.shots)}): use 0 to continue, or one of those.")
        if first_shot == "t2v":
            if t2v_model is None:
                raise StoryMemError("first_shot is t2v but t2v_model is not connected: load the Wan2.2 T2V experts, or "
                                    "choose mr2v.")
            t2v_model.require("t2v", "Story Runner's t2v_model")
        elif reference_images is None:
            raise StoryMemError("first_shot is mr2v but reference_images is not connected: connect a Load Image node "
                                "with your references, or choose t2v.")
        options = StoryOptions(
            first_shot=first_shot, continuation=continuation, max_memory=max_size, fixed_memory=fixed, seed=seed,
            size_wh=(width, height), frames=frames, fps=fps, negative_prompt=negative_prompt,
            memory_positions=memory_positions,
            m2v=SamplerSettings(steps, shift, solver, M2V.boundary, cfg, cfg),
            t2v=SamplerSettings(steps, T2V_SETTINGS.shift, solver, T2V_SETTINGS.boundary, T2V_SETTINGS.guide_low,
                                T2V_SETTINGS.guide_high),
        )
        t2v_model = t2v_model if first_shot == "t2v" else None
        model, m2v = with_preset(model, preset, options.m2v, "m2v")
        if t2v_model is not None:
            t2v_model, t2v = with_preset(t2v_model, preset, options.t2v, "t2v")
            options = replace(options, t2v=t2v)
        options = replace(options, m2v=m2v)
        references = (None if reference_images is None or first_shot != "mr2v"
                      else image_batch_to_frames(reference_images))
        sources = [model.name, *(f"{lora.name}@{lora.strength}" for lora in model.loras), text_encoder.name,
                   keyframe_encoder.name, "" if t2v_model is None else t2v_model.name,
                   "" if references is None else hashlib.sha1(references.numpy().tobytes()).hexdigest()]
        folder = story_folder(host.output_dir() / host.output_name(output_folder, "output_folder", "storymem/stories"),
                              story, options, sources)
        device = host.device()
        with contextlib.ExitStack() as stack:
            models = StoryModels(
                text_encoder=text_encoder.for_dit(model.config.text_len, host.offload_device()),
                vae=vae,
                m2v=stack.enter_context(model.sampling(device, host.offload_device())),
                keyframe_encoder=keyframe_encoder.encoder,
                t2v=(None if t2v_model is None
                     else stack.enter_context(t2v_model.sampling(device, host.offload_device()))),
                aesthetic_scorer=keyframe_encoder.scorer,
            )
            start = from_shot - 1 if from_shot else None
            total_steps = len(pending_shots(story, folder, start)) * options.m2v.steps
            film = run_story(story, models, options, folder, None if references is None else list(references), start,
                             on_step=host.ProgressSteps(total_steps, f"story '{story.name}'"))
        bank = MemoryBank.load(StoryFolder(folder).bank(story.shots[-1].index))
        result = (frames_to_image_batch(read_mp4(film)), bank, str(film))
        return {"ui": {**bank_ui(bank), **video_ui(film)}, "result": result}


NODE_CLASS_MAPPINGS = {"StoryMemStoryRunner": StoryRunner}
NODE_DISPLAY_NAME_MAPPINGS = {"StoryMemStoryRunner": "Story Runner"}
