"""Input declarations several nodes share (ComfyUI V1 `INPUT_TYPES` entries), each with its tooltip."""

from __future__ import annotations

from dataclasses import dataclass

from storymem_core.choices import DEFAULT_MEMORY_POSITIONS, Ablation, MemoryPositions, NodeShotMode, Preset, Solver
from storymem_core.limits import MAX_FRAMES, MAX_MEMORY, MAX_SEED, MAX_SHIFT, MAX_SIDE, MAX_STEPS, MIN_SHIFT
from storymem_core.presets import SamplerValues
from storymem_core.story_plan import StoryOptions

from . import host

M2V = StoryOptions().m2v  # StoryMem's memory-shot settings: the defaults of the shot and runner widgets


@dataclass(frozen=True, kw_only=True)
class ShotWidgets:
    """The widgets every shot node has, as ComfyUI passes them (by name, with the node's other widgets): each node's
    own widgets extend these, so its function names its models and frames and takes the widgets as one value."""

    prompt: str
    seed: int
    steps: int
    width: int
    height: int
    frames: int
    negative_prompt: str = ""
    shot_number: int | None = None


def sampler_values(node: type, **widgets) -> SamplerValues:
    """The sampler widgets of `node` (steps, and those of shift, solver, cfg or cfg_low / cfg_high it has) as the user
    set them: one left at its declared default counts as not set, so a preset fills it (values the user changed win
    over it)."""
    declared = node.INPUT_TYPES()["required"]
    changed = {name: None if value == declared[name][1]["default"] else value for name, value in widgets.items()}
    cfg = changed.get("cfg")
    return SamplerValues(steps=changed["steps"], shift=changed.get("shift"), solver=changed.get("solver"),
                         guide_low=changed.get("cfg_low", cfg), guide_high=changed.get("cfg_high", cfg))


def model_file(folder: str, tooltip: str) -> tuple:
    """A COMBO of the files in a ComfyUI model folder."""
    return (host.model_names(folder), {"tooltip": f"{tooltip} (files in models/{folder})."})


def seed(tooltip: str = "Noise seed of this shot; change it to re-roll the shot with the same memory.") -> tuple:
    return ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True, "tooltip": tooltip})


def steps(default: int = 40) -> tuple:
    return ("INT",
            {"default": default, "min": 1, "max": MAX_STEPS, "tooltip": "Sampling steps (40 in Wan2.2 and StoryMem)."})


def shift(default: float) -> tuple:
    return ("FLOAT",
            {"default": default, "min": MIN_SHIFT, "max": MAX_SHIFT, "step": 0.1,
             "tooltip": f"Flow-matching schedule shift ({default:g} by default for this mode)."})


def memory_positions() -> tuple:
    """Where the memory frames sit in time; last among a node's optional inputs, so saved workflows keep loading."""
    return (MemoryPositions.names(), {"default": DEFAULT_MEMORY_POSITIONS, "advanced": True, "tooltip":
            "upstream (default): memory at time positions -5M..-5 and the shot from 0, as the StoryMem authors' code "
            "since their fix of January 2026 (issue #17) and as the LoRA was trained. first-release: memory and shot "
            "numbered 0..M+T-1 as in the first release; only to continue a story begun with it."})


def cut() -> tuple:
    return ("BOOLEAN", {"default": True, "tooltip": (
        "True: the shot starts with a cut (memory only). False: it continues the previous shot.")})


def shot_mode() -> tuple:
    return (NodeShotMode.names(), {"default": NodeShotMode.AUTO_MI2V, "tooltip": (
        "auto-mi2v / auto-mm2v: M2V after a cut, else MI2V (last frame) / MM2V (last 5 frames), matching the StoryMem "
        "LoRA loaded. m2v, mi2v, mm2v force a mode.")})


def cfg(tooltip: str) -> tuple:
    """Classifier-free guidance of memory shots, StoryMem's 3.5 by default."""
    return ("FLOAT", {"default": M2V.guide_low, "min": 0.0, "max": 30.0, "step": 0.1, "tooltip": tooltip})


def solver() -> tuple:
    return (Solver.names(), {"default": Solver.UNIPC, "tooltip": "Flow-matching solver (unipc as in Wan2.2)."})


def size(axis: str, default: int) -> tuple:
    return ("INT", {"default": default, "min": 16, "max": MAX_SIDE, "step": 16,
                    "tooltip": f"Video {axis} in pixels, a multiple of 16 (width x height is the pixel budget of "
                               "memory-conditioned shots)."})


def frames() -> tuple:
    return ("INT",
            {"default": 81, "min": 5, "max": MAX_FRAMES, "step": 4,
             "tooltip": "Frames per shot, of the form 4n+1 (81 = 5 s at 16 fps)."})


def prompt(tooltip: str = "What the shot shows (one shot prompt of the story).") -> tuple:
    return ("STRING", {"multiline": True, "default": "", "tooltip": tooltip})


def negative_prompt() -> tuple:
    return ("STRING",
            {"multiline": True, "default": "",
             "tooltip": "What to avoid; empty uses Wan2.2's standard negative prompt."})


def shot_number() -> tuple:
    return ("INT",
            {"forceInput": True, "min": 1,
             "tooltip": "1-based number of the shot in the story (from Story Shot); labels its keyframes. Unconnected: "
                        "one after the newest shot in the memory."})


def memory_size() -> dict:
    return {
        "max_size": ("INT",
                     {"default": 10, "min": 1, "max": MAX_MEMORY,
                      "tooltip": "Most keyframes the memory keeps (10 in StoryMem)."}),
        "fixed": ("INT",
                  {"default": 3, "min": 0, "max": MAX_MEMORY,
                   "tooltip": "The first keyframes that are never dropped (3 in StoryMem)."}),
    }


def preset() -> tuple:
    return (Preset.names(), {"default": Preset.NONE, "tooltip": (
        "lightx2v: the lightx2v 4-step distilled LoRAs from models/loras "
        "(wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise / _low_noise, the t2v v1.1 pair for T2V experts; "
        "Comfy-Org/Wan_2.2_ComfyUI_Repackaged) added to the experts, sampled as their authors do: 4 Euler steps, shift "
        "5, CFG 1, about 20x faster. Steps, cfg, shift and solver left at their defaults take the preset's values; "
        "one you changed wins over the preset. none: those inputs as set.")})


def node_identity() -> dict:
    """Hidden inputs by which a node finds its own title (`shot_nodes.node_title`), to name itself in messages."""
    return {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"}


def sampler_name() -> tuple:
    return (host.sampler_names(), {"default": "uni_pc", "tooltip": "ComfyUI's sampler (uni_pc as in Wan2.2)."})


def scheduler() -> tuple:
    return (host.scheduler_names(), {"default": "simple", "tooltip": "ComfyUI's scheduler of the sampling steps."})


def switch_at_step() -> tuple:
    return ("INT", {"default": -1, "min": -1, "max": MAX_STEPS, "advanced": True, "tooltip":
                    "Step at which the low-noise expert takes over. -1: where the high-noise model's sigma falls below "
                    "Wan2.2's expert boundary (0.9 for memory shots, 0.875 for text), on its shift and this scheduler "
                    "(step 13 of 40 at shift 4, as the expanded native workflow sets by hand)."})


ABLATION_TIPS = {
    Ablation.NO_SEMANTIC_SELECTION: "Paper ablation: keyframes evenly spaced instead of chosen by CLIP similarity.",
    Ablation.NO_AESTHETIC_FILTER: "Paper ablation: keyframes chosen without the quality filter.",
    Ablation.NO_MEMORY_SINK: "Paper ablation: no memory sink (fixed is taken as 0).",
}


def _ablation_widget(ablation: Ablation) -> str:
    return ablation.value.replace("-", "_")


def ablations() -> dict:
    """The paper's ablations (its Table 2), one switch each; the story folder records them."""
    return {_ablation_widget(a): ("BOOLEAN", {"default": False, "tooltip": tip}) for a, tip in ABLATION_TIPS.items()}


def given_ablations(given: dict) -> tuple[str, ...]:
    """The ablations switched on among a node's inputs."""
    return tuple(a for a in Ablation if given.get(_ablation_widget(a), False))
