"""StoryMem Conditioning in a real ComfyUI: what reaches ComfyUI's Wan model equals the engine's `y` (and the
reference's) for every golden m2v case: M2V, MI2V, MM2V and fixed memory, read from the golden folder."""

from __future__ import annotations

import json
import math

import pytest
import torch
from comfy_host import run_in_host
from golden_data import case_paths, cases, load_case
from helpers import given_frames, is_released_mi2v_bug, loop_vae, loop_weights
from safetensors.torch import load_file, save_file

from storymem_core.conditioning import build_conditioning

MASK_CHANNELS = 4


def pixel_size(max_area: int, image_hw: tuple[int, int]) -> tuple[int, int]:
    """(width, height), multiples of 16 with width * height = max_area, closest to the image's aspect."""
    candidates = [
        (max_area // h, h) for h in range(16, max_area // 16 + 1, 16) if max_area % h == 0 and (max_area // h) % 16 == 0
    ]
    if not candidates:
        pytest.fail(
            f"max_area {max_area} is no product of two multiples of 16: StoryMem Conditioning cannot express it."
        )
    aspect = image_hw[0] / image_hw[1]
    return min(candidates, key=lambda wh: abs(math.log(wh[1] / wh[0] / aspect)))


def mode_of(config: dict) -> str:
    return "mi2v" if config["first_frame"] else "mm2v" if config["motion_frames"] else "m2v"


@pytest.fixture(scope="module")
def captured(tmp_path_factory) -> dict:
    """Each golden m2v case sent through StoryMem Conditioning and KSampler inside ComfyUI (one host run)."""
    scratch = tmp_path_factory.mktemp("host_conditioning")
    jobs = scratch / "jobs"
    jobs.mkdir()
    for path in case_paths("m2v_"):
        config, tensors = load_case(path)
        given = given_frames(config, tensors)
        previous = given["first_frame"][None] if given["first_frame"] is not None else given["motion_frames"]
        width, height = pixel_size(config["max_area"], tuple(config["image_hw"]))
        vae_weights = {f"vae.{k}": v for k, v in loop_vae(loop_weights(config, tensors)).state_dict().items()}
        inputs = {**vae_weights, "memory_images": tensors["memory_images"]}
        if previous is not None:
            inputs["previous_frames"] = previous.contiguous()
        save_file(inputs, str(jobs / f"{path.stem}.safetensors"))
        job = {
            "length": config["frame_num"],
            "width": width,
            "height": height,
            "mode": mode_of(config),
            "fix_mem": -1 if config["fix_mem"] is None else config["fix_mem"],
        }
        (jobs / f"{path.stem}.json").write_text(json.dumps(job))
    run_in_host("capture_conditioning.py", jobs, scratch=scratch)
    return {p.name.removesuffix(".out.safetensors"): load_file(str(p)) for p in jobs.glob("*.out.safetensors")}


@pytest.mark.parametrize("path", cases("m2v_"))
def test_host_m2v_conditioning_reaching_comfyui_wan_equals_engine_y(path, captured):
    config, tensors = load_case(path)
    vae = loop_vae(loop_weights(config, tensors))
    engine = build_conditioning(
        vae,
        tensors["memory_images"],
        config["frame_num"],
        config["max_area"],
        fix_mem=config["fix_mem"],
        **given_frames(config, tensors),
    )
    result = captured[path.stem]
    rows = result["c_concat"]
    assert rows.shape[0] >= 2  # cond and uncond both conditioned, as the reference uses one y for both
    for row in rows:
        torch.testing.assert_close(row, engine.y, atol=1e-4, rtol=1e-4)
        if not is_released_mi2v_bug(config):  # that case's golden y shows the released bug, which we fix
            torch.testing.assert_close(row, tensors["y"], atol=1e-4, rtol=1e-4)
    assert result["latent"].shape[1:] == (16, *engine.y.shape[1:])  # the sampler's latent covers memory + shot
    given = {"m2v": 0, "mi2v": 1, "mm2v": 5}[mode_of(config)]
    assert result["counts"].tolist() == [engine.memory_count, given]


@pytest.mark.parametrize("path", cases("m2v_"))
def test_host_m2v_mask_reaches_the_model_as_the_reference_mask(path, captured):
    """ComfyUI's concat_mask convention is the inverse of the reference's: after the model inverts it, the
    memory and given frames are marked known (1; 2 past fix_mem) and generated frames 0, exactly."""
    config, tensors = load_case(path)
    mask = captured[path.stem]["c_concat"][0, :MASK_CHANNELS]
    assert torch.equal(mask, tensors["y"][:MASK_CHANNELS])
