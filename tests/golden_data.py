"""Discovery of golden cases: every case is a JSON file (+ tensors) in the golden folder.

The folder defaults to tests/golden and is overridden by STORYMEM_GOLDEN_DIR, so the same tests
run against another golden folder of the same format (other shapes, seeds, widths).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


def golden_dir() -> Path:
    return Path(os.environ.get("STORYMEM_GOLDEN_DIR", Path(__file__).parent / "golden"))


def case_paths(prefix: str) -> list[Path]:
    """All case JSON files whose name starts with `prefix` (e.g. 'dit_')."""
    return sorted(golden_dir().glob(f"{prefix}*.json"))


def cases(prefix: str):
    """pytest parameters over the case files of one family; a family with no files is skipped."""
    paths = case_paths(prefix)
    if not paths:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"no {prefix}* golden files in {golden_dir()}"))]
    return [pytest.param(p, id=p.stem) for p in paths]


def load_case(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The case's JSON config and its tensors (empty when it has no .safetensors)."""
    config = json.loads(path.read_text())
    tensors_path = path.with_suffix(".safetensors")
    tensors = load_file(str(tensors_path)) if tensors_path.exists() else {}
    return config, tensors


def with_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under `prefix` with the prefix removed (e.g. 'weight.' -> a state dict)."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
