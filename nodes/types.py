"""The values that travel on StoryMem sockets, and their ComfyUI type names.

ComfyUI caches every node output and re-runs only what changed, so a value handed downstream must
never change afterwards: banks and stories are frozen engine values, and a model value is a frozen
record of shared modules plus the LoRAs to apply while sampling. LoRAs are hooked in for one sampling
call and removed after it, so the loaded weights are never edited.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, replace
from typing import Iterator, Mapping

import torch
from torch import nn

from storymem_core.choices import ExpertKind, Noise, Offload
from storymem_core.errors import SettingsError
from storymem_core.lora import LoraWeights, apply_loras
from storymem_core.sampling import ExpertPair
from storymem_core.scorers import AestheticScorer, ImageEncoder
from storymem_core.wan.dit import DiTConfig
from storymem_core.wan.text_encoder import ParkedTextEncoder, TextEncoder

BANK = "STORYMEM_BANK"
MODEL = "STORYMEM_MODEL"
STORY = "STORYMEM_STORY"
TEXT_ENCODER = "STORYMEM_TEXT_ENCODER"
VAE = "STORYMEM_VAE"
KEYFRAME_ENCODER = "STORYMEM_KEYFRAME_ENCODER"

# expert modules that have sampled: another pair's shot parks them, so one pair at a time holds the GPU
_SAMPLED_EXPERTS: weakref.WeakSet[nn.Module] = weakref.WeakSet()


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA file pair already read: weights per expert (`Noise`), strength baked into their scales."""

    name: str
    strength: float
    weights: Mapping[str, LoraWeights]
    strict: bool = True  # False: entries matching no layer are logged and skipped (other base models' extras)


@dataclass(frozen=True, eq=False)
class WanExperts:
    """A Wan2.2 A14B expert pair as loaded: `kind` T2V (16 input channels) or I2V (36, StoryMem M2V).

    `offload` EXPERTS keeps one expert on the device at a time; BLOCKS experts are BlockSwapDiT wrappers (their
    weights live in `.dit`).
    """

    high: nn.Module
    low: nn.Module
    kind: str
    name: str
    offload: str = Offload.NONE
    loras: tuple[LoraSpec, ...] = ()

    @property
    def config(self) -> DiTConfig:
        return self.high.config

    def with_lora(self, lora: LoraSpec) -> WanExperts:
        return replace(self, loras=self.loras + (lora,))

    def require(self, kind: str, node: str) -> None:
        if self.kind != kind:
            wanted = {ExpertKind.T2V: "the Wan2.2 T2V-A14B experts (wan2.2_t2v_*)",
                      ExpertKind.I2V: "the Wan2.2 I2V-A14B experts (wan2.2_i2v_*) with the StoryMem LoRA"}
            raise SettingsError(f"{node} needs {wanted[kind]}, but {self.name} are {self.kind.upper()} experts: load "
                                "the other pair.")

    @contextlib.contextmanager
    def sampling(self, device: torch.device, park: torch.device) -> Iterator[ExpertPair]:
        """The pair with this value's LoRAs hooked in, for one sampling call; removed afterwards, even on error.

        Experts of other pairs that sampled before (the T2V pair after the first shot) move to `park` first.
        """
        for module in list(_SAMPLED_EXPERTS):
            if module is not self.high and module is not self.low:
                module.to(park)
                _SAMPLED_EXPERTS.discard(module)
        _SAMPLED_EXPERTS.update((self.high, self.low))
        applied = []
        try:
            for expert, module in zip(Noise, (self.high, self.low)):
                for lora in self.loras:
                    if expert in lora.weights:
                        applied.append(apply_loras(getattr(module, "dit", module), [lora.weights[expert]], mode="hook",
                                                   strict=lora.strict))
            yield ExpertPair(self.high, self.low, device, offload=self.offload == Offload.EXPERTS)
        finally:
            for lora in reversed(applied):
                lora.remove()


@dataclass(frozen=True, eq=False)
class TextModel:
    """umT5 encoder + tokenizer, parked on the offload device between shots."""

    encoder: TextEncoder
    name: str

    def for_dit(self, text_len: int, park: torch.device) -> ParkedTextEncoder:
        """An engine TextEncoder for experts reading `text_len` tokens, moved to the device only while encoding."""
        return ParkedTextEncoder(TextEncoder(self.encoder.tokenizer, self.encoder.encoder, text_len), park)


@dataclass(frozen=True, eq=False)
class KeyframeModel:
    """The image encoder for keyframe selection, and the optional aesthetic scorer (quality filter)."""

    encoder: ImageEncoder
    name: str
    scorer: AestheticScorer | None = None
