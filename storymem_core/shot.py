"""One shot from a single call: memory-conditioned (M2V / MI2V / MM2V / MR2V) or text-only (T2V).

This is the seam the nodes and the story runner share: text is already encoded (contexts), images
are uint8 [H, W, 3], and the result is the decoded video in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from .conditioning import LATENT_FRAME_STRIDE, build_conditioning, check_frame_num
from .sampling import LATENT_CHANNELS, ExpertPair, SamplerSettings, denoise, seeded_noise
from .wan.vae import WanVAE

# Wan2.2's standard negative prompt (used when the user leaves it empty), kept verbatim for parity.
DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
    "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走"
)
T2V_SETTINGS = SamplerSettings(shift=12.0, boundary=0.875, guide_low=3.0, guide_high=4.0)


@dataclass(frozen=True)
class ShotResult:
    video: torch.Tensor  # [3, F, H, W] in [-1, 1]
    latent: torch.Tensor  # [16, M + T_shot, h, w], memory frames first
    memory_decoded: torch.Tensor | None = None  # [M, 3, H, W] when asked for


def generate_memory_shot(
    experts: ExpertPair,
    vae: WanVAE,
    context: torch.Tensor,
    context_null: torch.Tensor,
    memory_images: torch.Tensor | list[torch.Tensor],
    frame_num: int = 81,
    max_area: int = 832 * 480,
    settings: SamplerSettings = SamplerSettings(),
    first_frame: torch.Tensor | None = None,
    motion_frames: torch.Tensor | None = None,
    fix_mem: int | None = None,
    decode_memory: bool = False,
    on_step: Callable[[int, int], None] | None = None,
) -> ShotResult:
    """Generate one shot conditioned on memory keyframes (and the previous shot's last frame(s))."""
    conditioning = build_conditioning(
        vae, memory_images, frame_num, max_area, first_frame, motion_frames, fix_mem, device=experts.device
    )
    noise, generator = seeded_noise((LATENT_CHANNELS, *conditioning.y.shape[1:]), settings.seed)
    latent = denoise(experts, noise, generator, context, context_null, settings, conditioning.y, on_step)
    memory_count = conditioning.memory_count
    video = vae.decode(latent[None, :, memory_count:])[0]
    memory_decoded = None
    if decode_memory:  # each memory latent alone, as it was encoded
        memory_decoded = vae.decode(latent[:, :memory_count].transpose(0, 1).unsqueeze(2)).squeeze(2)
    return ShotResult(video=video, latent=latent, memory_decoded=memory_decoded)


def generate_text_shot(
    experts: ExpertPair,
    vae: WanVAE,
    context: torch.Tensor,
    context_null: torch.Tensor,
    size_wh: tuple[int, int] = (832, 480),
    frame_num: int = 81,
    settings: SamplerSettings = T2V_SETTINGS,
    on_step: Callable[[int, int], None] | None = None,
) -> ShotResult:
    """The story's first shot from text alone (Wan2.2 T2V experts)."""
    check_frame_num(frame_num)
    width, height = size_wh
    shape = (LATENT_CHANNELS, (frame_num - 1) // LATENT_FRAME_STRIDE + 1, height // 8, width // 8)
    noise, generator = seeded_noise(shape, settings.seed)
    latent = denoise(experts, noise, generator, context, context_null, settings, None, on_step)
    return ShotResult(video=vae.decode(latent[None])[0], latent=latent)


def with_seed(settings: SamplerSettings, seed: int) -> SamplerSettings:
    return replace(settings, seed=seed)
