"""Model sizes read from a file (a stored config, or sizes taken from tensor shapes), checked before anything is built.

A damaged or doctored file may describe a model no one has: a million layers (a build that never ends), a zero
or negative width, a width no head count divides. Each size must be a whole number between 1 and a bound well
above every released model (Wan2.2 A14B: width 5120, 40 layers; umT5-xxl: vocabulary 256,384, 24 layers;
OpenCLIP ViT-bigG: width 1664, 48 layers), so such a file gets one sentence instead of a hang or a crash.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from .choices import ExpertKind
from .errors import CheckpointError

WIDTH = 65_536
LAYERS = 256
HEADS = 1024
CHANNELS = 1024
VOCAB = 1 << 20

Rule = Callable[[Any], str | None]  # a value -> what is wrong with it, or None


def _whole(low: int, high: int) -> Rule:
    def rule(value: Any) -> str | None:
        if not isinstance(value, int) or isinstance(value, bool):
            return "not a whole number"
        return None if low <= value <= high else f"outside {low} to {high:,}"
    return rule


def _number(low: float, high: float) -> Rule:
    def rule(value: Any) -> str | None:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return "not a finite number"
        return None if low <= value <= high else f"outside {low:g} to {high:g}"
    return rule


def _flag(value: Any) -> str | None:
    return None if isinstance(value, bool) else "not true or false"


def _choice(*choices: str) -> Rule:
    return lambda value: None if value in choices else f"not one of {', '.join(choices)}"


def _items(rule: Rule, low: int, high: int) -> Rule:
    def check(value: Any) -> str | None:
        if not isinstance(value, (list, tuple)) or not low <= len(value) <= high:
            return f"not a list of {low} to {high} entries"
        return next((f"an entry {problem}" for problem in map(rule, value) if problem), None)
    return check


def _one_of(*rules: Rule) -> Rule:
    return lambda value: None if any(rule(value) is None for rule in rules) else rules[0](value)


SCHEMAS: dict[str, dict[str, Rule]] = {
    "dit": {
        "model_type": _choice(*ExpertKind.names()), "patch_size": _items(_whole(1, 64), 3, 3),
        "text_len": _whole(1, 4096),
        "in_dim": _whole(1, CHANNELS), "dim": _whole(1, WIDTH), "ffn_dim": _whole(1, WIDTH),
        "freq_dim": _whole(2, WIDTH),
        "text_dim": _whole(1, WIDTH), "out_dim": _whole(1, CHANNELS), "num_heads": _whole(1, HEADS),
        "num_layers": _whole(1, LAYERS), "window_size": _items(_whole(-1, 1 << 20), 2, 2), "qk_norm": _flag,
        "cross_attn_norm": _flag, "eps": _number(0, 1),
    },
    "umt5": {
        "vocab": _whole(1, VOCAB), "dim": _whole(1, WIDTH), "dim_attn": _whole(1, WIDTH), "dim_ffn": _whole(1, WIDTH),
        "num_heads": _whole(1, HEADS), "num_layers": _whole(1, LAYERS), "num_buckets": _whole(2, 1024),
        "shared_pos": _flag, "dropout": _number(0, 1),
    },
    "wan21-vae": {
        "dim": _whole(1, CHANNELS), "z_dim": _whole(1, CHANNELS), "dim_mult": _items(_whole(1, 64), 1, 8),
        "num_res_blocks": _whole(1, 16), "attn_scales": _items(_number(0, 64), 0, 8),
        "temperal_downsample": _items(_flag, 0, 8), "dropout": _number(0, 1),
    },
    "clip-vision": {"embed_dim": _whole(1, WIDTH), "quick_gelu": _flag},
    "clip-vision tower": {
        "image_size": _one_of(_whole(1, 4096), _items(_whole(1, 4096), 2, 2)), "layers": _whole(1, LAYERS),
        "width": _whole(1, WIDTH), "patch_size": _whole(1, 4096), "head_width": _whole(1, WIDTH),
        "mlp_ratio": _number(0.01, 64),
    },
    "viclip": {name: _whole(1, VOCAB if name == "vocab_size" else WIDTH) for name in (
        "vision_width", "vision_layers", "vision_heads", "patch_size", "image_size", "num_frames", "embed_dim",
        "text_width", "text_layers", "text_heads", "context_length", "vocab_size")},
}
REQUIRED = {
    "umt5": ("vocab", "dim", "dim_attn", "dim_ffn", "num_heads", "num_layers", "num_buckets"),
    "clip-vision": ("embed_dim",),
    "clip-vision tower": ("layers", "width"),
}


def _refused(source: str, problem: str) -> CheckpointError:
    return CheckpointError(f"{source} describes a model that cannot be built: {problem}; the file is damaged or was "
                           "altered, so download it again.")


def _check_fields(values: Any, kind: str, source: str, where: str = "") -> None:
    if not isinstance(values, Mapping):
        raise _refused(source, f"its {where or 'config'} is {type(values).__name__}, not a JSON object")
    if missing := [name for name in REQUIRED.get(kind, ()) if name not in values]:
        raise _refused(source, f"{where}{missing[0]} is missing")
    for name, rule in SCHEMAS[kind].items():
        if name in values and (problem := rule(values[name])):
            raise _refused(source, f"{where}{name} = {str(values[name])[:40]} is {problem}")


def _divides(values: Mapping, width: str, heads: str, source: str, where: str = "") -> None:
    if width in values and heads in values and values[width] % values[heads]:
        problem = f"{where}{width} {values[width]} is not a whole number of {where}{heads} ({values[heads]})"
        raise _refused(source, problem)


def checked_sizes(values: Any, kind: str, source: str) -> Any:
    """`values` (a config of the model `kind` reads: "dit", "umt5", "wan21-vae", "clip-vision", "viclip") once every
    size in it is one a model can have; refused with a CheckpointError naming `source` otherwise. Unknown keys pass."""
    _check_fields(values, kind, source)
    if kind == "dit":
        _divides(values, "dim", "num_heads", source)
    elif kind == "umt5":
        _divides(values, "dim_attn", "num_heads", source)
    elif kind == "wan21-vae" and "dim_mult" in values and "temperal_downsample" in values:
        if len(values["temperal_downsample"]) != len(values["dim_mult"]) - 1:
            raise _refused(source, "temperal_downsample needs one entry fewer than dim_mult")
    elif kind == "viclip":
        _divides(values, "vision_width", "vision_heads", source)
        _divides(values, "text_width", "text_heads", source)
    elif kind == "clip-vision":
        if "vision_cfg" not in values:
            raise _refused(source, "vision_cfg is missing")
        tower = values["vision_cfg"]
        _check_fields(tower, "clip-vision tower", source, "vision_cfg.")
        _divides(tower, "width", "head_width", source, "vision_cfg.")
    return values
