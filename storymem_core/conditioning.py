"""Conditioning latents and mask for StoryMem shots: M2V, MI2V, MM2V and MR2V.

Layout (as the StoryMem LoRA was trained): M memory keyframes, each VAE-encoded alone as one latent
frame, sit in time before the shot's latent frames. The DiT sees
`y = cat([mask (4 ch), cat([memory latents, shot latents], time) (16 ch)], channels)`.
MR2V is M2V whose first memory images are the user's references; it needs nothing special here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from .choices import GIVEN_FRAMES, MOTION_FRAMES, ShotMode
from .errors import ConditioningError

VAE_STRIDE = (4, 8, 8)
LATENT_FRAME_STRIDE = VAE_STRIDE[0]
PATCH = (1, 2, 2)


class VideoEncoder(Protocol):
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] in [-1, 1] -> normalised latents [B, 16, 1 + (T-1)//4, H/8, W/8]."""


@dataclass(frozen=True)
class ShotConditioning:
    """What the sampler needs besides text: y [20, M + T_shot, h, w] and the latent geometry."""

    y: torch.Tensor
    memory_count: int
    frame_num: int

    @property
    def latent_frames(self) -> int:
        return self.y.shape[1]


def check_frame_num(frame_num: int) -> None:
    if frame_num < 1 or (frame_num - 1) % VAE_STRIDE[0]:
        lower = max(1, (frame_num - 1) // 4 * 4 + 1)
        raise ConditioningError(
            f"frames = {frame_num} is not of the form 4n+1 (the VAE packs 4 frames per latent): use {lower} or "
            f"{lower + 4}."
        )


def check_size(width: int, height: int) -> None:
    """A shot size the VAE (stride 8) and the DiT patches (2 x 2) tile exactly."""
    if width % 16 or height % 16 or width < 16 or height < 16:
        raise ConditioningError(f"size {width}x{height} is not divisible by 16 (or not positive): use e.g. 832x480.")


def latent_frame_count(frame_num: int) -> int:
    """Latent frames of a 4n+1-frame video: the first frame alone, then one per 4."""
    return (frame_num - 1) // LATENT_FRAME_STRIDE + 1


def latent_size(image_hw: tuple[int, int], max_area: int) -> tuple[int, int]:
    """(lat_h, lat_w) for an image aspect ratio and a pixel budget, rounded to whole DiT patches."""
    h, w = image_hw
    aspect = h / w
    lat_h = round((max_area * aspect) ** 0.5) // VAE_STRIDE[1] // PATCH[1] * PATCH[1]
    lat_w = round((max_area / aspect) ** 0.5) // VAE_STRIDE[2] // PATCH[2] * PATCH[2]
    if lat_h == 0 or lat_w == 0:
        raise ConditioningError(f"max_area {max_area} is too small for a {w}x{h} image: use at least {16 * 16 * 4}.")
    return lat_h, lat_w


def to_model_images(images: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, h, w] in [-1, 1], resized bicubic to the shot size."""
    pixels = images.permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.5)
    if tuple(pixels.shape[2:]) == tuple(size_hw):
        return pixels
    return F.interpolate(pixels, size=size_hw, mode="bicubic")


def _check_images(images: torch.Tensor | list[torch.Tensor], what: str) -> list[torch.Tensor]:
    """The images as a list, each checked to be uint8 [H, W, 3]."""
    images = list(images)
    if not images:
        raise ConditioningError(f"{what} is empty.")
    for i, image in enumerate(images):
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[-1] != 3:
            raise ConditioningError(f"{what} image {i} must be uint8 [H, W, 3], got {image.dtype} "
                                    f"{tuple(image.shape)}.")
    return images


def _check_same_size(images: torch.Tensor | list[torch.Tensor], what: str) -> torch.Tensor:
    """Frames of one shot (MI2V / MM2V) stacked; they come from one video, so one size."""
    images = _check_images(images, what)
    first = tuple(images[0].shape)
    for i, image in enumerate(images):
        if tuple(image.shape) != first:
            raise ConditioningError(
                f"{what} image {i} is {image.shape[1]}x{image.shape[0]} but image 0 is {first[1]}x{first[0]}: "
                "give frames of one video (one size)."
            )
    return torch.stack(images)


def conditioning_mask(
    memory_count: int, frame_num: int, lat_hw: tuple[int, int], mode: str = ShotMode.M2V, fix_mem: int | None = None
) -> torch.Tensor:
    """Mask [4, M + 1 + (F-1)//4, h, w]: 1 for memory (2 past `fix_mem`), 1 for given shot frames, else 0.

    Each memory frame and the shot's first frame fill one latent frame (their value repeated 4x);
    the remaining F-1 frames pack 4 per latent frame, one per channel.
    """
    per_frame = torch.zeros(memory_count + frame_num)
    per_frame[:memory_count] = 1
    if fix_mem is not None and memory_count > fix_mem:
        per_frame[fix_mem:memory_count] = 2
    given = GIVEN_FRAMES[mode]
    per_frame[memory_count : memory_count + given] = 1
    packed = torch.cat([per_frame[: memory_count + 1].repeat_interleave(VAE_STRIDE[0]), per_frame[memory_count + 1 :]])
    mask = packed.view(-1, VAE_STRIDE[0], 1, 1).expand(-1, -1, *lat_hw)  # [T_lat, 4, h, w]
    return mask.transpose(0, 1).contiguous()


def build_conditioning(
    vae: VideoEncoder,
    memory_images: torch.Tensor | list[torch.Tensor],
    frame_num: int,
    max_area: int,
    first_frame: torch.Tensor | None = None,
    motion_frames: torch.Tensor | None = None,
    fix_mem: int | None = None,
    device: torch.device | str = "cpu",
) -> ShotConditioning:
    """Encode memory keyframes (uint8 [H, W, 3] each) and the shot's given frames into `y`.

    MI2V passes the previous shot's last frame as `first_frame`; MM2V its last 5 frames as
    `motion_frames`. Unlike the released StoryMem code, the first frame's latent is kept (its
    mask is set and its content shown), which is what the LoRA was trained for.
    """
    check_frame_num(frame_num)
    if first_frame is not None and motion_frames is not None:
        raise ConditioningError("Give either a first frame (MI2V) or motion frames (MM2V), not both.")
    if len(memory_images) == 0:
        raise ConditioningError(
            "The memory bank is empty: an M2V shot needs at least one keyframe; generate the first shot with "
            "T2V (First Shot node, --t2v-first-shot) or start from reference images (MR2V)."
        )
    memory = _check_images(memory_images, "memory")
    given, mode = None, ShotMode.M2V
    if first_frame is not None:
        given, mode = _check_same_size([first_frame], "first frame"), ShotMode.MI2V
    elif motion_frames is not None:
        given, mode = _check_same_size(motion_frames, "motion frames"), ShotMode.MM2V
        if len(given) != MOTION_FRAMES:
            raise ConditioningError(
                f"MM2V needs exactly {MOTION_FRAMES} motion frames, got {len(given)}: give the previous shot's last "
                f"{MOTION_FRAMES} frames (a shot of at least {MOTION_FRAMES} frames), or use MI2V."
            )
    if given is not None and frame_num < len(given):
        raise ConditioningError(f"frames = {frame_num} is shorter than the {len(given)} given frames of "
                                f"{mode.upper()}.")

    reference_hw = tuple(given.shape[1:3] if given is not None else memory[0].shape[:2])
    lat_hw = latent_size(reference_hw, max_area)
    pixel_hw = (lat_hw[0] * VAE_STRIDE[1], lat_hw[1] * VAE_STRIDE[2])

    # each keyframe resized on its own (as the reference does), so references of any size can share a bank
    memory_pixels = torch.cat([to_model_images(image[None], pixel_hw) for image in memory])  # [M, 3, H, W]
    memory_latents = vae.encode(memory_pixels.unsqueeze(2).to(device))  # [M, 16, 1, h, w]
    memory_latents = memory_latents.squeeze(2).transpose(0, 1)  # [16, M, h, w]
    shot_video = torch.zeros(3, frame_num, *pixel_hw)
    if given is not None:
        shot_video[:, : len(given)] = to_model_images(given, pixel_hw).transpose(0, 1)
    shot_latents = vae.encode(shot_video[None].to(device))[0]  # [16, T_shot, h, w]

    mask = conditioning_mask(len(memory), frame_num, lat_hw, mode, fix_mem).to(shot_latents)
    y = torch.cat([mask, torch.cat([memory_latents.to(shot_latents), shot_latents], dim=1)], dim=0)
    return ShotConditioning(y=y, memory_count=len(memory), frame_num=frame_num)

