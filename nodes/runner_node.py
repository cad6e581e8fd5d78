"""Story Runner: a whole story script in one node, through the engine's resumable story loop.

The story goes to `<output>/<output_folder>/<story name>-<settings hash>`: the same story with the same
settings finds its finished shots there and continues (after a Cancel, say); other settings or another
seed get a fresh folder, so changing them really regenerates.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from storymem_core.bank_files import load_bank
from storymem_core.choices import CONTINUATIONS, DEFAULT_MEMORY_POSITIONS, ExpertKind, FirstShot, Preset, ShotMode
from storymem_core.pipeline import StoryModels, run_story
from storymem_core.presets import SamplerValues
from storymem_core.story_folder import StoryFolder, pending_shots
from storymem_core.story_plan import InputNames, StoryInputs, StoryPlan, plan_story
from storymem_core.video import frames_to_image_batch, image_batch_to_frames, read_mp4
from storymem_core.wan.vae import WanVAE

from . import host, inputs
from .loaders import with_preset_loras
from .previews import bank_ui, video_ui
from .types import BANK, KEYFRAME_ENCODER, MODEL, STORY, TEXT_ENCODER, VAE, KeyframeModel, TextModel, WanExperts

CATEGORY = "StoryMem/story"
# what both Story Runners give (`film_result`): types, names, tooltips
RUNNER_OUTPUTS = (
    ("IMAGE", BANK, "STRING"),
    ("film", "memory", "video_path"),
    ("Every shot's frames in order (read back from the film mp4).", "The memory bank after the last shot.",
     "The film mp4."),
)


NODE_NAMES = InputNames(
    from_shot="from_shot", continue_story="use 0", out="output_folder",
    no_references="reference_images is not connected",
    give_references="connect a Load Image node with your references", choose_mr2v="set first_shot to mr2v",
    choose_t2v="set first_shot to t2v", no_t2v_experts="t2v_model is not connected",
)
SAMPLER_WIDGETS = ("steps", "cfg", "shift", "solver")


def story_choices(t2v_input: str) -> dict:
    """How a story starts and goes on, and its seed: widgets both Story Runners declare alike (`t2v_input` names the
    runner's T2V experts)."""
    return {
        "first_shot": (FirstShot.names(),
                       {"default": FirstShot.T2V,
                        "tooltip": f"t2v: first shot from text (connect {t2v_input}); mr2v: first shot from reference "
                                   "images as memory (connect reference_images)."}),
        "continuation": ([str(mode) for mode in CONTINUATIONS],
                         {"default": ShotMode.MI2V,
                          "tooltip": "For shots without a cut: m2v (memory only), mi2v (from the last frame) or mm2v "
                                     "(last 5 frames), matching the LoRA."}),
        "seed": inputs.seed("Seed of shot 1; shot k uses seed + k - 1."),
    }


def story_shape() -> dict:
    """The film's size and timing, the memory's limits and the story's folder: widgets both Story Runners declare."""
    return {
        "width": inputs.size("width", 832),
        "height": inputs.size("height", 480),
        "frames": inputs.frames(),
        "fps": ("INT", {"default": 16, "min": 1, "max": 120, "tooltip": "Frames per second of the saved videos."}),
        **inputs.memory_size(),
        "output_folder": ("STRING",
                          {"default": "storymem/stories",
                           "tooltip": "Folder under the output folder; each story and setting gets its own "
                                      "subfolder."}),
        "from_shot": ("INT",
                      {"default": 0, "min": 0, "max": 999,
                       "tooltip": "0: continue where the story stopped. n: regenerate from shot n on, from the bank "
                                  "before it."}),
    }


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
                **story_choices("t2v_model"),
                "steps": inputs.steps(inputs.M2V.steps),
                "cfg": inputs.cfg("Guidance of the memory shots (the T2V first shot keeps Wan2.2's 3 / 4)."),
                "shift": inputs.shift(inputs.M2V.shift),
                "solver": inputs.solver(),
                **story_shape(),
            },
            "optional": {
                "t2v_model": (MODEL, {"tooltip": "Wan2.2 T2V-A14B experts, for a T2V first shot."}),
                "reference_images": ("IMAGE", {"tooltip": "Reference images, the first memory of an MR2V story."}),
                "negative_prompt": inputs.negative_prompt(),
                "preset": inputs.preset(),
                "memory_positions": inputs.memory_positions(),
                **inputs.ablations(),
            },
        }

    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = RUNNER_OUTPUTS
    FUNCTION = "run"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True

    def run(self, **node_inputs) -> dict:
        """ComfyUI passes every input by name; they become the engine's `StoryInputs`, planned and run."""
        model, t2v_model = node_inputs["model"], node_inputs.get("t2v_model")
        text_encoder, keyframe_encoder = node_inputs["text_encoder"], node_inputs["keyframe_encoder"]
        model.require(ExpertKind.I2V, "Story Runner")
        plan = plan_story(story_inputs(node_inputs))
        plan.check_t2v_experts(t2v_model is not None)
        if plan.needs_t2v_experts:
            t2v_model.require(ExpertKind.T2V, "Story Runner's t2v_model")
        preset = node_inputs.get("preset", Preset.NONE)
        model = with_preset_loras(model, preset)
        t2v_model = with_preset_loras(t2v_model, preset) if plan.needs_t2v_experts else None
        folder = plan.named_folder(model_names(model, text_encoder, keyframe_encoder, t2v_model))
        film = _run(plan, folder, model, t2v_model, text_encoder, node_inputs["vae"], keyframe_encoder)
        return film_result(plan, folder, film)


def film_result(plan: StoryPlan, folder: Path, film: Path) -> dict:
    """A Story Runner's result: the film's frames, the bank after the last shot, the film's path, and what the
    frontend shows (the bank's strip, the film)."""
    bank = load_bank(StoryFolder(folder).bank(plan.story.shots[-1].index))
    result = (frames_to_image_batch(read_mp4(film)), bank, str(film))
    return {"ui": {**bank_ui(bank), **video_ui(film)}, "result": result}


def story_inputs(given: dict, node: type | None = None, names: InputNames = NODE_NAMES) -> StoryInputs:
    """A Story Runner's inputs (`node`'s, the engine's Story Runner by default) as a story's. A sampler widget left at
    its default is not set, so a preset may fill it (values the user changed win over the preset); cfg and shift set
    the memory shots, a T2V first shot keeps Wan2.2's."""
    node = node or StoryRunner
    memory_shots = inputs.sampler_values(node, **{name: given[name] for name in SAMPLER_WIDGETS if name in given})
    references = given.get("reference_images")
    return StoryInputs(
        story=given["story"],
        out=host.output_dir() / host.output_name(given["output_folder"], "output_folder", "storymem/stories"),
        names=names, first_shot=given["first_shot"], continuation=given["continuation"], seed=given["seed"],
        m2v=memory_shots, t2v=SamplerValues(steps=memory_shots.steps, solver=memory_shots.solver),
        preset=given.get("preset", Preset.NONE),
        size_wh=(given["width"], given["height"]), frames=given["frames"], fps=given["fps"],
        max_memory=given["max_size"], fixed_memory=given["fixed"],
        memory_positions=given.get("memory_positions", DEFAULT_MEMORY_POSITIONS),
        negative_prompt=given.get("negative_prompt", ""),
        references=() if references is None else tuple(image_batch_to_frames(references)),
        from_shot=given["from_shot"] or None,  # 0: continue
        ablations=inputs.given_ablations(given),
    )


def model_names(model: WanExperts, text_encoder: TextModel, keyframe_encoder: KeyframeModel,
                t2v_model: WanExperts | None) -> list[str]:
    """What names the story folder besides the options: every model and LoRA the story runs."""
    return [model.name, *(f"{lora.name}@{lora.strength}" for lora in model.loras), text_encoder.name,
            keyframe_encoder.name, "" if t2v_model is None else t2v_model.name]


def _run(plan: StoryPlan, folder: Path, model: WanExperts, t2v_model: WanExperts | None, text_encoder: TextModel,
         vae: WanVAE, keyframe_encoder: KeyframeModel) -> Path:
    """The story loop on the host's device, one progress bar over the sampling steps of the shots still to make."""
    device = host.device()
    with contextlib.ExitStack() as stack:
        models = StoryModels(
            text_encoder=text_encoder.for_dit(model.config.text_len, host.offload_device()),
            vae=vae,
            m2v=stack.enter_context(model.sampling(device, host.offload_device())),
            keyframe_encoder=keyframe_encoder.encoder,
            t2v=None if t2v_model is None else stack.enter_context(t2v_model.sampling(device, host.offload_device())),
            aesthetic_scorer=keyframe_encoder.scorer,
        )
        total_steps = len(pending_shots(plan.story, folder, plan.start)) * plan.options.m2v.steps
        return run_story(plan.story, models, plan.options, folder, list(plan.references) or None, plan.start,
                         on_step=host.ProgressSteps(total_steps, f"story '{plan.story.name}'"))


NODE_CLASS_MAPPINGS = {"StoryMemStoryRunner": StoryRunner}
NODE_DISPLAY_NAME_MAPPINGS = {"StoryMemStoryRunner": "Story Runner"}
