"""Checkpoints into modules: names and shapes checked from the header before anything is assigned, tensors
streamed one at a time; and the loaders that build a DiT expert, umT5 or VAE at the size its file describes
(its stored config, else its tensor shapes). See docs/architecture.md.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..errors import CheckpointError
from ..model_sizes import checked_sizes
from ..safe_files import check_file
from ..wan.dit import DiTConfig, WanDiT
from ..wan.fp8 import load_fp8_weights
from ..wan.text_encoder import TextEncoder
from ..wan.tokenizer import UMT5Tokenizer
from ..wan.vae import WanVAE
from .checkpoint import DEQUANTIZED_DTYPE, Checkpoint
from .classify import classify
from .configs import CONFIG_KEY, dit_config_from_shapes
from .kinds import DIT_KINDS, KINDS, UMT5, UNKNOWN, WAN21_VAE
from .readers import SAFETENSORS_SUFFIXES
from .shapes import fit_faults, model_shapes

log = logging.getLogger(__name__)

T = TypeVar("T")

TensorProgress = Callable[[int, int], None]  # (tensors read, tensors in the file); may raise to stop the load


def load_state_dict(
    path: str | Path | Mapping[str, torch.Tensor],
    kind: str | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    keep_fp8: bool = False,
) -> dict[str, torch.Tensor]:
    """All tensors under our names: prefix stripped, HF-T5 renamed, fp8 dequantised to `dtype` (bf16 when None).

    `keep_fp8=True` keeps fp8 weights with `<layer>.scale_weight` beside them (for `wan.fp8.load_fp8_weights`).
    """
    checkpoint = Checkpoint(path, kind)
    checkpoint.raise_problems()
    return dict(checkpoint.tensors(dtype, device, keep_fp8))


def _check_fit(
    expected: dict[str, tuple[int, ...]], given: dict[str, tuple[int, ...]], source: str, strict: bool
) -> None:
    """Raise before anything is assigned when the file's names or shapes do not fit the model."""
    missing = expected.keys() - given.keys()
    unexpected = given.keys() - expected.keys()
    if faults := fit_faults(expected, given, strict):
        raise CheckpointError(
            f"{source} does not fit this model: {'; '.join(faults)}; "
            "load the checkpoint made for this model size and version."
        )
    if missing or unexpected:
        log.warning("%s: %d model tensors not in the file, %d file tensors not in the model",
                    source, len(missing), len(unexpected))


def _assign(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Copy into the existing tensor, or take the tensor as it is where the model is on the meta device."""
    owner_name, _, attr = name.rpartition(".")
    owner = module.get_submodule(owner_name)
    target = getattr(owner, attr)
    if not target.is_meta:
        with torch.no_grad():
            target.copy_(tensor)
    elif isinstance(target, nn.Parameter):
        setattr(owner, attr, nn.Parameter(tensor, requires_grad=target.requires_grad))
    else:
        setattr(owner, attr, tensor)


def load_model(
    module: nn.Module,
    source: str | Path | Mapping[str, torch.Tensor],
    strict: bool = True,
    keep_fp8: bool = False,
    device: torch.device | str = "cpu",
    dequantize_to: torch.dtype = DEQUANTIZED_DTYPE,
    on_tensor: TensorProgress | None = None,
) -> nn.Module:
    """Load weights into `module`, checking kind, names and shapes from the header before assigning anything.

    Tensors stream one at a time into the module's own tensors (cast to their dtype); a module built on the
    meta device takes the file's tensors on `device` instead, fp8 weights dequantised to `dequantize_to` (one
    rounding of weight x scale into the dtype the caller will run in). `keep_fp8=True` turns layers with fp8
    weights into Fp8Linear layers. `on_tensor` follows the reading (a 14B expert is over a thousand tensors and
    tens of GB) and may raise to stop it.
    """
    expected = model_shapes(module)
    kind = classify(expected)[0]
    checkpoint = Checkpoint(source, None if kind == UNKNOWN else kind)
    checkpoint.raise_problems()
    _check_fit(expected, checkpoint.shapes(), checkpoint.info.path, strict)
    if keep_fp8:
        on_meta = any(t.is_meta for t in module.state_dict().values())
        read = checkpoint.tensors(device=device, keep_fp8=True)
        tensors = dict(_reported(read, len(checkpoint.shapes()), on_tensor, counts=_is_file_entry))
        return load_fp8_weights(module, tensors, strict=strict, assign=on_meta)
    targets = module.state_dict(keep_vars=True)
    names = checkpoint.shapes().keys() & targets.keys()
    for name in _reported(names, len(names), on_tensor):
        target = targets[name]
        on_meta = target.is_meta
        dtype, at = (None, device) if on_meta else (target.dtype, target.device)
        tensor = checkpoint.read(name, dtype=dtype, device=at, dequantize_to=dequantize_to)
        _assign(module, name, tensor)
    return module


def _reported(items: Iterable[T], total: int, on_tensor: TensorProgress | None,
              counts: Callable[[T], bool] = lambda item: True) -> Iterator[T]:
    """`items`, with `on_tensor(done, total)` after each one `counts` (a file entry: not an fp8 weight's scale)."""
    done = 0
    for item in items:
        yield item
        if on_tensor is not None and counts(item):
            done += 1
            on_tensor(done, total)


def _is_file_entry(named_tensor: tuple[str, torch.Tensor]) -> bool:
    """Not the scale `Checkpoint.tensors` yields after an fp8 weight, which is part of that weight's entry."""
    return not named_tensor[0].endswith(".scale_weight")


def is_test_model(path: str | Path) -> bool:
    """Whether a file is one of the pack's tiny random test models: they store their config in the safetensors
    metadata, which no published file does."""
    if not Path(path).name.lower().endswith(SAFETENSORS_SUFFIXES):
        return False
    try:
        path = check_file(path, "model file", CheckpointError)  # never opens a pipe or a device
        with safe_open(str(path), framework="pt") as handle:
            return CONFIG_KEY in (handle.metadata() or {})
    except (CheckpointError, SafetensorError, OSError):
        return False


def stored_config(path: str | Path, kind: str) -> dict | None:
    """The JSON config in a safetensors file's metadata, its sizes checked for a model of `kind` (a checkpoint
    kind), or None (no key, or a .pth file)."""
    path = check_file(path, "model file", CheckpointError)
    if not path.name.lower().endswith(SAFETENSORS_SUFFIXES):
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise CheckpointError(
            f"{path} is not a complete safetensors file ({error}); download it again."
        ) from None
    if CONFIG_KEY not in metadata:
        return None
    try:
        config = json.loads(metadata[CONFIG_KEY])
    except (ValueError, RecursionError):
        raise CheckpointError(
            f"{path} has an unreadable '{CONFIG_KEY}' metadata entry: rewrite the file with valid JSON there."
        ) from None
    return checked_sizes(config, KINDS[kind].sizes or kind, str(path))


def _opened(path: Path, kinds: tuple[str, ...], expected: str) -> Checkpoint:
    checkpoint = Checkpoint(path)
    if checkpoint.info.kind == UNKNOWN and checkpoint.info.problems:
        checkpoint.raise_problems()  # what it is not says more than "not a model this pack reads"
    if checkpoint.info.kind not in kinds:
        raise CheckpointError(
            f"{path.name} is {KINDS[checkpoint.info.kind].name}, not {expected}: pick the right file in this loader."
        )
    checkpoint.raise_problems()
    return checkpoint


def dit_config(path: str | Path) -> tuple[DiTConfig, Checkpoint]:
    """A Wan2.2 expert's config from its metadata or, failing that, its tensor shapes."""
    path = Path(path)
    checkpoint = _opened(path, DIT_KINDS, "a Wan2.2 A14B DiT expert (wan2.2_t2v_* / wan2.2_i2v_*)")
    stored = stored_config(path, checkpoint.info.kind)
    if stored is not None:
        return DiTConfig.from_dict(stored), checkpoint
    return dit_config_from_shapes(checkpoint.shapes(), path.name), checkpoint


def load_dit(path: str | Path, dtype: torch.dtype, keep_fp8: bool | None = False,
             on_tensor: TensorProgress | None = None) -> WanDiT:
    """Build the expert at the file's size on the meta device and take the file's tensors (no second copy).

    `keep_fp8`: fp8 layers stay fp8 (True), are dequantised to `dtype` (False), or stay fp8 when the file has them
    (None). `on_tensor` as for `load_model`.
    """
    config, checkpoint = dit_config(path)
    if keep_fp8 is None:
        keep_fp8 = checkpoint.info.fp8 is not None
    elif keep_fp8 and checkpoint.info.fp8 is None:
        raise CheckpointError(
            f"{Path(path).name} holds no fp8 weights to keep: choose bf16 (or auto) as the weight dtype."
        )
    with torch.device("meta"):
        dit = WanDiT(config)
    load_model(dit, path, keep_fp8=keep_fp8, dequantize_to=dtype, on_tensor=on_tensor)
    return dit.cast_weights(torch.bfloat16 if keep_fp8 else dtype).eval().requires_grad_(False)


def described_model(kind: str, path: str | Path, shapes: Mapping[str, tuple[int, ...]]) -> nn.Module | None:
    """The model a DiT, umT5, VAE or image-encoder file describes (its stored config, else its shapes), on the meta
    device, as the table of kinds builds it.

    None for other kinds, and for an image encoder without a stored config (its open_clip name is the user's choice).
    Every size is checked before anything is built.
    """
    entry = KINDS[kind]
    if entry.builder is None:
        return None
    stored = stored_config(path, kind)
    if stored is not None:
        return entry.builder(entry.config_from_dict(stored))
    if entry.config_from_shapes is None:
        return None
    return entry.builder(entry.config_from_shapes(shapes, Path(path).name))


def load_text_encoder(path: str | Path, dtype: torch.dtype) -> TextEncoder:
    """umT5 + its tokenizer: the one inside the file (ComfyUI files) or a spiece.model beside it."""
    path = Path(path)
    checkpoint = _opened(path, (UMT5,), "a umT5-xxl text encoder (umt5_xxl_*)")
    embedded = checkpoint.embedded_tokenizer()
    if embedded is not None:
        tokenizer = UMT5Tokenizer.from_bytes(embedded, f"the tokenizer inside {path.name}")
    else:
        tokenizer = UMT5Tokenizer.from_path(path.parent)
    encoder = load_model(described_model(UMT5, path, checkpoint.shapes()), path, dequantize_to=dtype)
    return TextEncoder(tokenizer, encoder.to(dtype).eval().requires_grad_(False))


def load_vae(path: str | Path, dtype: torch.dtype) -> WanVAE:
    """The Wan2.1 VAE at the file's width."""
    path = Path(path)
    checkpoint = _opened(path, (WAN21_VAE,), "a Wan2.1 VAE (wan_2.1_vae)")
    vae = load_model(described_model(WAN21_VAE, path, checkpoint.shapes()), path)
    return vae.to(dtype).eval().requires_grad_(False)

