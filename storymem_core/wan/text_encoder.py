"""Prompts -> per-prompt umT5 context, the `context` the DiT cross-attends to."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
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

    def visiting(self, device: torch.device | str) -> contextlib.AbstractContextManager[None]:
        """Nothing to move: this encoder stays where it was put (see ParkedTextEncoder)."""
        return contextlib.nullcontext()

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

    @contextlib.contextmanager
    def visiting(self, device: torch.device | str) -> Iterator[None]:
        """On `device` inside the block, parked after; a visit inside a visit moves nothing."""
        module = self.encoder.encoder
        if _same_device(next(module.parameters()).device, torch.device(device)):
            yield
            return
        module.to(device)
        try:
            yield
        finally:
            module.to(self.park)

    def encode(self, prompts: Sequence[str], device: torch.device | str) -> list[torch.Tensor]:
        with self.visiting(device):
            return self.encoder.encode(prompts, device)


def _same_device(held: torch.device, wanted: torch.device) -> bool:
    """`wanted` may leave out the index of the current CUDA device."""
    if held.type != wanted.type:
        return False
    return wanted.index is None or held.index == wanted.index
