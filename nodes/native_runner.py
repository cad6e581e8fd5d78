"""Native Story Runner: a whole story script on ComfyUI's own models (any loader: Load Diffusion Model, GGUF, with
LoRAs), through the same planning step (`story_plan.plan_story`) and story loop (`pipeline.run_story`) as the engine's
Story Runner, so its story folders keep the same contract: resumable, re-rolled from a shot, one folder per story and
settings (named by `story_folder_name`). Only its shots differ: each is made by `native.native_shot`.
"""

from __future__ import annotations

from dataclasses import replace

from storymem_core.pipeline import run_story
from storymem_core.story_plan import plan_story

from . import inputs
from .runner_node import NODE_NAMES, RUNNER_OUTPUTS, film_result, story_choices, story_inputs, story_shape
from .types import KEYFRAME_ENCODER, STORY

CATEGORY = "StoryMem/native"
T2V_MODELS = "t2v_model_high and t2v_model_low"
NATIVE_NAMES = replace(NODE_NAMES, no_t2v_experts=f"{T2V_MODELS} are not both connected")


class NativeStoryRunner:
    DESCRIPTION = ("Generates every shot of a story script on ComfyUI's own Wan2.2 models (first shot, then memory "
                   "shots, keyframes into the bank after each), saving each finished shot as the Story Runner does; "
                   "re-running continues where it stopped.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "story": (STORY, {"tooltip": "The story from Story Script."}),
                "model_high": ("MODEL", {"tooltip": "The Wan2.2 I2V high-noise expert with the StoryMem LoRA (and its "
                                                    "shift, e.g. ModelSamplingSD3 at 4)."}),
                "model_low": ("MODEL", {"tooltip": "The Wan2.2 I2V low-noise expert with the StoryMem LoRA."}),
                "clip": ("CLIP", {"tooltip": "The umT5 from Load CLIP (type wan): encodes each shot's prompt."}),
                "vae": ("VAE", {"tooltip": "The Wan2.1 VAE (wan_2.1_vae.safetensors) from Load VAE."}),
                "keyframe_encoder": (KEYFRAME_ENCODER, {"tooltip": "From Load Keyframe Encoder."}),
                **story_choices(T2V_MODELS),
                "steps": inputs.steps(inputs.M2V.steps),
                "cfg": inputs.cfg("Guidance of the memory shots (the T2V first shot keeps Wan2.2's 3 / 4)."),
                "sampler_name": inputs.sampler_name(),
                "scheduler": inputs.scheduler(),
                **story_shape(),
            },
            "optional": {
                "t2v_model_high": ("MODEL", {"tooltip": "The Wan2.2 T2V high-noise expert (shift 12 as in Wan2.2), "
                                                        "for a T2V first shot."}),
                "t2v_model_low": ("MODEL", {"tooltip": "The Wan2.2 T2V low-noise expert, for a T2V first shot."}),
                "reference_images": ("IMAGE", {"tooltip": "Reference images, the first memory of an MR2V story."}),
                "negative_prompt": inputs.negative_prompt(),
                "switch_at_step": inputs.switch_at_step(),
                "memory_positions": inputs.memory_positions(),
                **inputs.ablations(),
            },
        }

    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = RUNNER_OUTPUTS
    FUNCTION = "run"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True

    def run(self, **node_inputs) -> dict:
        """ComfyUI passes every input by name; they become the engine's `StoryInputs`, planned and run shot by shot on
        ComfyUI's models."""
        from . import native  # ComfyUI's modules: importable only inside ComfyUI, where this node is registered

        plan = plan_story(story_inputs(node_inputs, NativeStoryRunner, NATIVE_NAMES))
        t2v_high, t2v_low = node_inputs.get("t2v_model_high"), node_inputs.get("t2v_model_low")
        plan.check_t2v_experts(t2v_high is not None and t2v_low is not None)
        sampling = (node_inputs["sampler_name"], node_inputs["scheduler"], node_inputs.get("switch_at_step", -1))
        t2v = native.NativeExperts(t2v_high, t2v_low, *sampling) if plan.needs_t2v_experts else None
        models = native.NativeStoryModels(native.NativeExperts(node_inputs["model_high"], node_inputs["model_low"],
                                                               *sampling),
                                          node_inputs["clip"], node_inputs["vae"], node_inputs["keyframe_encoder"], t2v)
        folder = plan.named_folder(native.story_sources(models, sampling))
        film = run_story(plan.story, models, plan.options, folder, list(plan.references) or None, plan.start)
        return film_result(plan, folder, film)


NODE_CLASS_MAPPINGS = {"StoryMemNativeStoryRunner": NativeStoryRunner}
NODE_DISPLAY_NAME_MAPPINGS = {"StoryMemNativeStoryRunner": "Native Story Runner"}
