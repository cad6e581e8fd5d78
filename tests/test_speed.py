"""Speed options users feel: a guide of exactly 1 runs one DiT forward per step, per expert."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from storymem_core.sampling import ExpertPair, SamplerSettings, denoise, seeded_noise
from storymem_core.tiny_models import DIT
from storymem_core.wan.dit import DiTConfig, WanDiT


class CountingExpert(nn.Module):
    """A DiT that counts its forwards (one per prompt pass)."""

    def __init__(self, dit: WanDiT):
        super().__init__()
        self.dit = dit
        self.calls = 0

    def forward(self, *args, **kwargs) -> torch.Tensor:
        self.calls += 1
        return self.dit(*args, **kwargs)


def tiny_expert(seed: int) -> CountingExpert:
    torch.manual_seed(seed)
    return CountingExpert(WanDiT(DiTConfig.from_dict({**DIT, "in_dim": 16})).eval())


def sample(settings: SamplerSettings) -> tuple[torch.Tensor, CountingExpert, CountingExpert]:
    high, low = tiny_expert(1), tiny_expert(2)
    noise, generator = seeded_noise((16, 2, 4, 4), settings.seed)
    context, context_null = torch.randn(5, DIT["text_dim"]), torch.randn(3, DIT["text_dim"])
    latent = denoise(ExpertPair(high, low), noise, generator, context, context_null, settings)
    return latent, high, low


@pytest.mark.parametrize("batch_cfg", [False, True])
def test_guide_one_runs_one_forward_per_step_in_each_expert_independently(batch_cfg):
    # boundary 0.9 with shift 4: the first 2 of 4 steps are the high expert's
    settings = SamplerSettings(steps=4, shift=4.0, solver="euler", boundary=0.9, guide_high=3.5, guide_low=1.0, batch_cfg=batch_cfg)
    _, high, low = sample(settings)
    high_calls = 1 if batch_cfg else 2  # a batch of two is one call
    assert (high.calls, low.calls) == (2 * high_calls, 2)


def test_guide_one_gives_the_shot_that_both_passes_give():
    settings = SamplerSettings(steps=3, solver="unipc", guide_high=1.0, guide_low=1.0)
    one_pass, high, low = sample(settings)
    # a guide a hair above 1 takes the two-pass path: the same shot within float32 rounding, at twice the forwards
    two_passes, high_both, low_both = sample(SamplerSettings(steps=3, solver="unipc", guide_high=1.0000001, guide_low=1.0000001))
    torch.testing.assert_close(one_pass, two_passes, rtol=1e-5, atol=1e-5)
    assert high.calls + low.calls == 3
    assert high_both.calls + low_both.calls == 6
