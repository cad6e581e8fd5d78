"""The model files a story needs, found by role in a models folder with ComfyUI's layout (see docs/architecture.md).

The folder has ComfyUI's subfolders (diffusion_models/, loras/, text_encoders/, vae/, clip_vision/), so a ComfyUI
install's `models` folder works as it is. Files are found by the names they are published under; every missing file
is reported at once, with its usual name and its folder.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .choices import FirstShot, Quality, ShotMode
from .errors import CheckpointError, SettingsError
from .presets import LORA_FOLDER, PRESET_LORA_ROLES, SOURCE
from .safe_files import files_under
from .weights.kinds import LEGACY_FOLDERS
from .weights.readers import MODEL_SUFFIXES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRole:
    """One file a story needs: its folder, the name patterns it goes by, and the name to tell a user."""

    folder: str
    patterns: tuple[str, ...]
    usual_name: str
    other_folders: tuple[str, ...] = ()  # also searched, e.g. where the nodes list the same file
    variant: str | None = None  # a StoryMem LoRA pair's (mi2v, mm2v): a file whose path says the other is not it


STORYMEM_VARIANTS = (ShotMode.MI2V, ShotMode.MM2V)  # the published LoRA pairs: Wan2.2-MI2V-A14B/, Wan2.2-MM2V-A14B/


def _storymem_lora(noise: str, variant: str) -> ModelRole:
    return ModelRole("loras", (f"backbone_{noise}_noise*",),
                     f"StoryMem/Wan2.2-{variant.upper()}-A14B/backbone_{noise}_noise.pth (Hugging Face "
                     "Kevin-thu/StoryMem)", variant=variant)


ROLES = {
    "i2v_high": ModelRole("diffusion_models", ("*i2v*high_noise*",),
                          "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors"),
    "i2v_low": ModelRole("diffusion_models", ("*i2v*low_noise*",), "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors"),
    "t2v_high": ModelRole("diffusion_models", ("*t2v*high_noise*",),
                          "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"),
    "t2v_low": ModelRole("diffusion_models", ("*t2v*low_noise*",), "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"),
    "lora_high": _storymem_lora("high", ShotMode.MI2V),  # M2V and MI2V shots: the authors' default pair
    "lora_low": _storymem_lora("low", ShotMode.MI2V),
    "mm2v_lora_high": _storymem_lora("high", ShotMode.MM2V),  # --mm2v stories
    "mm2v_lora_low": _storymem_lora("low", ShotMode.MM2V),
    "text_encoder": ModelRole("text_encoders", ("umt5*", "models_t5_umt5*"), "umt5_xxl_fp8_e4m3fn_scaled.safetensors"),
    "vae": ModelRole("vae", ("wan_2.1_vae*", "wan2.1_vae*"), "wan_2.1_vae.safetensors"),
    "clip": ModelRole("clip_vision", ("open_clip*", "*vit*b*32*clip*", "*clip*vit*b*32*"),
                      "open_clip_model.safetensors (timm/vit_base_patch32_clip_224.openai)"),
    Quality.AESTHETIC: ModelRole("clip_vision", ("*aesthetic*", "sa_0_4_vit_b_32_linear*"),
                                 "sa_0_4_vit_b_32_linear.pth (github.com/LAION-AI/aesthetic-predictor)"),
    "viclip": ModelRole("clip_vision", ("viclip*",),
                        "ViClip-InternVid-10M-FLT.pth (huggingface.co/OpenGVLab/VBench_Used_Models)"),
    "clip_l14": ModelRole("clip_vision", ("*vit*large*patch14*clip*",),
                          "vit_large_patch14_clip_224.openai.safetensors (open_clip_model.safetensors of "
                          "huggingface.co/timm/vit_large_patch14_clip_224.openai, renamed)"),
    "aesthetic_l14": ModelRole("clip_vision", ("sa_0_4_vit_l_14_linear*",),
                               "sa_0_4_vit_l_14_linear.pth (github.com/LAION-AI/aesthetic-predictor)"),
    Quality.HPSV3: ModelRole("hpsv3", ("hpsv3*.safetensors",), "HPSv3.safetensors (huggingface.co/MizzenAI/HPSv3)",
                             ("clip_vision",)),
}
ROLES.update({
    role: ModelRole(LORA_FOLDER, lora.patterns, f"{lora.usual_name} ({SOURCE})")
    for role, lora in PRESET_LORA_ROLES.items()
})


def _matches(path: Path, patterns: tuple[str, ...]) -> bool:
    name = path.name.lower()
    return name.endswith(MODEL_SUFFIXES) and any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def _find(root: Path, role: str) -> Path | None:
    spec = ROLES[role]
    folders = [root / name for name in (spec.folder, *LEGACY_FOLDERS.get(spec.folder, ()), *spec.other_folders)]
    candidates = sorted(p for folder in folders for p in files_under(folder) if p.is_file()
                        and _matches(p, spec.patterns))
    if spec.variant is not None:
        candidates = _of_variant(candidates, spec.variant, folders)
    if len(candidates) > 1:
        log.info("%s: using %s of %d matching files", role, candidates[0], len(candidates))
    return candidates[0] if candidates else None


def _of_variant(paths: list[Path], variant: str, folders: list[Path]) -> list[Path]:
    """A StoryMem LoRA pair's files: those whose path below the LoRA folder says `variant` first, then those that say
    no variant (a layout of the user's own), never the other pair's: the MI2V and MM2V files share their names."""
    def said(path: Path) -> set[str]:
        below = next(path.relative_to(folder) for folder in folders if path.is_relative_to(folder)).as_posix().lower()
        return {name for name in STORYMEM_VARIANTS if name in below}

    variants = {path: said(path) for path in paths}
    own = [path for path in paths if variant in variants[path]]
    unnamed = [path for path in paths if not variants[path]]
    if not own and unnamed and variant == ShotMode.MM2V:
        log.warning("using %s as the MM2V LoRA, though neither its name nor its folder says MM2V: if it is the MI2V "
                    "pair, put the MM2V pair in loras/StoryMem/Wan2.2-MM2V-A14B/", unnamed[0])
    return own + unnamed


def storymem_lora_roles(continuation: str) -> tuple[str, str]:
    """The (high, low) roles of the StoryMem LoRA pair a story runs with: the MM2V pair for --mm2v stories, else
    the MI2V pair (which also makes M2V shots), as the authors' pipeline chooses."""
    return ("mm2v_lora_high", "mm2v_lora_low") if continuation == ShotMode.MM2V else ("lora_high", "lora_low")


def find_model_files(models_dir: str | Path, roles: list[str]) -> dict[str, Path]:
    """The file of each role under `models_dir`; raises one error naming every missing required file."""
    root = Path(models_dir).expanduser()
    if not root.is_dir():
        raise CheckpointError(f"--models-dir {root} is not a folder: point it at ComfyUI's models folder (or one with "
                              "the same subfolders).")
    found, missing = {}, []
    for role in roles:
        if (path := _find(root, role)) is not None:
            found[role] = path
        else:
            missing.append(f"{ROLES[role].folder}/{ROLES[role].usual_name}")
    if missing:
        raise CheckpointError(f"{len(missing)} model file(s) missing under {root}: {'; '.join(missing)}; download them "
                              "into those folders (the README's Model files table links each; `python -m storymem_core "
                              "download NAME` fetches the StoryMem LoRAs and the aesthetic head, `download --list` "
                              "lists them).")
    return found


def role_file(names: list[str], role: str) -> str:
    """The first of `names` (files of the role's folder, as ComfyUI lists them) that goes by the role's names."""
    spec = ROLES[role]
    found = sorted(name for name in names if _matches(Path(name), spec.patterns))
    if not found:
        raise CheckpointError(f"no {spec.usual_name} in models/{spec.folder}: download it into that folder.")
    return found[0]


def quality_model(quality: str, models_dir: str | Path) -> str | None:
    """The quality filter's model role: auto takes the reference's HPSv3 when its package and checkpoint
    are both there, else the CLIP aesthetic head; off needs none."""
    if quality == Quality.OFF:
        return None
    if quality == Quality.AUTO:
        found = (importlib.util.find_spec("hpsv3") is not None
                 and _find(Path(models_dir).expanduser(), Quality.HPSV3) is not None)
        return Quality.HPSV3 if found else Quality.AESTHETIC
    return quality


def required_roles(first_shot: str, quality: str | None = Quality.AESTHETIC,
                   continuation: str = ShotMode.M2V) -> list[str]:
    """The files a story needs: T2V experts only for a T2V first shot, the quality model unless the filter is off,
    the StoryMem LoRA pair of the continuation (`storymem_lora_roles`)."""
    roles = ["i2v_high", "i2v_low", *storymem_lora_roles(continuation), "text_encoder", "vae", "clip"]
    return roles + ([quality] if quality else []) + (["t2v_high", "t2v_low"] if first_shot == FirstShot.T2V else [])


def parse_device(name: str) -> torch.device:
    """--device as a torch device, refused here (before any model loads) when this machine does not have it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SettingsError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SettingsError(f"--device {name} needs a CUDA GPU but none is visible: use --device cpu (or auto).")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SettingsError(f"--device {name} does not exist: this machine has cuda:0 to "
                            f"cuda:{torch.cuda.device_count() - 1}.")
    if device.type not in ("cpu", "cuda"):
        raise SettingsError(f"--device {name} is not supported: use auto, cpu, cuda or cuda:N.")
    return device
