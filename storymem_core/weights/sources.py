"""What a path is and how to read it: a model file, a shard folder or index, or a Wan-AI download folder
(its DiT expert folders, umT5 .pth, VAE .pth and tokenizer). See docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError
from ..safe_files import check_file
from ..wan.tokenizer import SPIECE_FILE, WAN_TOKENIZER_DIR
from .kinds import UMT5, WAN21_VAE
from .readers import (
    PTH_SUFFIXES,
    SAFETENSORS_SUFFIXES,
    SafetensorsFiles,
    TensorDict,
    TensorReader,
    read_pth,
    shard_files,
)

DIT_SHARD_PREFIX = "diffusion_pytorch_model"
EXPERT_FOLDERS = {"high_noise": "high_noise_model", "low_noise": "low_noise_model"}
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
VAE_FILE = "Wan2.1_VAE.pth"


@dataclass
class WanFolder:
    """The pieces of a Wan-AI download folder; `missing` names what is not there."""

    root: Path
    experts: dict[str, Path]  # "high_noise" / "low_noise" (A14B) or "dit" (one model) -> folder of DiT shards
    text_encoder: Path | None
    vae: Path | None
    tokenizer: Path | None

    @property
    def missing(self) -> list[str]:
        missing = []
        if not self.experts:
            missing.append(f"the DiT ({'/ and '.join(EXPERT_FOLDERS.values())}/ with {DIT_SHARD_PREFIX}*.safetensors)")
        elif "dit" not in self.experts:
            missing += [f"{folder}/" for name, folder in EXPERT_FOLDERS.items() if name not in self.experts]
        if self.text_encoder is None:
            missing.append(f"{T5_FILE} (the umT5 text encoder)")
        if self.vae is None:
            missing.append(VAE_FILE)
        if self.tokenizer is None:
            missing.append(f"{WAN_TOKENIZER_DIR / SPIECE_FILE} (the tokenizer)")
        return missing


def is_shard_folder(folder: Path) -> bool:
    return any(folder.glob("*.safetensors.index.json")) or any(folder.glob("*.safetensors"))


def is_wan_folder(folder: Path) -> bool:
    markers = [folder / name for name in EXPERT_FOLDERS.values()] + [folder / T5_FILE, folder / VAE_FILE]
    return any(path.exists() for path in markers)


def find_wan_parts(root: str | Path) -> WanFolder:
    """Locate DiT shards (high/low-noise subfolders or top level), umT5 .pth, VAE .pth and tokenizer."""
    root = Path(root)
    experts = {name: root / folder for name, folder in EXPERT_FOLDERS.items() if (root / folder).is_dir()}
    experts = {name: folder for name, folder in experts.items() if is_shard_folder(folder)}
    if not experts and any(root.glob(f"{DIT_SHARD_PREFIX}*.safetensors")):
        experts["dit"] = root
    tokenizer = root / WAN_TOKENIZER_DIR / SPIECE_FILE
    return WanFolder(
        root=root,
        experts=experts,
        text_encoder=root / T5_FILE if (root / T5_FILE).is_file() else None,
        vae=root / VAE_FILE if (root / VAE_FILE).is_file() else None,
        tokenizer=tokenizer if tokenizer.is_file() else None,
    )


def open_source(path: Path, kind: str | None) -> tuple[str, Path, TensorReader]:
    """(layout, the path actually opened, reader); a Wan-AI folder is narrowed to the part `kind` asks for."""
    check_file(path, "model file", CheckpointError)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: check the path and that the download finished.")
    if path.is_dir():
        if is_wan_folder(path):
            return open_source(_wan_part(path, kind), kind)
        if not is_shard_folder(path):
            raise CheckpointError(
                f"{path} holds no .safetensors shards or index: give a model file or a Wan-AI model folder."
            )
        return "sharded-safetensors", path, SafetensorsFiles(shard_files(path))
    name = path.name.lower()
    if name.endswith(".safetensors.index.json"):
        return "sharded-safetensors", path, SafetensorsFiles(shard_files(path))
    if name.endswith(SAFETENSORS_SUFFIXES):
        return "safetensors", path, SafetensorsFiles([path])
    if name.endswith(PTH_SUFFIXES):
        return "pth", path, TensorDict(read_pth(path))
    raise CheckpointError(
        f"{path} is neither .safetensors nor .pth: give a model file, a shard index or a model folder."
    )


def _wan_part(root: Path, kind: str | None) -> Path:
    parts = find_wan_parts(root)
    wanted = {UMT5: parts.text_encoder, WAN21_VAE: parts.vae}
    if kind in wanted:
        if wanted[kind] is None:
            file = T5_FILE if kind == UMT5 else VAE_FILE
            raise CheckpointError(f"{root} has no {file}: download it into that folder.")
        return wanted[kind]
    if len(parts.experts) == 1:
        return next(iter(parts.experts.values()))
    if not parts.experts:
        raise CheckpointError(f"{root} has no DiT shards: download {', '.join(EXPERT_FOLDERS.values())} into it.")
    high, low = (root / EXPERT_FOLDERS[name] for name in ("high_noise", "low_noise"))
    raise CheckpointError(f"{root} holds two DiT experts: give {high} or {low}.")
