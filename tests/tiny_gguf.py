"""Tiny GGUF experts for the host and browser tests: a tiny Wan DiT safetensors file rewritten as an F16 GGUF, the
way ComfyUI-GGUF's tools/convert.py writes one, with the 5-D `patch_embedding.weight` stored whole in F32 as its
tools/fix_5d_tensors.py puts it back (GGUF's own tensors have at most 4 dimensions)."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file

from storymem_core import tiny_models
from storymem_core.downloads import GGUF, KNOWN_FILES

GGUF_EXPERTS = {file.name: file for file in KNOWN_FILES if file.kind == GGUF}
GGUF_HIGH, GGUF_LOW = (name for name in GGUF_EXPERTS)  # the names the GGUF workflow loads: high, then low expert


def write_gguf(source: Path, destination: Path) -> Path:
    """`source` (a Wan DiT .safetensors) as a GGUF file ComfyUI-GGUF's Unet Loader reads."""
    import gguf  # installed with ComfyUI-GGUF (STORYMEM_WITH_GGUF=1 ../shared/comfyui/install.sh)
    import numpy as np

    writer = gguf.GGUFWriter(path=None, arch="wan")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for name, tensor in load_file(source).items():
        whole = tensor.ndim <= 1 or tensor.ndim > 4  # biases and norms stay F32, as convert.py keeps them
        data = tensor.float().numpy().astype(np.float32 if whole else np.float16)
        writer.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType.F32 if whole else
                          gguf.GGMLQuantizationType.F16)
    destination.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file(path=destination)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return destination


def write_gguf_experts(models_dir: Path) -> None:
    """The I2V experts of `models_dir`/diffusion_models also as GGUF files under the GGUF workflow's names."""
    folder = models_dir / "diffusion_models"
    write_gguf(folder / tiny_models.I2V_HIGH, folder / GGUF_HIGH)
    write_gguf(folder / tiny_models.I2V_LOW, folder / GGUF_LOW)
