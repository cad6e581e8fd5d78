"""Discovery of golden cases: every case is a JSON file (+ tensors) in the golden folder.

The folder defaults to tests/golden and is overridden by STORYMEM_GOLDEN_DIR, so the same tests
run against another golden folder of the same format (other shapes, seeds, widths).
"""

from __future__ import annotations

import json
import os
import re
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
    return _params(case_paths(prefix), f"{prefix}*")


def memory_cases(prefix: str):
    """`cases(prefix)` limited to those whose JSON gives `memory_size` (the cases of the authors' fixed code)."""
    return _params([p for p in case_paths(prefix) if "memory_size" in json.loads(p.read_text())],
                   f"{prefix}* with memory_size")


def _params(paths: list[Path], what: str):
    if not paths:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"no {what} golden files in {golden_dir()}"))]
    return [pytest.param(p, id=p.stem) for p in paths]


def load_case(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The case's JSON config and its tensors (empty when it has no .safetensors)."""
    config = json.loads(path.read_text())
    tensors_path = path.with_suffix(".safetensors")
    tensors = load_file(str(tensors_path)) if tensors_path.exists() else {}
    return config, tensors


def case_placement(config: dict) -> tuple[str, int]:
    """(placement, spacing) a case was made with: its `memory_rope` note ("negative, shift 5 (upstream fix)") names
    the authors' fixed code; cases without one come from the first release, which numbers memory and shot 0..n-1."""
    note = config.get("memory_rope", "")
    if not note.startswith("negative"):
        return "first-release", 0
    shift = re.search(r"shift (\d+)", note)
    return "upstream", int(shift.group(1)) if shift else 5


def other_placement(placement: str) -> str:
    """The placement a case was not made with, to show that the placement matters."""
    return "first-release" if placement == "upstream" else "upstream"


def with_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under `prefix` with the prefix removed (e.g. 'weight.' -> a state dict)."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _shapes_match(config: dict, weights: dict[str, torch.Tensor]) -> bool:
    patch = weights["patch_embedding.weight"]
    layers = len({k.split(".")[1] for k in weights if k.startswith("blocks.")})
    return (
        patch.shape[0] == config["dim"]
        and patch.shape[1] == config["in_dim"]
        and layers == config["num_layers"]
        and weights["text_embedding.0.weight"].shape[1] == config["text_dim"]
    )


def dit_config_for(weights: dict[str, torch.Tensor]) -> dict:
    """The DiT config (with model_type) of a `dit_*` case whose sizes fit these expert weights.

    Loop cases store expert weights without a config ("dit config as dit_i2v"), and head count
    and text length cannot be read from shapes, so the config comes from the matching DiT case.
    """
    for path in case_paths("dit_"):
        case = json.loads(path.read_text())
        if _shapes_match(case["config"], weights):
            return {**case["config"], "model_type": case["model_type"]}
    raise LookupError(f"no dit_* case in {golden_dir()} matches these expert weights")


def vae_case() -> tuple[dict, dict[str, torch.Tensor]]:
    """Config and weights of the first `vae_*` case (loop cases say 'vae as vae_tiny')."""
    paths = case_paths("vae_")
    if not paths:
        raise LookupError(f"no vae_* case in {golden_dir()}")
    return load_case(paths[0])


def manifests() -> dict:
    """manifests.json of the golden folder (real-size names and shapes); skips the test when absent."""
    path = golden_dir() / "manifests.json"
    if not path.exists():
        pytest.skip(f"no manifests.json in {golden_dir()}")
    return json.loads(path.read_text())


def seeded_state(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Deterministic weights for the `viclip_*` / `aesthetic_*` cases, drawn in sorted-name order (their maker,
    tests/golden_tools/make_viclip_golden.py, stores no weights): layer-norm scales about 1, other vectors about 0.1,
    matrices scaled by their last size."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name in sorted(shapes):
        shape = tuple(shapes[name])
        values = torch.randn(shape, generator=generator)
        module = name.rsplit(".", 2)[-2] if "." in name else ""
        if len(shape) == 1 and module.startswith("ln") and name.endswith(".weight"):
            state[name] = 1 + 0.1 * values
        elif len(shape) <= 1:
            state[name] = 0.1 * values
        else:
            state[name] = values / shape[-1] ** 0.5
    return state
