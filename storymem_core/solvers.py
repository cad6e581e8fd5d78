"""Flow-matching ODE solvers: the shifted sigma schedule and UniPC / DPM++ / Euler steps.

A sample at noise level sigma is `(1 - sigma) * x0 + sigma * noise` and the model predicts the velocity
`noise - x0`. Each solver owns its schedule, step index and history, so the sampling loop only calls
`step` once per model call. UniPC and DPM++ reproduce the reference (Wan2.2 / StoryMem) schedulers as
its generators configure them; Euler is the plain first-order flow ODE.
"""

from __future__ import annotations

import numpy as np
import torch

from .choices import Solver as SolverName
from .errors import SamplerError


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """Wan's timestep shift: a larger `shift` spends more of the steps at high noise."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_schedule(
    steps: int, shift: float, num_train_timesteps: int, start: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps (int64 [steps]) and sigmas (float32 [steps + 1], last 0) from `steps` even sigmas below `start`.

    Shifted in float64 and only then rounded, as the reference does: timesteps truncate, sigmas become float32.
    """
    sigmas = shift_sigmas(np.linspace(start, 0.0, steps + 1)[:-1], shift)
    timesteps = torch.from_numpy(sigmas * num_train_timesteps).to(torch.int64)
    return timesteps, torch.from_numpy(np.append(sigmas, 0.0).astype(np.float32))


def log_snr(sigma: torch.Tensor) -> torch.Tensor:
    """lambda = log(alpha / sigma) with alpha = 1 - sigma; +inf at the clean end (sigma 0)."""
    return torch.log(1 - sigma) - torch.log(sigma)


class Solver:
    """Walks one schedule, one model call per `step`; make a fresh solver for every shot."""

    def __init__(self, timesteps: torch.Tensor, sigmas: torch.Tensor):
        self.timesteps = timesteps
        self.sigmas = sigmas
        self.index = 0

    @property
    def is_last_step(self) -> bool:
        return self.index == len(self.timesteps) - 1

    def step(
        self, model_output: torch.Tensor, sample: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The sample at the next sigma (float32), given the velocity predicted at the current one.

        `generator` is the shot's seeded stream, passed on every step as the reference does; these ODE
        solvers draw nothing from it (neither do the reference's UniPC and dpmsolver++), so it stays in sync.
        """
        if self.index >= len(self.timesteps):
            raise SamplerError(
                f"This solver has already taken all its {len(self.timesteps)} steps; make a new solver for each shot."
            )
        next_sample = self._advance(model_output.float(), sample.float())
        self.index += 1
        return next_sample

    def _advance(self, velocity: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Euler(Solver):
    """First-order flow ODE: exact whenever the velocity is constant along the path."""

    def _advance(self, velocity: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        return sample + (self.sigmas[self.index + 1] - self.sigmas[self.index]) * velocity


class UniPC(Solver):
    """UniPC multistep on data predictions, B(h) = expm1 ("bh2"), order 2.

    Before predicting, UniC corrects the sample just reached using the model output taken there; the order
    is 1 on the first step (no history) and on the last (lower-order final).
    """

    def __init__(self, timesteps: torch.Tensor, sigmas: torch.Tensor):
        super().__init__(timesteps, sigmas)
        self.denoised: list[torch.Tensor] = []  # x0 predictions of the last two steps, newest last
        self.previous_sample: torch.Tensor | None = None
        self.previous_order = 1

    def _advance(self, velocity: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        # the x0 prediction uses the sample the model saw, before correction
        denoised = sample - self.sigmas[self.index] * velocity
        if self.index > 0:
            sample = self._correct(denoised, sample)
        self.denoised = (self.denoised + [denoised])[-2:]
        order = min(2, self.index + 1, len(self.timesteps) - self.index)
        self.previous_sample, self.previous_order = sample, order
        return self._predict(sample, order)

    def _predict(self, sample: torch.Tensor, order: int) -> torch.Tensor:
        """UniP from sigma[i] to sigma[i + 1]."""
        i = self.index
        sigma_s, sigma_t = self.sigmas[i], self.sigmas[i + 1]
        h = log_snr(sigma_t) - log_snr(sigma_s)
        b_h = torch.expm1(-h)
        latest = self.denoised[-1]
        predicted = sigma_t / sigma_s * sample - (1 - sigma_t) * b_h * latest
        if order == 2:
            r = (log_snr(self.sigmas[i - 1]) - log_snr(sigma_s)) / h
            # rho = 1/2 is the reference's closed form for second-order UniP
            predicted = predicted - (1 - sigma_t) * b_h * (0.5 * ((self.denoised[-2] - latest) / r))
        return predicted

    def _correct(self, denoised: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """UniC: redo the step sigma[i - 1] -> sigma[i] with the new model output in the interpolation."""
        i, order = self.index, self.previous_order
        sigma_s, sigma_t = self.sigmas[i - 1], self.sigmas[i]
        h = log_snr(sigma_t) - log_snr(sigma_s)
        b_h = torch.expm1(-h)
        latest = self.denoised[-1]
        corrected = sigma_t / sigma_s * self.previous_sample - (1 - sigma_t) * b_h * latest
        new_difference = denoised - latest
        if order == 1:
            return corrected - (1 - sigma_t) * b_h * (0.5 * new_difference)
        r = (log_snr(self.sigmas[i - 2]) - log_snr(sigma_s)) / h
        phi_2 = b_h / -h - 1
        phi_3 = phi_2 / -h - 0.5
        rhos = torch.linalg.solve(
            torch.tensor([[1.0, 1.0], [r.item(), 1.0]]), torch.stack([phi_2 / b_h, phi_3 * 2 / b_h])
        )
        history_term = rhos[0] * ((self.denoised[-2] - latest) / r)
        return corrected - (1 - sigma_t) * b_h * (history_term + rhos[1] * new_difference)


class DPMPlusPlus(Solver):
    """DPM-Solver++ multistep (midpoint), order 2; first order on the first step and on the last."""

    def __init__(self, timesteps: torch.Tensor, sigmas: torch.Tensor):
        super().__init__(timesteps, sigmas)
        self.denoised: list[torch.Tensor] = []  # x0 predictions of the last two steps, newest last

    def _advance(self, velocity: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        i = self.index
        denoised = sample - self.sigmas[i] * velocity
        self.denoised = (self.denoised + [denoised])[-2:]
        sigma_s, sigma_t = self.sigmas[i], self.sigmas[i + 1]
        h = log_snr(sigma_t) - log_snr(sigma_s)
        alpha_phi = (1 - sigma_t) * (torch.exp(-h) - 1.0)
        next_sample = (sigma_t / sigma_s) * sample - alpha_phi * denoised
        if i > 0 and not self.is_last_step:
            r = (log_snr(sigma_s) - log_snr(self.sigmas[i - 1])) / h
            slope = (1.0 / r) * (denoised - self.denoised[-2])
            next_sample = next_sample - 0.5 * alpha_phi * slope
        return next_sample


def make_solver(name: str, steps: int, shift: float, num_train_timesteps: int = 1000) -> Solver:
    """A fresh solver over `steps` shifted sigmas, set up as the reference generators set theirs up."""
    if name not in SolverName.names():
        raise SamplerError(f"Unknown solver {name!r}; choose one of: {', '.join(SolverName.names())}.")
    if steps < 1:
        raise SamplerError(f"Sampling steps must be at least 1 (got {steps}); raise the step count.")
    if shift <= 0:
        raise SamplerError(f"Sampling shift must be positive (got {shift}); StoryMem uses 4 for memory shots and 12 "
                           "for a T2V first shot.")
    if name == SolverName.UNIPC:
        # UniPC starts at the largest training sigma, 1 - 1/N in float32, not at 1
        start = float(np.float32(1.0 - 1.0 / num_train_timesteps))
        return UniPC(*flow_schedule(steps, shift, num_train_timesteps, start))
    solver_class = DPMPlusPlus if name == SolverName.DPMPP else Euler
    return solver_class(*flow_schedule(steps, shift, num_train_timesteps, 1.0))
