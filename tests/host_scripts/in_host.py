"""Start ComfyUI in this process as its main.py does (CPU), and load the pack the way ComfyUI loads custom nodes.

Run only as a subprocess of the host tests (tests/comfy_host.py): ComfyUI's top-level `nodes` module and the
pack's `nodes` package must never meet in one sys.path, so ComfyUI goes first here and the tests' process
never imports it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

COMFYUI = Path(os.environ["STORYMEM_COMFYUI"]).resolve()
PACK = Path(os.environ["STORYMEM_PACK"])  # the pack folder, named as ComfyUI users have it (ComfyUI-StoryMem)
MODEL_FOLDERS = ("diffusion_models", "text_encoders", "vae", "loras", "clip_vision")


def start(models_dir: Path | None = None, output_dir: Path | None = None, input_dir: Path | None = None,
          core_nodes: bool = False) -> dict[str, type]:
    """ComfyUI's node classes (with the pack's), its folders pointed at the test's models, input and output."""
    script_args, sys.argv = sys.argv, [str(COMFYUI / "main.py"), "--cpu"]
    sys.path.insert(0, str(COMFYUI))
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.cli_args  # noqa: F401  (parses --cpu)

    sys.argv = script_args
    import folder_paths

    for folder in MODEL_FOLDERS if models_dir else ():
        folder_paths.add_model_folder_path(folder, str(models_dir / folder), is_default=True)
    if output_dir:
        folder_paths.set_output_directory(str(output_dir))
        folder_paths.set_temp_directory(str(output_dir / "temp"))
    if input_dir:
        folder_paths.set_input_directory(str(input_dir))
    import nodes

    if core_nodes:
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    if not asyncio.run(nodes.load_custom_node(str(PACK))):
        raise SystemExit(f"ComfyUI could not load the pack from {PACK}")
    return nodes.NODE_CLASS_MAPPINGS
