"""One shot from a single call: memory-conditioned (M2V / MI2V / MM2V / MR2V) or text-only (T2V).

This is the seam the nodes and the story runner share: text is already encoded (contexts), images
are uint8 [H, W, 3], and the result is the decoded video in [-1, 1].
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import torch

from .choices import DEFAULT_MEMORY_POSITIONS, PLACEMENTS, Offload
from .conditioning import PATCH, VAE_STRIDE, build_conditioning, check_frame_num, latent_frame_count
from .errors import OutOfMemory
from .offload import BlockSwapDiT, choose_offload
from .positions import check_placement, memory_frame_positions
from .sampling import LATENT_CHANNELS, ExpertPair, SamplerSettings, denoise, seeded_noise
from .timing import DECODE, MEMORY_ENCODING, TEXT_ENCODING, phase
from .wan.fp8 import Fp8Linear
from .wan.vae import WanVAE

# Wan2.2's standard negative prompt (used when the user leaves it empty), kept verbatim for parity.
DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
    "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走"
)
T2V_SETTINGS = SamplerSettings(shift=12.0, boundary=0.875, guide_low=3.0, guide_high=4.0)
PIXELS_PER_TOKEN = VAE_STRIDE[1] * PATCH[1] * VAE_STRIDE[2] * PATCH[2]
PLACEMENT_HINTS = {
    Offload.EXPERTS: "offload 'experts' (one expert on the GPU at a time; Load Wan2.2 Experts' offload, "
                     "--offload experts)",
    Offload.BLOCKS: "offload 'blocks' (block swap: the experts' blocks stream from RAM; Load Wan2.2 Experts' "
                    "offload, --offload blocks)",
}
FP8_HINT = "fp8 weights (weight_dtype fp8, --weights fp8: half the memory of bf16)"
SMALLER_HINT = "fewer frames, a smaller size or a smaller memory (max memory)"


@dataclass(frozen=True)
class ShotMemory:
    """What a memory shot is conditioned on besides its prompt: the memory keyframes (uint8 [H, W, 3] each), the
    previous shot's given frames (MI2V: its last frame; MM2V: its last 5), the mask's fixed-memory mark, and where the
    memory sits in time (`positions.memory_frame_positions`)."""

    images: torch.Tensor | list[torch.Tensor]
    first_frame: torch.Tensor | None = None
    motion_frames: torch.Tensor | None = None
    fix_mem: int | None = None
    positions: str = DEFAULT_MEMORY_POSITIONS


@dataclass(frozen=True)
class ShotResult:
    video: torch.Tensor  # [3, F, H, W] in [-1, 1]
    latent: torch.Tensor  # [16, M + T_shot, h, w], memory frames first
    memory_decoded: torch.Tensor | None = None  # [M, 3, H, W] when asked for


class PromptEncoder(Protocol):
    def encode(self, prompts: list[str], device: torch.device | str) -> list[torch.Tensor]: ...

    def visiting(self, device: torch.device | str) -> contextlib.AbstractContextManager[None]:
        """The encoder on `device` for the whole block: several `encode` calls, one round trip."""
        ...


def prompt_pair(prompt: str, negative_prompt: str) -> list[str]:
    """What one shot encodes: its prompt and the negative one (empty means Wan2.2's standard negative prompt)."""
    return [prompt, negative_prompt.strip() or DEFAULT_NEGATIVE_PROMPT]


class EncodedPrompts:
    """A story's prompts encoded before its first shot, in one visit of the text encoder to the device (a visit per shot
    moved umT5-xxl's 11 GB there and back each time), so the encoder stays parked while the shots sample.

    A PromptEncoder: a batch encoded before is answered from memory (the same batches as `encode_prompts` asks for,
    so the contexts are those a shot would encode itself); any other goes to `encoder`.
    """

    def __init__(self, encoder: PromptEncoder, batches: list[list[str]], device: torch.device | str):
        self.encoder = encoder
        self.contexts: dict[tuple[str, ...], list[torch.Tensor]] = {}
        with phase(TEXT_ENCODING), encoder.visiting(device):
            for batch in batches:
                self.contexts.setdefault(tuple(batch), encoder.encode(batch, device))

    def visiting(self, device: torch.device | str) -> contextlib.AbstractContextManager[None]:
        return self.encoder.visiting(device)

    def encode(self, prompts: list[str], device: torch.device | str) -> list[torch.Tensor]:
        known = self.contexts.get(tuple(prompts))
        if known is None:
            return self.encoder.encode(prompts, device)
        return [context.to(device) for context in known]


def encode_prompts(encoder: PromptEncoder, prompt: str, negative_prompt: str,
                   experts: ExpertPair) -> tuple[torch.Tensor, torch.Tensor]:
    """(context, context_null) on the experts' device; an empty negative prompt means Wan2.2's standard one.
    Running out of GPU memory while encoding is reported as for a shot."""
    with reporting_out_of_memory(experts, 0), phase(TEXT_ENCODING):
        context, context_null = encoder.encode(prompt_pair(prompt, negative_prompt), experts.device)
    return context, context_null


def generate_memory_shot(
    experts: ExpertPair,
    vae: WanVAE,
    context: torch.Tensor,
    context_null: torch.Tensor,
    memory: ShotMemory,
    frame_num: int = 81,
    max_area: int = 832 * 480,
    settings: SamplerSettings = SamplerSettings(),
    decode_memory: bool = False,
    on_step: Callable[[int, int], None] | None = None,
    on_preview: Callable[[torch.Tensor], None] | None = None,
) -> ShotResult:
    """Generate one shot conditioned on memory keyframes (and the previous shot's last frame(s)); `decode_memory`
    also decodes the denoised memory latents, each alone (for parity checks)."""
    check_placement(memory.positions)
    tokens = shot_tokens(len(memory.images), max(frame_num, 1), max_area)
    with reporting_out_of_memory(experts, tokens):
        with visiting(vae, experts.device), phase(MEMORY_ENCODING):
            conditioning = build_conditioning(vae, memory.images, frame_num, max_area, memory.first_frame,
                                              memory.motion_frames, memory.fix_mem, device=experts.device)
        memory_count = conditioning.memory_count
        positions = memory_frame_positions(memory_count, conditioning.y.shape[1], memory.positions)
        noise, generator = seeded_noise((LATENT_CHANNELS, *conditioning.y.shape[1:]), settings.seed)
        latent = denoise(experts, noise, generator, context, context_null, settings, conditioning.y, on_step,
                         frame_positions=positions, on_preview=on_preview)
        with visiting(vae, experts.device), phase(DECODE):
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
    on_preview: Callable[[torch.Tensor], None] | None = None,
) -> ShotResult:
    """The story's first shot from text alone (Wan2.2 T2V experts)."""
    check_frame_num(frame_num)
    width, height = size_wh
    shape = (LATENT_CHANNELS, latent_frame_count(frame_num), height // 8, width // 8)
    noise, generator = seeded_noise(shape, settings.seed)
    with reporting_out_of_memory(experts, shot_tokens(0, frame_num, width * height)):
        latent = denoise(experts, noise, generator, context, context_null, settings, None, on_step,
                         on_preview=on_preview)
        with visiting(vae, experts.device), phase(DECODE):
            video = vae.decode(latent[None])[0]
    return ShotResult(video=video, latent=latent)


@contextlib.contextmanager
def visiting(module: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """`module` on `device` inside the block, back where it was after: a VAE kept on the CPU leaves the GPU
    to the experts while they sample."""
    home = next(module.parameters()).device
    module.to(device)
    try:
        yield
    finally:
        module.to(home)


def memory_advice(placement: str, fp8: bool, fitting: str | None = None) -> str:
    """What to change after running out of GPU memory: a plan that needs less (`fitting`, when measured, else the
    next one), then fp8 weights, then a smaller shot."""
    options = []
    rank = PLACEMENTS.index(placement)
    if fitting is not None and PLACEMENTS.index(fitting) > rank:
        options.append(PLACEMENT_HINTS[fitting])
    elif rank + 1 < len(PLACEMENTS):
        options.append(PLACEMENT_HINTS[PLACEMENTS[rank + 1]])
    if not fp8:
        options.append(FP8_HINT)
    options.append(SMALLER_HINT)
    return "use " + "; or ".join(options)


def _placement(experts: ExpertPair) -> str:
    if isinstance(experts.high, BlockSwapDiT):
        return Offload.BLOCKS
    return Offload.EXPERTS if experts.offload else Offload.NONE


def _fitting_placement(experts: ExpertPair, tokens: int) -> str | None:
    """The plan `choose_offload` picks for the memory free now plus what the experts hold (None off the GPU)."""
    if experts.device.type != "cuda":
        return None
    held = sum(t.numel() * t.element_size() for expert in (experts.high, experts.low) for t in expert.parameters()
               if t.device.type == "cuda")
    return choose_offload(experts.high, torch.cuda.mem_get_info(experts.device)[0] + held, tokens)


@contextlib.contextmanager
def reporting_out_of_memory(experts: ExpertPair, tokens: int) -> Iterator[None]:
    """Turn the GPU running out of memory inside the block into OutOfMemory naming what would fit.

    Put around one shot: nothing of the shot is kept, and the caller's finished shots are untouched.
    """
    try:
        yield
        return
    except torch.cuda.OutOfMemoryError as error:  # torch.OutOfMemoryError from torch 2.5 on
        detail = str(error).strip().splitlines()[0][:160] if str(error).strip() else "out of memory"
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    fp8 = any(isinstance(module, Fp8Linear) for module in experts.high.modules())
    advice = memory_advice(_placement(experts), fp8, _fitting_placement(experts, tokens))
    raise OutOfMemory(
        f"the shot ran out of GPU memory with offload '{_placement(experts)}' ({detail}); finished shots are kept: "
        f"{advice}, then run it again."
    ) from None


def shot_tokens(memory_count: int, frame_num: int, pixel_area: int) -> int:
    """DiT tokens of a shot with `memory_count` memory frames: latent frames x patches per frame (what
    activation memory grows with)."""
    return (memory_count + latent_frame_count(frame_num)) * pixel_area // PIXELS_PER_TOKEN
