"""Sampler presets: distilled speed LoRAs stacked on the StoryMem LoRA, with the settings their authors publish.

`lightx2v`: lightx2v's Wan2.2-Lightning 4-step LoRAs (one per expert, CFG distilled away). Their authors sample
4 Euler steps on the flow ODE at shift 5 with guide 1 (Wan2.2-Lightning `wan/configs/wan_{i2v,t2v}_A14B.py`):
the expert switch stays at Wan2.2's boundary (0.9 I2V, 0.875 T2V), which falls after step 2 of 4, as in
ComfyUI's Wan2.2 4-step template (high expert steps 0-2, low expert 2-4, cfg 1, euler, simple). Files are found
by the names ComfyUI users download: Comfy-Org/Wan_2.2_ComfyUI_Repackaged `split_files/loras/` (and Kijai's
WanVideo_comfy names).
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, replace
from pathlib import PurePath
from typing import Iterable

from .choices import ExpertKind, FirstShot, Noise, Preset, ShotMode, Solver
from .errors import CheckpointError, SettingsError
from .sampling import SamplerSettings
from .shot import T2V_SETTINGS

LORA_FOLDER = "loras"
SOURCE = "Hugging Face Comfy-Org/Wan_2.2_ComfyUI_Repackaged, split_files/loras/"


@dataclass(frozen=True)
class LoraFile:
    """One expert's speed LoRA: the name patterns it goes by (lower case) and the name to tell a user."""

    patterns: tuple[str, ...]
    usual_name: str


@dataclass(frozen=True)
class SpeedPreset:
    name: Preset
    m2v: dict  # SamplerSettings fields the preset sets for memory shots (and an MR2V first shot)
    t2v: dict  # ... and for a T2V first shot
    i2v_loras: tuple[LoraFile, LoraFile]  # (high, low), on top of the StoryMem LoRA
    t2v_loras: tuple[LoraFile, LoraFile]  # (high, low), for the T2V experts of a T2V first shot
    compile_blocks: bool = False  # a story's experts run compiled blocks on a GPU (docs/benchmarks.md, issue 25)


def _lightx2v_file(kind: str, noise: str, version: str) -> LoraFile:
    patterns = (
        f"*{kind}*lightx2v*4step*{noise}_noise*",  # wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise (Comfy-Org)
        f"*{kind}*{noise}*lightx2v*4step*",  # Wan_2_2_I2V_A14B_HIGH_lightx2v_4step_lora_* (Kijai)
        f"*lightning*{kind}*4step*{noise}*",  # Wan2.2-Lightning_I2V-A14B-4steps-lora_HIGH_fp16 (Kijai)
    )
    return LoraFile(patterns, f"wan2.2_{kind}_lightx2v_4steps_lora_{version}_{noise}_noise.safetensors")


DISTILLED = {"steps": 4, "shift": 5.0, "solver": Solver.EULER, "guide_high": 1.0, "guide_low": 1.0}
LIGHTX2V = SpeedPreset(
    name=Preset.LIGHTX2V,
    m2v={**DISTILLED, "boundary": 0.9},
    t2v={**DISTILLED, "boundary": 0.875},
    i2v_loras=tuple(_lightx2v_file(ExpertKind.I2V, noise, "v1") for noise in Noise),
    t2v_loras=tuple(_lightx2v_file(ExpertKind.T2V, noise, "v1.1") for noise in Noise),
    compile_blocks=True,
)
PRESETS = {Preset.LIGHTX2V: LIGHTX2V}  # every preset besides none
# model roles of the speed LoRA files, as the CLI finds them: "lightx2v_i2v_high" ...
PRESET_LORA_ROLES = {
    f"{name}_{kind}_{noise}": lora
    for name, chosen in PRESETS.items() for kind in ExpertKind
    for noise, lora in zip(Noise, getattr(chosen, f"{kind}_loras"))
}


def preset(name: str) -> SpeedPreset | None:
    """The preset called `name`; None for none."""
    if name == Preset.NONE:
        return None
    if name not in PRESETS:
        raise SettingsError(f"preset '{name}' is unknown: use one of {', '.join(Preset.names())}.")
    return PRESETS[name]


@dataclass(frozen=True)
class SamplerValues:
    """The sampler values a user set; None is not set (a preset, else the defaults of the kind of shot, fills it)."""

    steps: int | None = None
    shift: float | None = None
    solver: str | None = None
    guide_low: float | None = None
    guide_high: float | None = None


KIND_DEFAULTS = {ShotMode.M2V: SamplerSettings(), ShotMode.T2V: T2V_SETTINGS}  # StoryMem's memory shots, Wan2.2's T2V


def sampler_settings(name: str, kind: str, given: SamplerValues = SamplerValues()) -> SamplerSettings:
    """The one preset rule of every front end: values the user set win over what preset `name` sets for `kind`
    ('m2v' or 't2v') shots, which wins over StoryMem's defaults for them."""
    chosen = preset(name)
    settings = KIND_DEFAULTS[kind] if chosen is None else replace(KIND_DEFAULTS[kind], **getattr(chosen, kind))
    return replace(settings, **{field: value for field, value in asdict(given).items() if value is not None})


def preset_loras(name: str, kind: str) -> tuple[LoraFile, LoraFile] | None:
    """The (high, low) speed LoRA files preset `name` stacks on `kind` ('i2v' or 't2v') experts."""
    chosen = preset(name)
    return None if chosen is None else getattr(chosen, f"{kind}_loras")


def compiles_blocks(name: str) -> bool:
    """Whether preset `name` runs a story's experts with compiled blocks (on a GPU), whatever --compile says."""
    chosen = preset(name)
    return chosen is not None and chosen.compile_blocks


def lora_roles(name: str, kind: str) -> list[tuple[str, str]]:
    """The (high, low) model roles of the speed LoRAs preset `name` stacks on `kind` experts; none without a preset."""
    return [] if preset_loras(name, kind) is None else [tuple(f"{name}_{kind}_{noise}" for noise in Noise)]


def preset_roles(name: str, first_shot: str) -> list[str]:
    """The speed LoRA roles a story with preset `name` needs: the T2V pair only for a T2V first shot."""
    kinds = tuple(ExpertKind) if first_shot == FirstShot.T2V else (ExpertKind.I2V,)
    return [role for kind in kinds for pair in lora_roles(name, kind) for role in pair]


def matches(name: str, lora: LoraFile) -> bool:
    """Whether a file name (any folder) is `lora` by one of its published names."""
    base = PurePath(name).name.lower()
    return base.endswith(".safetensors") and any(fnmatch.fnmatch(base, pattern) for pattern in lora.patterns)


def find_lora_names(names: Iterable[str], loras: tuple[LoraFile, LoraFile]) -> tuple[str, str]:
    """The first of `names` (files in the LoRA folder) matching each of (high, low); one error names every missing
    file."""
    names = sorted(names)
    found = [next((name for name in names if matches(name, lora)), None) for lora in loras]
    missing = [lora.usual_name for lora, name in zip(loras, found) if name is None]
    if missing:
        raise CheckpointError(missing_message(missing))
    return found[0], found[1]


def missing_message(usual_names: list[str]) -> str:
    listed = "; ".join(f"{LORA_FOLDER}/{name}" for name in usual_names)
    return (f"the lightx2v preset needs {listed} ({SOURCE}): download them into the {LORA_FOLDER} folder, "
            "or choose preset none.")
