"""Reading tensors: one .safetensors file or a shard set (through its index), and .pth state dicts.

Tensors are read one at a time (safetensors / mmap), so loading never holds a second full copy (older non-zip
.pth files cannot be mapped and are read whole). `.pth` files load with weights_only=True only.
See docs/architecture.md.
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..errors import CheckpointError
from ..safe_files import check_file, read_bytes, unopenable

PTH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
MODEL_SUFFIXES = SAFETENSORS_SUFFIXES + PTH_SUFFIXES

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
_ZIP_MAGIC, _EMPTY_ZIP_MAGIC, _PICKLE_PROTOCOL = b"PK\x03\x04", b"PK\x05\x06", b"\x80"


class SafetensorsFiles:
    """Tensors of one .safetensors file or of all shards of a model, read one at a time."""

    def __init__(self, files: list[Path]):
        self.headers: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        self._handles = {}
        for path in files:
            check_file(path, "model file", CheckpointError)
            try:
                handle = safe_open(str(path), framework="pt")
                names = list(handle.keys())
            except (SafetensorError, OSError) as error:
                raise CheckpointError(
                    f"{path} is not a complete safetensors file ({error}); download it again."
                ) from None
            for name in names:
                view = handle.get_slice(name)
                dtype = _SAFETENSORS_DTYPES.get(view.get_dtype())
                if dtype is None:
                    raise CheckpointError(
                        f"{path} stores '{name}' as {view.get_dtype()}, a type this loader cannot read; "
                        "use a bf16, fp16 or fp8 file."
                    )
                self.headers[name] = (tuple(view.get_shape()), dtype)
                self._handles[name] = handle

    def read(self, name: str) -> torch.Tensor:
        try:
            return self._handles[name].get_tensor(name)
        except SafetensorError as error:
            raise CheckpointError(f"Tensor '{name}' cannot be read ({error}); download the file again.") from None


class TensorDict:
    """Tensors already in memory: a state dict given by the caller or a .pth mapped with mmap."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        self._tensors = {name: t for name, t in tensors.items() if isinstance(t, torch.Tensor)}
        self.headers = {name: (tuple(t.shape), t.dtype) for name, t in self._tensors.items()}

    def read(self, name: str) -> torch.Tensor:
        return self._tensors[name]


TensorReader = SafetensorsFiles | TensorDict


def _pth_format(path: Path) -> str:
    """'zip' (torch.save since 1.6), 'pickle' (the older single stream), 'safetensors' (renamed), or what else the
    file holds."""
    with open(path, "rb") as handle:
        opening = handle.read(10)
    start = opening[:4]
    if opening[8:] == b'{"':  # an 8-byte header length, then the JSON header
        return "safetensors"
    if start in (_ZIP_MAGIC, _EMPTY_ZIP_MAGIC):
        return "zip"
    if start[:1] == _PICKLE_PROTOCOL:
        return "pickle"
    if not start:
        return "it is empty"
    if not start.strip(b"\0"):
        return "it starts with zero bytes"
    text = all(32 <= byte < 127 or byte in b"\t\n\r" for byte in start)
    return "it holds text" if text else "it holds unknown data"


def read_pth(path: Path) -> Mapping[str, torch.Tensor]:
    """A .pth / .bin / .ckpt state dict, tensors only: a file holding other Python objects is refused, never
    unpickled."""
    check_file(path, "model file", CheckpointError)
    try:
        file_format = _pth_format(path)
    except OSError as failure:
        raise unopenable(CheckpointError, "model file", path, failure) from None
    if file_format == "safetensors":
        raise CheckpointError(f"{path} is a safetensors file under a PyTorch name: rename it "
                              f"{path.with_suffix('.safetensors').name}.")
    if file_format not in ("zip", "pickle"):
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint ({file_format}, not a zip archive or a pickle stream); "
            "download it again."
        )
    try:
        # torch warns about pickle protocols before refusing or reading: our sentence says it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # mmap needs torch's zip format; older .pth files (one pickle stream) load whole, just as safely
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=file_format == "zip")
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path} contains Python objects besides tensors and was refused, since loading it could run code; "
            "use a .safetensors copy or a file from a trusted source."
        ) from None
    except Exception as error:  # a damaged file fails anywhere in torch's readers, with any exception type
        reason = re.split(r"(?<=[.:;])\s", str(error).strip())[0].rstrip(".:;")[:120] or type(error).__name__
        damage = "a cut-off or damaged zip archive" if file_format == "zip" else "a damaged pickle stream"
        raise CheckpointError(
            f"{path} is {damage}, not a readable PyTorch checkpoint ({reason}); download it again."
        ) from None
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]  # InternVid's ViClip-InternVid-10M-FLT.pth wraps its state dict so
    if not isinstance(state, Mapping) or not any(isinstance(t, torch.Tensor) for t in state.values()):
        raise CheckpointError(
            f"{path} holds no flat name -> tensor state dict; save the model's state_dict() instead."
        )
    return state


def shard_files(folder_or_index: Path) -> list[Path]:
    """The shard files of a sharded model, every one present, from its index (or all .safetensors without one)."""
    if folder_or_index.is_dir():
        indexes = sorted(folder_or_index.glob("*.safetensors.index.json"))
        if not indexes:
            return sorted(folder_or_index.glob("*.safetensors"))
        folder_or_index = indexes[0]
    try:
        weight_map = json.loads(read_bytes(folder_or_index, "shard index", CheckpointError))["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"{folder_or_index} is not a shard index with a weight_map ({error}); download it again."
        ) from None
    shard_names = set(weight_map.values()) if isinstance(weight_map, dict) else {None}
    outside = [
        name for name in shard_names if not isinstance(name, str) or Path(name).name != name or name in ("", ".", "..")
    ]
    if outside:
        raise CheckpointError(
            f"{folder_or_index} names the shard {outside[0]!r}, which is not a file beside it: "
            "download the index again."
        )
    files = [folder_or_index.parent / name for name in sorted(shard_names)]
    absent = [f.name for f in files if not f.is_file()]
    if absent:
        raise CheckpointError(
            f"{folder_or_index} lists shard(s) {', '.join(absent)} that are missing: "
            f"download them into {folder_or_index.parent}."
        )
    return files
