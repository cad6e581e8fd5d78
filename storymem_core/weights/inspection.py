"""The `inspect` command: what each model file is, what is wrong with it, and whether it would load, read from
headers (and for DiT, umT5, VAE and image-encoder files, checked against the model their own sizes describe).
See docs/architecture.md.
"""

from __future__ import annotations

from pathlib import Path

from ..choices import WeightDtype
from ..errors import CheckpointError
from .checkpoint import Checkpoint, CheckpointInfo, detect
from .kinds import KINDS
from .loading import described_model, is_test_model
from .shapes import fit_faults, model_shapes

PUBLISHED_14B_AT_LEAST = 10**9  # a Wan2.2 A14B expert holds 14.3 B parameters; even a pruned one has billions


def _count(n: int) -> str:
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


def describe(info: CheckpointInfo, indent: str = "") -> str:
    """Human-readable lines about one checkpoint, as `inspect` prints them."""
    layout = info.layout + (f" (keys under '{info.prefix}')" if info.prefix else "")
    sizes = ", ".join(f"{k} {v}" for k, v in info.architecture.items())
    kind = f"{info.kind}: {KINDS[info.kind].name}" + (f"; {sizes}" if sizes else "")
    lines = [f"{indent}{info.path}", f"{indent}  layout      {layout}", f"{indent}  kind        {kind}"]
    if (folder := KINDS[info.kind].folder) and info.layout != "wan-folder":
        lines.append(f"{indent}  goes in     ComfyUI/models/{folder}/")
    if info.dtypes:
        by_count = sorted(info.dtypes.items(), key=lambda item: -item[1])
        dtypes = ", ".join(f"{name} x{count}" for name, count in by_count)
        lines.append(f"{indent}  dtype       {dtypes}" + (f" (fp8: {info.fp8})" if info.fp8 else ""))
    if info.parameter_count:
        lines.append(f"{indent}  parameters  {_count(info.parameter_count)}")
    if info.lora is not None:
        lora = info.lora
        default = "StoryMem's alpha = rank with rsLoRA" if lora.format == "peft" else "scale 1"
        alpha = ", ".join(f"{a:g}" for a in lora.alphas) if lora.alphas else f"not stored ({default})"
        ranks = ", ".join(map(str, lora.ranks))
        lines.append(f"{indent}  lora        {lora.format}, rank {ranks}, alpha {alpha}, {lora.modules} modules")
        lines.append(f"{indent}  targets     {', '.join(lora.targets)}")
    lines += [f"{indent}  note        {note}" for note in info.notes]
    lines += [f"{indent}  problem     {problem}" for problem in info.problems]
    for part, part_info in info.parts.items():
        lines.append(f"{indent}  [{part}]")
        lines.append(describe(part_info, indent + "    "))
    lines.append(f"{indent}  -> {'usable' if info.usable else 'NOT usable'}")
    return "\n".join(lines)


def fit_problems(info: CheckpointInfo) -> list[str]:
    """What in a DiT, umT5, VAE or image-encoder file does not fit the model its own sizes describe (sizes no model
    can have; missing, unexpected, wrong-shape tensors), so `inspect` finds what loading would refuse; empty for kinds
    the table of kinds builds no model for."""
    if info.problems or info.layout == "wan-folder" or KINDS[info.kind].builder is None:
        return []
    shapes = Checkpoint(info.path).shapes()
    try:
        model = described_model(info.kind, info.path, shapes)
    except CheckpointError as error:
        return [str(error)]
    if model is None:
        return []
    faults = fit_faults(model_shapes(model), shapes)
    if not faults:
        return []
    return [f"Its tensors do not fit the model its sizes describe: {'; '.join(faults)}; download it again."]


def inspect_file(path: str) -> CheckpointInfo:
    """What the file at `path` is, with every problem found in its headers and in how its tensors fit its model."""
    info = detect(path)
    for part, part_info in info.parts.items():
        found = fit_problems(part_info)
        part_info.problems += found
        info.problems += [f"{part}: {problem}" for problem in found]
    info.problems += fit_problems(info)
    info.notes += name_notes(info)
    return info


def name_notes(info: CheckpointInfo) -> list[str]:
    """Where a file's contents contradict its name or its origin (it still loads): a "14B" file of a few parameters, an
    "fp8" file without fp8 tensors, the pack's own tiny test models."""
    if info.problems:  # a file that cannot be read as a model is not opened again
        return []
    name, notes = Path(info.path).name.lower(), []
    if info.layout != "wan-folder" and is_test_model(info.path):
        notes.append("a tiny random test model written by this pack (it stores its config): it loads, but makes noise.")
    if "14b" in name and 0 < info.parameter_count < PUBLISHED_14B_AT_LEAST:
        notes.append(f"the name says 14B but it holds {_count(info.parameter_count)} parameters: not the published "
                     "expert (a test model, or a cut-off download: download it again).")
    if WeightDtype.FP8 in name and info.dtypes and info.fp8 is None:
        notes.append("the name says fp8 but none of its tensors is fp8: it was converted or renamed.")
    return notes

