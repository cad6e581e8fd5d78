"""Helper functions and constants shared by several test modules (fixtures are in conftest.py). Test modules
import them as a plain module: `from helpers import call, SHOT`."""

from __future__ import annotations

import copy
import json
import re
import socket
from pathlib import Path

import torch
from golden_data import golden_dir, vae_case, with_prefix
from safetensors.torch import load_file
from torch import nn

import nodes
from nodes.types import KeyframeModel, TextModel, WanExperts
from storymem_core.commands.cli import _parser
from storymem_core.commands.story import story_inputs
from storymem_core.folder_lock import LOCK_FILE
from storymem_core.memory import Keyframe, MemoryBank
from storymem_core.story import Story
from storymem_core.story_plan import StoryPlan, plan_story
from storymem_core.wan.dit import DiTConfig, WanDiT
from storymem_core.wan.vae import VAEConfig, WanVAE

# ------------------------------------------------------------------ nodes on the tiny models of `pack`


SHOT = dict(steps=2, width=32, height=32, frames=5, shift=4.0, solver="unipc")


def node(name: str):
    return nodes.NODE_CLASS_MAPPINGS[name]()


def call(node_type: str, **kwargs):
    """Run a node as ComfyUI does; returns (result tuple, ui dict)."""
    instance = node(node_type)
    returned = getattr(instance, instance.FUNCTION)(**kwargs)
    if isinstance(returned, dict):
        return tuple(returned["result"]), returned.get("ui", {})
    return tuple(returned), {}


def models(pack) -> dict:
    return dict(text_encoder=pack.text, vae=pack.vae, keyframe_encoder=pack.keyframes)


def runner_arguments(pack, story: Story, **overrides) -> dict:
    """Story Runner inputs for a T2V-first, MI2V story on the tiny models of `pack`; `overrides` replace any."""
    arguments = dict(story=story, model=pack.m2v, **models(pack), first_shot="t2v", continuation="mi2v", seed=0,
                     cfg=3.5, fps=8, max_size=4, fixed=1, output_folder="runner", from_shot=0, t2v_model=pack.t2v,
                     **SHOT)
    return arguments | overrides


def image_batch(count: int = 3, size: tuple[int, int] = (32, 32), seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, size[0], size[1], 3, generator=generator)


def files_under(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file below `root`: relative path -> (bytes, mtime in ns); a story folder's writer lock, which every run
    takes (and says who it is in), is not a file of the story."""
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE
    }


def reference_bank(count: int = 2) -> MemoryBank:
    images = (image_batch(count, seed=5) * 255).round().to(torch.uint8)
    return MemoryBank.from_images(list(images), max_size=4, fixed=1)


def first_shot(pack, seed: int = 0):
    empty = MemoryBank((), max_size=4, fixed=1)
    return call("StoryMemFirstShot", model=pack.t2v, **models(pack), memory=empty, prompt="a fox runs through snow",
                seed=seed, cfg_high=4.0, cfg_low=3.0, **SHOT)


def memory_shot(pack, memory: MemoryBank, seed: int = 1, **overrides):
    arguments = dict(model=pack.m2v, **models(pack), memory=memory, prompt="the fox reaches the lighthouse", cut=True,
                     mode="auto-mi2v", seed=seed, cfg=3.5, **SHOT)
    return call("StoryMemShot", **(arguments | overrides))


# ------------------------------------------------------------------ values compared by content


def weights(**modules: nn.Module | None) -> dict[str, torch.Tensor]:
    """A copy of every parameter and buffer of `modules` (None ones skipped), named '<part>.<tensor>'."""
    present = {part: module for part, module in modules.items() if module is not None}
    return {
        f"{part}.{name}": t.detach().clone()
        for part, module in present.items()
        for name, t in module.state_dict().items()
    }


def snapshot(value):
    """A deep copy that compares by content (tensors, banks, stories, model weights and LoRA lists)."""
    if isinstance(value, torch.Tensor):
        return ("tensor", value.detach().clone())
    if isinstance(value, MemoryBank):
        entries = [(k.image, k.shot, k.frame_index, dict(k.scores), k.pinned, k.source) for k in value.keyframes]
        return ("bank", value.max_size, value.fixed, entries)
    if isinstance(value, WanExperts):
        # a BlockSwapDiT wraps the expert; its weights live in .dit
        return ("experts", value.kind, value.offload, [lora.name for lora in value.loras],
                weights(high=getattr(value.high, "dit", value.high), low=getattr(value.low, "dit", value.low)))
    if isinstance(value, TextModel):
        return ("text encoder", value.name, weights(umt5=value.encoder.encoder))
    if isinstance(value, WanVAE):
        return ("vae", weights(vae=value))
    if isinstance(value, KeyframeModel):
        scorer = value.scorer if isinstance(value.scorer, nn.Module) else None
        return ("keyframe encoder", value.name, weights(clip=value.encoder.visual, aesthetic_head=scorer))
    if isinstance(value, (str, int, float, bool, type(None), Story)):
        return ("value", copy.deepcopy(value))
    return ("object", id(value))


def same(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


# ------------------------------------------------------------------ story scripts


VALID = {
    "story_name": "Two Scenes",
    "story_overview": "A short test story.",
    "scenes": [
        {"scene_num": 1, "video_prompts": ["a harbour at dawn", "the boat leaves"], "cut": [True, False]},
        {"scene_num": 2, "video_prompts": ["open sea"], "cut": [True]},
    ],
}


def edited(change) -> str:
    script = copy.deepcopy(VALID)
    change(script)
    return json.dumps(script)


def scene(n: int = 0):
    return lambda change: lambda script: change(script["scenes"][n])


BAD_SCRIPTS = {
    "malformed_json": ('{"story_overview": "x", "scenes": [}', "line 1, column 36"),
    "trailing_comma": ('{"story_overview": "x",\n "scenes": [],\n}', "line 3, column 1"),
    "empty_text": ("", "not valid JSON at line 1, column 1"),
    "top_level_list": ("[]", "the story is a list"),
    "overview_missing": (edited(lambda s: s.pop("story_overview")), "'story_overview' is missing"),
    "scenes_missing": (edited(lambda s: s.pop("scenes")), "'scenes' is missing"),
    "overview_number": (edited(lambda s: s.update(story_overview=3)), "story_overview is a number 3"),
    "name_null": (edited(lambda s: s.update(story_name=None)), "story_name is null; make it a string."),
    "name_list": (edited(lambda s: s.update(story_name=["a"])), "story_name is a list"),
    "scenes_object": (edited(lambda s: s.update(scenes={})), "scenes is an object"),
    "zero_scenes": (edited(lambda s: s.update(scenes=[])), "scenes is empty"),
    "scene_string": (edited(lambda s: s.update(scenes=["scene one"])), "scenes[0] is a string"),
    "scene_num_missing": (
        edited(scene(1)(lambda c: c.pop("scene_num"))),
        "scenes[1]: the field 'scene_num' is missing",
    ),
    "prompts_missing": (edited(scene(1)(lambda c: c.pop("video_prompts"))), "the field 'video_prompts' is missing"),
    "cut_missing": (edited(scene(0)(lambda c: c.pop("cut"))), "scenes[0]: the field 'cut' is missing"),
    "scene_num_string": (edited(scene(1)(lambda c: c.update(scene_num="2"))), 'scenes[1]: scene_num is a string "2"'),
    "scene_num_float": (edited(scene(0)(lambda c: c.update(scene_num=1.5))), "scene_num is a number 1.5"),
    "scene_num_bool": (edited(scene(0)(lambda c: c.update(scene_num=True))), "scene_num is a boolean"),
    "scene_num_zero": (edited(scene(0)(lambda c: c.update(scene_num=0))), "scene_num is 0; number scenes from 1"),
    "scene_num_twice": (edited(scene(1)(lambda c: c.update(scene_num=1))), "scene_num 1 is used twice"),
    "prompts_string": (
        edited(scene(0)(lambda c: c.update(video_prompts="a harbour"))),
        "scene 1: video_prompts is a string",
    ),
    "prompt_number": (
        edited(scene(1)(lambda c: c.update(video_prompts=[7]))),
        "scene 2, shot 1: video_prompts[0] is a number 7",
    ),
    "zero_shots": (edited(scene(1)(lambda c: c.update(video_prompts=[], cut=[]))), "scene 2: video_prompts is empty"),
    "empty_prompt": (
        edited(scene(0)(lambda c: c["video_prompts"].__setitem__(1, "  "))),
        "scene 1, shot 2: video_prompts[1] is empty",
    ),
    "cut_too_short": (edited(scene(0)(lambda c: c.update(cut=[True]))), "cut has 1 entries but video_prompts has 2"),
    "cut_too_long": (
        edited(scene(1)(lambda c: c.update(cut=[True, True]))),
        "scene 2: cut has 2 entries but video_prompts has 1",
    ),
    "cut_bool_not_list": (edited(scene(1)(lambda c: c.update(cut=True))), "cut is a boolean"),
    "cut_word": (
        edited(scene(0)(lambda c: c.update(cut=[True, "maybe"]))),
        'scene 1, shot 2, cut[1]: cut must be true or false, got "maybe"',
    ),
    "cut_number": (edited(scene(0)(lambda c: c.update(cut=[True, 0]))), "cut must be true or false, got 0"),
    "first_cut_false": (edited(scene(0)(lambda c: c.update(cut=[False, False]))), "scene 1, shot 1: cut[0] is false"),
    "first_cut_false_string": (edited(scene(0)(lambda c: c.update(cut=["False", True]))), "set it to true"),
    "first_frame_prompt_length": (
        edited(scene(0)(lambda c: c.update(first_frame_prompt=["one"]))),
        "first_frame_prompt has 1 entries but video_prompts has 2",
    ),
}


def story_script(folder: Path, shots: int) -> Path:
    """A one-scene story of `shots` shots; every third shot continues the one before (no cut)."""
    prompts = [f"Shot {i + 1}: a lantern keeper climbs the stairs of a lighthouse, step {i + 1}." for i in range(shots)]
    script = {"story_name": "Lantern", "story_overview": "A keeper lights the lamp.",
              "scenes": [{"scene_num": 1, "video_prompts": prompts, "cut": [i % 3 != 1 for i in range(shots)]}]}
    path = folder / "story.json"
    path.write_text(json.dumps(script))
    return path


def cli_plan(folder: Path, *flags: str, shots: int = 1) -> StoryPlan:
    """The plan the story command makes of a script of `shots` shots in `folder` with `flags` (--out defaults to
    folder/out)."""
    out = [] if "--out" in flags else ["--out", str(folder / "out")]
    args = _parser().parse_args(["story", str(story_script(folder, shots)), "--models-dir", "models", *out, *flags])
    return plan_story(story_inputs(args))


# ------------------------------------------------------------------ golden cases


def build_dit(case_config: dict, weights: dict) -> WanDiT:
    model = WanDiT(DiTConfig.from_dict({**case_config["config"], "model_type": case_config["model_type"]}))
    model.load_state_dict(weights)
    return model.eval()


def run_case(model: WanDiT, tensors: dict, **kwargs) -> torch.Tensor:
    y = tensors["y"][None] if "y" in tensors else None
    with torch.no_grad():
        return model(tensors["x"][None], tensors["t"].reshape(1), tensors["context"][None], y, **kwargs)[0]


def build_vae(config: dict, weights: dict | None = None) -> WanVAE:
    vae = WanVAE(VAEConfig.from_dict(config["config"]), config["latent_mean"], config["latent_std"])
    if weights is not None:
        vae.load_state_dict(weights)
    return vae.eval()


def loop_weights(config: dict, tensors: dict) -> dict:
    """Loop cases share one weights file, named in the case's `weights` note."""
    if any(k.startswith("high.") for k in tensors):
        return tensors
    name = re.search(r"(\S+\.safetensors)", config["weights"]).group(1)
    return load_file(str(golden_dir() / name))


def loop_vae(weights: dict) -> WanVAE:
    vae_config, vae_tensors = vae_case()
    vae_weights = with_prefix(weights, "vae.") or with_prefix(vae_tensors, "weight.")
    vae = WanVAE(VAEConfig.from_dict(vae_config["config"]), vae_config["latent_mean"], vae_config["latent_std"])
    vae.load_state_dict(vae_weights)
    return vae.eval()


def given_frames(config: dict, tensors: dict) -> dict:
    return {
        "first_frame": tensors["first_frame"] if config["first_frame"] else None,
        "motion_frames": tensors["motion_frames"] if config["motion_frames"] else None,
    }


def is_released_mi2v_bug(config: dict) -> bool:
    return config["first_frame"] and not config["released_code_mi2v_bug_fixed"]


# ------------------------------------------------------------------ checkpoint names


OURS_TO_HF_T5 = [  # the Hugging Face T5 names ComfyUI's umt5_xxl files use, written out by hand
    ("token_embedding", "shared"),
    ("blocks.{}.attn.{}", "encoder.block.{}.layer.0.SelfAttention.{}"),
    ("blocks.{}.pos_embedding.embedding", "encoder.block.{}.layer.0.SelfAttention.relative_attention_bias"),
    ("blocks.{}.norm1", "encoder.block.{}.layer.0.layer_norm"),
    ("blocks.{}.ffn.gate.0", "encoder.block.{}.layer.1.DenseReluDense.wi_0"),
    ("blocks.{}.ffn.fc1", "encoder.block.{}.layer.1.DenseReluDense.wi_1"),
    ("blocks.{}.ffn.fc2", "encoder.block.{}.layer.1.DenseReluDense.wo"),
    ("blocks.{}.norm2", "encoder.block.{}.layer.1.layer_norm"),
    ("norm", "encoder.final_layer_norm"),
]


def hf_t5_names(weights: dict) -> dict:
    renamed = {}
    for name, tensor in weights.items():
        layer, param = name.rsplit(".", 1)
        for ours, hf in OURS_TO_HF_T5:
            parts = layer.split(".")
            pattern = ours.split(".")
            if len(parts) == len(pattern) and all(p == "{}" or p == q for p, q in zip(pattern, parts)):
                values = [q for p, q in zip(pattern, parts) if p == "{}"]
                renamed[f"{hf.format(*values)}.{param}"] = tensor
                break
        else:
            raise AssertionError(f"no HF name for {name}")
    return renamed


# ------------------------------------------------------------------ memory bank


def frame(value: int, height: int = 4, width: int = 6) -> torch.Tensor:
    return torch.full((height, width, 3), value % 256, dtype=torch.uint8)


def keyframes(count: int, start: int = 0) -> list[Keyframe]:
    """Keyframes whose frame_index tells them apart (their pixels too)."""
    return [Keyframe(frame(i), shot=i // 3, frame_index=i) for i in range(start, start + count)]


def indices(bank: MemoryBank) -> list[int]:
    return [k.frame_index for k in bank.keyframes]


def boxes_overlap(a, b) -> bool:
    """Whether two [x, y, width, height] boxes (workflow nodes and groups) overlap."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def box_inside(inner, outer) -> bool:
    """Whether the [x, y, width, height] box `inner` lies wholly inside `outer`."""
    return (outer[0] <= inner[0] and outer[1] <= inner[1] and inner[0] + inner[2] <= outer[0] + outer[2]
            and inner[1] + inner[3] <= outer[1] + outer[3])


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now (for a test server or a process group)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
