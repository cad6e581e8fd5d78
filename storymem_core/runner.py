"""`python -m storymem_core story`: find the model files in a models folder, load them, run the story loop.

The models folder has ComfyUI's layout (diffusion_models/, loras/, text_encoders/, vae/, clip_vision/),
so a ComfyUI install's `models` folder works as it is. Files are found by the names they are published
under; every missing file is reported at once, with its usual name and its folder.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

from .distributed import Parallel, torchrun_session
from .errors import CheckpointError, StoryMemError
from .expert_pair import ExpertLoras, auto_dtype, load_expert_pair
from .files import load_image
from .keyframes import AestheticHead, AestheticScorer, HPSv3Scorer
from .pipeline import StoryModels, StoryOptions, run_story
from .presets import LORA_FOLDER, PRESET_LORA_ROLES, SOURCE, lora_roles, preset_roles, preset_settings
from .safe_files import files_under
from .sampling import ExpertPair, SamplerSettings
from .shot import shot_tokens
from .story import Story, load_story, shown_text
from .story_folder import check_output_folder
from .wan.text_encoder import ParkedTextEncoder, TextEncoder
from .weights.clip_files import load_keyframe_encoder
from .weights.kinds import LEGACY_FOLDERS
from .weights.loading import dit_config, load_text_encoder, load_vae
from .weights.readers import MODEL_SUFFIXES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRole:
    """One file a story needs: its folder, the name patterns it goes by, and the name to tell a user."""

    folder: str
    patterns: tuple[str, ...]
    usual_name: str
    other_folders: tuple[str, ...] = ()  # also searched, e.g. where the nodes list the same file


ROLES = {
    "i2v_high": ModelRole("diffusion_models", ("*i2v*high_noise*",),
                          "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors"),
    "i2v_low": ModelRole("diffusion_models", ("*i2v*low_noise*",), "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors"),
    "t2v_high": ModelRole("diffusion_models", ("*t2v*high_noise*",),
                          "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"),
    "t2v_low": ModelRole("diffusion_models", ("*t2v*low_noise*",), "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"),
    "lora_high": ModelRole("loras", ("backbone_high_noise*",),
                           "StoryMem/backbone_high_noise.pth (Hugging Face Kevin-thu/StoryMem)"),
    "lora_low": ModelRole("loras", ("backbone_low_noise*",),
                          "StoryMem/backbone_low_noise.pth (Hugging Face Kevin-thu/StoryMem)"),
    "text_encoder": ModelRole("text_encoders", ("umt5*", "models_t5_umt5*"), "umt5_xxl_fp8_e4m3fn_scaled.safetensors"),
    "vae": ModelRole("vae", ("wan_2.1_vae*", "wan2.1_vae*"), "wan_2.1_vae.safetensors"),
    "clip": ModelRole("clip_vision", ("open_clip*", "*vit*b*32*clip*", "*clip*vit*b*32*"),
                      "open_clip_model.safetensors (timm/vit_base_patch32_clip_224.openai)"),
    "aesthetic": ModelRole("clip_vision", ("*aesthetic*", "sa_0_4_vit_b_32_linear*"),
                           "sa_0_4_vit_b_32_linear.pth (github.com/LAION-AI/aesthetic-predictor)"),
    "hpsv3": ModelRole("hpsv3", ("hpsv3*",), "HPSv3.safetensors (huggingface.co/MizzenAI/HPSv3)", ("clip_vision",)),
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
    if len(candidates) > 1:
        log.info("%s: using %s of %d matching files", role, candidates[0].name, len(candidates))
    return candidates[0] if candidates else None


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
                              "into those folders.")
    return found


def quality_model(quality: str, models_dir: str | Path) -> str | None:
    """The quality filter's model role: 'auto' takes the reference's HPSv3 when its package and checkpoint
    are both there, else the CLIP aesthetic head; 'off' needs none."""
    if quality == "off":
        return None
    if quality == "auto":
        found = (importlib.util.find_spec("hpsv3") is not None
                 and _find(Path(models_dir).expanduser(), "hpsv3") is not None)
        return "hpsv3" if found else "aesthetic"
    return quality


def required_roles(first_shot: str, quality: str | None = "aesthetic") -> list[str]:
    """The files a story needs: T2V experts only for a T2V first shot, the quality model unless the filter is off."""
    roles = ["i2v_high", "i2v_low", "lora_high", "lora_low", "text_encoder", "vae", "clip"]
    return roles + ([quality] if quality else []) + (["t2v_high", "t2v_low"] if first_shot == "t2v" else [])


def _speed_loras(files: dict[str, Path], preset: str, kind: str) -> list[ExpertLoras]:
    """Entries for layers Wan2.2 lacks are skipped (and logged), as Add Wan LoRA does for speed LoRAs."""
    return [ExpertLoras(files[high], files[low], strict=False) for high, low in lora_roles(preset, kind)]


@dataclass(frozen=True)
class LoadOptions:
    device: torch.device
    weights: str = "auto"  # auto: fp8 files stay fp8 on a GPU; otherwise bf16 (fp32 on the CPU)
    offload: str = "auto"  # none / experts / blocks, or auto from free GPU memory
    compile_blocks: bool = False
    open_clip_name: str = "ViT-B-32-quickgelu"
    quality: str = "auto"  # QUALITY_CHOICES: the keyframe quality filter's model, or off
    preset: str = "none"  # PRESET_CHOICES: speed LoRAs on the experts (its sampler settings are in StoryOptions)
    parallel: Parallel | None = None  # under torchrun: this rank's place (storymem_core/distributed.py)
    fsdp: bool = False  # under torchrun: shard each expert's weights over the ranks


def _experts(files: dict[str, Path], high: str, low: str, load: LoadOptions, tokens: int,
             loras: list[ExpertLoras]) -> ExpertPair:
    free = torch.cuda.mem_get_info(load.device)[0] if load.device.type == "cuda" else 0
    high_expert, low_expert, placement = load_expert_pair(
        files[high], files[low], load.weights, load.offload, load.compile_blocks, load.device, free, tokens, loras,
    )
    log.info("experts %s + %s: %s offload", files[high].name, files[low].name, placement)
    return ExpertPair(high_expert, low_expert, device=load.device, offload=placement == "experts")


def load_story_models(files: dict[str, Path], options: StoryOptions, load: LoadOptions) -> StoryModels:
    """Every model of a story, on the CPU until a shot needs it on `load.device`."""
    width, height = options.size_wh
    tokens = shot_tokens(options.max_memory, options.frames, width * height)
    scorer = _quality_scorer(files, load.device)  # first: HPSv3 takes GPU memory the experts' offload plan must see
    keyframe_encoder = load_keyframe_encoder(files["clip"], load.open_clip_name, load.device)
    if isinstance(scorer, AestheticHead):
        scorer.check_fits(keyframe_encoder)  # before the experts load, not after the first shot
    # LoRAs stay hooked for the whole story: the StoryMem LoRA, then a preset's speed LoRAs on top
    storymem = ExpertLoras(files["lora_high"], files["lora_low"])
    m2v = _experts(files, "i2v_high", "i2v_low", load, tokens, [storymem, *_speed_loras(files, load.preset, "i2v")])
    t2v = None
    if options.first_shot == "t2v":
        t2v = _experts(files, "t2v_high", "t2v_low", load, tokens, _speed_loras(files, load.preset, "t2v"))
    text = load_text_encoder(files["text_encoder"], auto_dtype(load.device))
    text_encoder = ParkedTextEncoder(TextEncoder(text.tokenizer, text.encoder, m2v.high.config.text_len),
                                     torch.device("cpu"))
    return StoryModels(
        text_encoder=text_encoder,
        # on the CPU: a shot takes it to the GPU to encode and decode
        vae=load_vae(files["vae"], auto_dtype(load.device)),
        m2v=m2v,
        keyframe_encoder=keyframe_encoder,
        t2v=t2v,
        aesthetic_scorer=scorer,
    )


def _quality_scorer(files: dict[str, Path], device: torch.device) -> AestheticScorer | None:
    if "hpsv3" in files:
        return HPSv3Scorer(files["hpsv3"], device)
    return AestheticHead.from_file(files["aesthetic"]) if "aesthetic" in files else None


class StoryProgress:
    """tqdm bars: shots of the story, and sampling steps of the current shot."""

    def __init__(self, story: Story):
        self.shots = tqdm(total=len(story.shots), desc="story", unit="shot")
        self.steps: tqdm | None = None

    def on_shot(self, index: int, total: int, prompt: str) -> None:
        self.shots.n = index  # shots before it are done, whether made now or skipped as finished
        self.shots.set_postfix_str(shown_text(prompt[:40]))
        self.shots.refresh()

    def on_step(self, step: int, steps: int) -> None:
        if step == 1:
            if self.steps is not None:
                self.steps.close()
            self.steps = tqdm(total=steps, desc="  steps", unit="step", leave=False)
        self.steps.update(1)

    def finished(self) -> None:
        """The bar at its end: on_shot only moves it before a shot, and never past the last."""
        self.shots.n = self.shots.total
        self.shots.refresh()

    def close(self) -> None:
        for bar in (self.steps, self.shots):
            if bar is not None:
                bar.close()


def options_from_args(args: argparse.Namespace) -> StoryOptions:
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise StoryMemError(f"--size {args.size!r} is not WIDTHxHEIGHT: write e.g. --size 832x480.") from None
    defaults = StoryOptions()
    m2v = _sampler_from_args(args, preset_settings(args.preset, defaults.m2v, "m2v"))
    t2v = _sampler_from_args(args, preset_settings(args.preset, defaults.t2v, "t2v"))
    options = StoryOptions(
        first_shot=args.first_shot, continuation=args.continuation, max_memory=args.max_memory,
        fixed_memory=args.fixed_memory, seed=args.seed, size_wh=(width, height), frames=args.frames, m2v=m2v, t2v=t2v,
        memory_positions=args.memory_positions,
    )
    options.check()  # every number in its range before anything loads
    return options


def _sampler_from_args(args: argparse.Namespace, defaults: SamplerSettings) -> SamplerSettings:
    """`defaults` (a preset's, where chosen) with the sampler flags given on the command line (0 is a value, not
    'unset')."""
    given = {"steps": args.steps, "shift": args.shift, "guide_low": args.guide, "guide_high": args.guide,
             "solver": args.solver}
    return replace(defaults, **{name: value for name, value in given.items() if value is not None})


def load_options_from_args(args: argparse.Namespace, parallel: Parallel | None = None) -> LoadOptions:
    """Under torchrun (`parallel`) each rank takes its own device: cuda:LOCAL_RANK, or the CPU without GPUs."""
    device = _device(args.device) if parallel is None else parallel.device
    return LoadOptions(device=device, weights=args.weights, offload=args.offload, compile_blocks=args.compile,
                       open_clip_name=args.open_clip_name, quality=args.quality, preset=args.preset, parallel=parallel,
                       fsdp=args.fsdp)


def _device(name: str) -> torch.device:
    """--device as a torch device, refused here (before any model loads) when this machine does not have it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise StoryMemError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise StoryMemError(f"--device {name} needs a CUDA GPU but none is visible: use --device cpu (or auto).")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise StoryMemError(f"--device {name} does not exist: this machine has cuda:0 to "
                            f"cuda:{torch.cuda.device_count() - 1}.")
    if device.type not in ("cpu", "cuda"):
        raise StoryMemError(f"--device {name} is not supported: use auto, cpu, cuda or cuda:N.")
    return device


def run_story_files(script: str | Path, models_dir: str | Path, out: str | Path, options: StoryOptions,
                    load: LoadOptions,
                    references: list[str] = (), from_shot: int | None = None) -> Path | None:
    """Validate the script and the inputs, load the models, run the story; returns the film's path (None on the
    ranks under torchrun that only serve rank 0's forwards).

    `from_shot` is 1-based as users count shots.
    """
    story = load_story(script)
    if from_shot is not None and not 1 <= from_shot <= len(story.shots):
        raise StoryMemError(f"--from-shot {from_shot} is not a shot of {script} (1 to {len(story.shots)}).")
    if references and options.first_shot != "mr2v":
        raise StoryMemError("--reference images are given but the first shot is T2V: add --m2v-first-shot to start "
                            "from them (MR2V).")
    if options.first_shot == "mr2v" and not references:
        raise StoryMemError("--m2v-first-shot starts from reference images: pass them with --reference IMAGE (one or "
                            "more).")
    options.check_story(story)
    start = None if from_shot is None else from_shot - 1
    check_output_folder(out)  # before the references are read: a wrong --out is the cheaper fault to report
    reference_images = [load_image(path) for path in references]
    options.check_folder(out, story, reference_images, start)
    roles = required_roles(options.first_shot, quality_model(load.quality, models_dir))
    files = find_model_files(models_dir, roles + preset_roles(load.preset, options.first_shot))
    if load.parallel is not None:
        load.parallel.check_heads(dit_config(files["i2v_high"])[0].num_heads)
    models = load_story_models(files, options, load)

    def run() -> Path:
        progress = StoryProgress(story)
        try:
            film = run_story(story, models, options, out, reference_images or None, start, on_shot=progress.on_shot,
                             on_step=progress.on_step)
            progress.finished()
            return film
        finally:
            progress.close()

    return run() if load.parallel is None else load.parallel.run({"m2v": models.m2v, "t2v": models.t2v}, load.fsdp, run)


def run_story_command(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    with torchrun_session() as parallel:
        film = run_story_files(args.script, args.models_dir, args.out, options, load_options_from_args(args, parallel),
                               args.reference, args.from_shot)
    if film is not None:
        print(f"film: {film}")
        print(f"shots, memory banks and the memory contact sheet: {Path(args.out)}")
    return 0
