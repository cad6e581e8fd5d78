"""The one sampling loop: seeded noise, MoE expert switch at the boundary, CFG, a flow-matching solver.

T2V first shots and memory-conditioned shots both run through `denoise`; they differ only in the
conditioning `y` and the settings (boundary, guide scales, shift).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Protocol

import torch
from torch import nn

from .choices import Solver
from .errors import SamplerError
from .limits import MAX_GUIDE, MAX_SHIFT, MAX_STEPS, MIN_SHIFT, check_number
from .solvers import make_solver
from .timing import SAMPLING_HIGH, SAMPLING_LOW, phase

NUM_TRAIN_TIMESTEPS = 1000
LATENT_CHANNELS = 16


@dataclass(frozen=True)
class SamplerSettings:
    """Defaults are StoryMem's M2V settings (wan/configs/wan_m2v_A14B.py); the T2V first shot's are
    `shot.T2V_SETTINGS`."""

    steps: int = 40
    shift: float = 4.0
    solver: str = Solver.UNIPC
    boundary: float = 0.9
    guide_low: float = 3.5
    guide_high: float = 3.5
    seed: int = 0
    batch_cfg: bool = False  # cond + uncond as one batch of two: faster on GPUs, same math

    def check(self) -> None:
        """Refuse values no sampler can use before a model loads (a NaN shift samples an all-black film)."""
        if self.solver not in Solver.names():
            raise SamplerError(f"solver {self.solver!r} is unknown: choose one of {', '.join(Solver.names())}.")
        check_number(self.steps, "steps", 1, MAX_STEPS, "StoryMem samples 40")
        check_number(self.shift, "shift", MIN_SHIFT, MAX_SHIFT, "leave it out for StoryMem's 4 (M2V) and 12 (T2V)")
        for guide in (self.guide_high, self.guide_low):
            check_number(guide, "guide (CFG)", 0, MAX_GUIDE, "leave it out for StoryMem's 3.5 (M2V) and 3 / 4 (T2V)")
        check_number(self.boundary, "expert boundary", 0, 1, "Wan2.2 switches experts at 0.9 (M2V) and 0.875 (T2V)")


class ForwardChannel(Protocol):
    """Runs one guided prediction on every rank (storymem_core.distributed's PairChannel under torchrun)."""

    def prediction(self, high: bool, latent: torch.Tensor, t: float, context: torch.Tensor, context_null: torch.Tensor,
                   guide: float, y: torch.Tensor | None, frame_positions: torch.Tensor | None) -> torch.Tensor: ...


class ExpertPair:
    """High-noise and low-noise experts; `offload` keeps only the active one on the device; `parallel` (under
    torchrun, on rank 0) runs each forward across every rank."""

    def __init__(self, high: nn.Module, low: nn.Module, device: torch.device | str = "cpu", offload: bool = False,
                 parallel: ForwardChannel | None = None):
        self.high, self.low = high, low
        self.device = torch.device(device)
        self.offload = offload
        self.parallel = parallel

    def park(self) -> None:
        """Both experts off the device, e.g. the T2V pair once the first shot is done, so the M2V pair has the room."""
        self.high.to("cpu")
        self.low.to("cpu")

    def activate(self, high: bool) -> nn.Module:
        """The high (or low) expert, on the device."""
        active, idle = (self.high, self.low) if high else (self.low, self.high)
        if self.offload:
            idle.to("cpu")  # first, so both experts are never on the device together
        return active.to(self.device)


def seeded_noise(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Generator]:
    """ONE draw from a CPU generator, which the solver steps then keep using (as the reference does)."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(*shape, generator=generator), generator


def guided_prediction(
    model: nn.Module,
    latent: torch.Tensor,
    t: torch.Tensor,
    context: torch.Tensor,
    context_null: torch.Tensor,
    guide: float,
    y: torch.Tensor | None,
    batch_cfg: bool,
) -> torch.Tensor:
    """uncond + guide * (cond - uncond) for one latent [C, T, h, w]; at a guide of exactly 1 that is cond alone,
    so the negative prompt's forward is skipped (half the work, as distilled LoRAs sample)."""
    y_batch = None if y is None else y[None]
    if guide == 1.0:
        return model(latent[None], t, context[None], y_batch)[0]
    if batch_cfg:
        length = max(context.shape[0], context_null.shape[0])
        contexts = torch.stack([_pad_tokens(context, length), _pad_tokens(context_null, length)])
        both = model(latent[None].expand(2, -1, -1, -1, -1), t.expand(2), contexts,
                     None if y is None else y_batch.expand(2, -1, -1, -1, -1))
        cond, uncond = both[0], both[1]
    else:
        cond = model(latent[None], t, context[None], y_batch)[0]
        uncond = model(latent[None], t, context_null[None], y_batch)[0]
    return uncond + guide * (cond - uncond)


def _pad_tokens(context: torch.Tensor, length: int) -> torch.Tensor:
    # zero tokens are what the DiT pads with anyway, so batching prompts of unequal length is exact
    return nn.functional.pad(context, (0, 0, 0, length - context.shape[0]))


def denoise(
    experts: ExpertPair,
    noise: torch.Tensor,
    generator: torch.Generator,
    context: torch.Tensor,
    context_null: torch.Tensor,
    settings: SamplerSettings,
    y: torch.Tensor | None = None,
    on_step: Callable[[int, int], None] | None = None,
    frame_positions: torch.Tensor | None = None,
    on_preview: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Integrate from `noise` [16, T, h, w] to a clean latent. `on_step(i, total)` reports progress and may
    raise to stop (interruption is checked between steps, never mid-step). `frame_positions` are the latent
    frames' RoPE time positions (storymem_core.positions); None numbers them 0..T-1. `on_preview` gets each step's
    denoised estimate [16, T, h, w] (what the sample will look like), for live previews."""
    settings.check()
    solver = make_solver(settings.solver, settings.steps, settings.shift, NUM_TRAIN_TIMESTEPS)
    boundary_t = settings.boundary * NUM_TRAIN_TIMESTEPS
    device = experts.device
    latent = noise.to(device)
    context, context_null = context.to(device), context_null.to(device)
    y = None if y is None else y.to(device)
    total = len(solver.timesteps)
    with torch.no_grad():
        for i, t in enumerate(solver.timesteps):
            high = t.item() >= boundary_t
            with phase(SAMPLING_HIGH if high else SAMPLING_LOW):  # the expert switch counts in its expert's phase
                model = experts.activate(high)
                guide = settings.guide_high if high else settings.guide_low
                if experts.parallel is not None:
                    prediction = experts.parallel.prediction(high, latent, t.item(), context, context_null, guide, y,
                                                             frame_positions)
                else:
                    if frame_positions is not None:
                        model = partial(model, frame_positions=frame_positions)
                    prediction = guided_prediction(
                        model, latent, t.reshape(1).to(device), context, context_null, guide, y, settings.batch_cfg
                    )
                if on_preview is not None:  # flow matching: x0 = x_sigma - sigma * velocity
                    on_preview(latent - solver.sigmas[i].to(device) * prediction.float())
                latent = solver.step(prediction.float(), latent, generator=generator)
            if on_step is not None:
                on_step(i + 1, total)
    return latent
