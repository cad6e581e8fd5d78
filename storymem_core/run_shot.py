"""One shot from one request: the single path the shot nodes, the Story Runner and the story loop make a shot through.

A request says what the shot shows (prompt), how it begins (mode and the previous shot's frames), what it remembers
(the bank) and how it is sampled. `run_shot` encodes the prompts, builds the conditioning, samples with the expert
switch, decodes, trims the frames a continuing shot was given, and picks the shot's keyframes into a new bank. The
caller decides where the shot goes (a node's outputs, a story folder); see docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .choices import DEFAULT_MEMORY_POSITIONS, GIVEN_FRAMES, MOTION_FRAMES, FirstShot, ShotMode
from .errors import ConditioningError
from .keyframes import select_keyframes
from .memory import MemoryBank
from .sampling import ExpertPair, SamplerSettings
from .scorers import AestheticScorer, ImageEncoder
from .shot import PromptEncoder, ShotMemory, encode_prompts, generate_memory_shot, generate_text_shot
from .timing import KEYFRAME_SELECTION, phase
from .video import trim_conditioning_frames, video_to_frames
from .wan.vae import WanVAE


@dataclass(frozen=True)
class ShotRequest:
    prompt: str
    mode: str  # a `ShotMode`; an MR2V first shot is M2V from a bank of references
    memory: MemoryBank
    size_wh: tuple[int, int]  # a T2V shot's size; the pixel budget of a memory shot, whose aspect its memory sets
    frames: int
    settings: SamplerSettings  # the seed included
    index: int  # 0-based number of the shot in its story: labels its keyframes
    previous_frames: torch.Tensor | None = None  # uint8 [T, H, W, 3], the previous shot's last frames (MI2V, MM2V)
    negative_prompt: str = ""
    fix_mem: int | None = None  # mask value 2 for unfixed memory; the reference pipeline leaves it off
    memory_positions: str = DEFAULT_MEMORY_POSITIONS  # storymem_core.positions
    ablations: tuple[str, ...] = ()  # the paper's keyframe ablations (choices.Ablation)


@dataclass(frozen=True)
class ShotModels:
    experts: ExpertPair  # the T2V pair for a T2V shot, else the I2V pair with the StoryMem LoRA
    text_encoder: PromptEncoder
    vae: WanVAE
    keyframe_encoder: ImageEncoder
    scorer: AestheticScorer | None = None


@dataclass(frozen=True)
class ShotOutcome:
    frames: torch.Tensor  # uint8 [T, H, W, 3], the frames a continuing shot was given trimmed off
    memory: MemoryBank  # the request's bank with this shot's keyframes added (and windowed)
    keyframes_added: int


def story_shot_mode(index: int, cut: bool, first_shot: str, continuation: str) -> str:
    """The mode of a story's shot: T2V for a T2V story's first shot, M2V after a cut (and for an MR2V first shot),
    else the story's continuation (m2v, mi2v or mm2v)."""
    if index == 0:
        return ShotMode.T2V if first_shot == FirstShot.T2V else ShotMode.M2V
    return ShotMode.M2V if cut else continuation


def run_shot(request: ShotRequest, models: ShotModels, on_step: Callable[[int, int], None] | None = None,
             on_preview: Callable[[torch.Tensor], None] | None = None,
             on_decoded: Callable[[], None] | None = None) -> ShotOutcome:
    """Make the shot `request` asks for. `on_step(step, steps)` follows sampling and may raise to stop it;
    `on_preview` gets each step's denoised latent; `on_decoded` is called once the frames are decoded (keyframe
    selection follows)."""
    given = _given_frames(request)
    context, context_null = encode_prompts(models.text_encoder, request.prompt, request.negative_prompt, models.experts)
    if request.mode == ShotMode.T2V:
        result = generate_text_shot(models.experts, models.vae, context, context_null, request.size_wh, request.frames,
                                    request.settings, on_step, on_preview)
    else:
        width, height = request.size_wh
        memory = ShotMemory(
            request.memory.image_list(), first_frame=given[-1] if request.mode == ShotMode.MI2V else None,
            motion_frames=given if request.mode == ShotMode.MM2V else None, fix_mem=request.fix_mem,
            positions=request.memory_positions,
        )
        result = generate_memory_shot(models.experts, models.vae, context, context_null, memory, request.frames,
                                      width * height, request.settings, on_step=on_step, on_preview=on_preview)
    if on_decoded is not None:
        on_decoded()
    frames = video_to_frames(result.video)
    if request.mode != ShotMode.T2V:
        frames = trim_conditioning_frames(frames, request.mode)
    with phase(KEYFRAME_SELECTION):
        keyframes = select_keyframes(frames, models.keyframe_encoder, bank=request.memory, scorer=models.scorer,
                                     shot=request.index, ablations=request.ablations)
    return ShotOutcome(frames, request.memory.add(keyframes), len(keyframes))


def _given_frames(request: ShotRequest) -> torch.Tensor | None:
    """The previous shot's frames a continuing shot starts from, refused before any model runs when missing."""
    if request.mode not in ShotMode.names():
        raise ConditioningError(f"shot mode '{request.mode}' is unknown: use one of {', '.join(ShotMode.names())}.")
    if request.mode in (ShotMode.T2V, ShotMode.M2V):
        return None
    if request.previous_frames is None:
        raise ConditioningError(f"a {request.mode.upper()} shot continues the previous shot's last "
                                f"{GIVEN_FRAMES[request.mode]} frame(s): give them (previous_frames), or make the "
                                "shot M2V.")
    # too few frames for MM2V is reported by the conditioning, which counts them
    return request.previous_frames[-MOTION_FRAMES:] if request.mode == ShotMode.MM2V else request.previous_frames[-1:]
