"""Fixtures shared by several test modules; pytest finds them here without imports. Shared helper functions
and constants live in helpers.py."""

import os
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

# The pack root is importable as in ComfyUI's custom_nodes (storymem_core, nodes). The tests folder is not a
# package: the pack root holds ComfyUI's __init__.py, and a package here would make pytest import the root
# under the checkout's folder name (often `ComfyUI-StoryMem`, not a Python name).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers import call  # noqa: E402 (needs the pack root on the path)

from nodes import host  # noqa: E402
from storymem_core import tiny_models as tiny  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def temp_folder_under_pytest(tmp_path_factory):
    """Every temporary file the tests or their subprocesses (ComfyUI servers, CLI runs) make lands in pytest's own
    folder, which pytest prunes: a process stopped before its cleanup leaves nothing in the system's temp folder."""
    folder = tmp_path_factory.mktemp("tmp")
    before = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = str(folder), str(folder)
    yield
    tempfile.tempdir = before[1]
    if before[0] is None:
        del os.environ["TMPDIR"]
    else:
        os.environ["TMPDIR"] = before[0]


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    """Tiny models in a ComfyUI-style folder, the standalone host pointed at it, every model loaded by its node."""
    root = tmp_path_factory.mktemp("storymem")
    tiny.write_tiny_models(root / "models")
    previous = host.use(host.StandaloneHost(root / "models", root / "output"))
    try:
        i2v = call("StoryMemLoadExperts", high_noise_model=tiny.I2V_HIGH, low_noise_model=tiny.I2V_LOW,
                   weight_dtype="auto", offload="auto")[0][0]
        m2v = call("StoryMemLoadLora", model=i2v, lora_high_noise=tiny.STORYMEM_LORA_HIGH,
                   lora_low_noise=tiny.STORYMEM_LORA_LOW, strength=1.0)[0][0]
        yield SimpleNamespace(
            root=root,
            i2v=i2v,
            m2v=m2v,
            t2v=call("StoryMemLoadExperts", high_noise_model=tiny.T2V_HIGH, low_noise_model=tiny.T2V_LOW,
                     weight_dtype="fp32", offload="none")[0][0],
            text=call("StoryMemLoadTextEncoder", text_encoder=tiny.TEXT_ENCODER, weight_dtype="auto")[0][0],
            vae=call("StoryMemLoadVAE", vae=tiny.VAE_FILE, weight_dtype="fp32")[0][0],
            keyframes=call("StoryMemLoadKeyframeEncoder", clip_model=tiny.CLIP_FILE, open_clip_name="unused",
                           aesthetic_head="none")[0][0],
        )
    finally:
        host.use(previous)
