"""umT5 tokenizer on plain sentencepiece, reproducing the reference's Hugging Face call.

The reference calls `AutoTokenizer('google/umt5-xxl')(texts, padding='max_length', truncation=True,
max_length=text_len, add_special_tokens=True)` on cleaned text. That is: sentencepiece pieces, cut to
text_len - 1, then EOS, then PAD up to text_len; the mask marks pieces and EOS. Doing it on
sentencepiece directly avoids a transformers dependency and any download.

Cleaning follows the reference's 'whitespace' mode: ftfy.fix_text, html-unescape twice, collapse
whitespace runs to one space, strip. The reference imports ftfy unconditionally; here it is applied
when installed and skipped otherwise, which only matters for mojibake such as 'FranÃ§ois'.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path

import sentencepiece
import torch

from ..errors import CheckpointError
from ..safe_files import check_file, read_bytes

try:
    import ftfy
except ImportError:
    ftfy = None

SPIECE_FILE = "spiece.model"
WAN_TOKENIZER_DIR = Path("google/umt5-xxl")  # where Wan-AI model folders keep it


def clean_prompt(text: str) -> str:
    """The reference's 'whitespace' cleaning (ftfy only when installed)."""
    if ftfy is not None:
        text = ftfy.fix_text(text)
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip()


class UMT5Tokenizer:
    """Prompts -> (ids [B, text_len], mask [B, text_len]) with EOS appended and PAD after it."""

    def __init__(self, model_proto: bytes, source: str):
        self.source = source
        try:
            self.processor = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
        except RuntimeError as error:
            raise CheckpointError(
                f"{source} is not a readable sentencepiece model ({error}); use the umT5 spiece.model from "
                "google/umt5-xxl."
            ) from None
        self.pad_id, self.eos_id = self.processor.pad_id(), self.processor.eos_id()
        if self.pad_id < 0 or self.eos_id < 0:
            raise CheckpointError(
                f"{source} defines no pad or end-of-sentence piece, so it is not a T5 tokenizer; use the umT5 "
                "spiece.model."
            )

    @classmethod
    def from_bytes(cls, data: bytes | torch.Tensor, source: str = "the embedded spiece_model") -> "UMT5Tokenizer":
        """From a serialised model, as ComfyUI text-encoder files carry it (uint8 tensor `spiece_model`)."""
        if isinstance(data, torch.Tensor):
            data = data.cpu().numpy().tobytes()
        return cls(data, source)

    @classmethod
    def from_path(cls, path: str | Path) -> "UMT5Tokenizer":
        """From a spiece.model file, a folder holding one, or a Wan-AI model folder (google/umt5-xxl/spiece.model)."""
        path = Path(path)
        if check_file(path, "tokenizer", CheckpointError).is_file():
            candidates = [path]
        else:
            candidates = [path / SPIECE_FILE, path / WAN_TOKENIZER_DIR / SPIECE_FILE]
        for candidate in candidates:
            if candidate.is_file():
                return cls(read_bytes(candidate, "tokenizer", CheckpointError), str(candidate))
        raise CheckpointError(
            f"No umT5 tokenizer at {path}: expected {SPIECE_FILE} in it or in {WAN_TOKENIZER_DIR}/ below it; "
            f"copy {SPIECE_FILE} from the google/umt5-xxl folder of the Wan2.2 download there."
        )

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    def __call__(self, prompts: Sequence[str], text_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        if text_len < 1:
            raise ValueError(f"text_len must be at least 1 (room for EOS), got {text_len}")
        pieces = self.processor.encode([clean_prompt(p) for p in prompts])
        ids = torch.full((len(prompts), text_len), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), text_len), dtype=torch.long)
        for row, tokens in enumerate(pieces):
            tokens = tokens[: text_len - 1] + [self.eos_id]  # truncation keeps EOS last
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        return ids, mask
