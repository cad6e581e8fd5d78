"""A story's models loaded from the files found by role: experts with their LoRAs, text encoder, VAE, keyframe
encoder and quality scorer (see docs/architecture.md)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .choices import ExpertKind, FirstShot, Offload, Preset, Quality, WeightDtype
from .distributed import Parallel
from .expert_pair import ExpertLoras, LoadProgress, auto_dtype, load_expert_pair
from .model_roles import storymem_lora_roles
from .pipeline import StoryModels
from .presets import compiles_blocks, lora_roles
from .sampling import ExpertPair
from .scorers import AestheticHead, AestheticScorer
from .shot import shot_tokens
from .story_plan import StoryOptions
from .wan.text_encoder import ParkedTextEncoder, TextEncoder
from .weights.loading import load_text_encoder, load_vae
from .weights.scorer_files import load_aesthetic_head, load_hpsv3, load_keyframe_encoder

log = logging.getLogger(__name__)


def _speed_loras(files: dict[str, Path], preset: str, kind: str) -> list[ExpertLoras]:
    """Entries for layers Wan2.2 lacks are skipped (and logged), as Add Wan LoRA does for speed LoRAs."""
    return [ExpertLoras(files[high], files[low], strict=False) for high, low in lora_roles(preset, kind)]


@dataclass(frozen=True)
class LoadOptions:
    device: torch.device
    weights: str = WeightDtype.AUTO  # auto: fp8 files stay fp8 on a GPU; otherwise bf16 (fp32 on the CPU)
    offload: str = Offload.AUTO  # none / experts / blocks, or auto from free GPU memory
    compile_blocks: bool = False  # a preset may compile them anyway (presets.compiles_blocks)
    open_clip_name: str = "ViT-B-32-quickgelu"
    quality: str = Quality.AUTO  # the keyframe quality filter's model, or off
    preset: str = Preset.NONE  # speed LoRAs on the experts (its sampler settings are in StoryOptions)
    parallel: Parallel | None = None  # under torchrun: this rank's place (storymem_core/distributed.py)
    fsdp: bool = False  # under torchrun: shard each expert's weights over the ranks

    @property
    def leads(self) -> bool:
        """This process writes the story and reports to the user: no torchrun, or its rank 0."""
        return self.parallel is None or self.parallel.is_leader


def _experts(files: dict[str, Path], high: str, low: str, load: LoadOptions, tokens: int,
             loras: list[ExpertLoras], on_progress: LoadProgress | None) -> ExpertPair:
    free = torch.cuda.mem_get_info(load.device)[0] if load.device.type == "cuda" else 0
    compiled = load.compile_blocks or compiles_blocks(load.preset)
    high_expert, low_expert, placement = load_expert_pair(
        files[high], files[low], load.weights, load.offload, compiled, load.device, free, tokens, loras, on_progress,
    )
    log.info("experts %s + %s: %s offload", files[high].name, files[low].name, placement)
    return ExpertPair(high_expert, low_expert, device=load.device, offload=placement == Offload.EXPERTS)


def load_story_models(files: dict[str, Path], options: StoryOptions, load: LoadOptions,
                      on_load: Callable[[str], LoadProgress | None] = lambda what: None) -> StoryModels:
    """Every model of a story, on the CPU until a shot needs it on `load.device`. `on_load(what)` gives the progress
    callback of loading one expert pair (what: "I2V experts" or "T2V experts")."""
    width, height = options.size_wh
    tokens = shot_tokens(options.max_memory, options.frames, width * height)
    scorer = _quality_scorer(files, load.device)  # first: HPSv3 takes GPU memory the experts' offload plan must see
    keyframe_encoder = load_keyframe_encoder(files["clip"], load.open_clip_name, load.device)
    if isinstance(scorer, AestheticHead):
        scorer.check_fits(keyframe_encoder)  # before the experts load, not after the first shot
    # LoRAs are merged for the whole story: the StoryMem LoRA, then a preset's speed LoRAs on top
    storymem = ExpertLoras(*(files[role] for role in storymem_lora_roles(options.continuation)))
    speed = _speed_loras(files, load.preset, ExpertKind.I2V)
    m2v = _experts(files, "i2v_high", "i2v_low", load, tokens, [storymem, *speed],
                   on_load("I2V experts"))
    t2v = None
    if options.first_shot == FirstShot.T2V:
        t2v = _experts(files, "t2v_high", "t2v_low", load, tokens, _speed_loras(files, load.preset, ExpertKind.T2V),
                       on_load("T2V experts"))
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
    if Quality.HPSV3 in files:
        return load_hpsv3(files[Quality.HPSV3], device)
    return load_aesthetic_head(files[Quality.AESTHETIC]) if Quality.AESTHETIC in files else None
