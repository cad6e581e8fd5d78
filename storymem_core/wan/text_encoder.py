"""Prompts -> per-prompt umT5 context, the `context` the DiT cross-attends to."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import CheckpointError
from .t5 import UMT5Encoder
from .tokenizer import UMT5Tokenizer


class TextEncoder:
    """Tokenizer + encoder; each context is cut to its prompt's real tokens (EOS included), as the reference does."""

    def __init__(self, tokenizer: UMT5Tokenizer, encoder: UMT5Encoder, text_len: int = 512):
        if tokenizer.vocab_size > encoder.config.vocab:
            raise CheckpointError(
                f"Tokenizer {tokenizer.source} has {tokenizer.vocab_size} pieces but the text encoder embeds only "
                f"{encoder.config.vocab}; load the spiece.model that belongs to this umT5 checkpoint."
            )
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.text_len = text_len

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], device: torch.device | str) -> list[torch.Tensor]:
        """One [L_i, dim] tensor per prompt, L_i <= text_len; the encoder must already be on `device`."""
        ids, mask = self.tokenizer(prompts, self.text_len)
        context = self.encoder(ids.to(device), mask.to(device))  # [B, text_len, dim]
        return [states[:length] for states, length in zip(context, mask.sum(dim=1).tolist())]


@dataclass(frozen=True)
class ParkedTextEncoder:
    """A TextEncoder that visits the device only while encoding, so the DiT has the GPU to itself."""

    encoder: TextEncoder
    park: torch.device

    def encode(self, prompts: Sequence[str], device: torch.device | str) -> list[torch.Tensor]:
        module = self.encoder.encoder.to(device)
        try:
            return self.encoder.encode(prompts, device)
        finally:
            module.to(self.park)
