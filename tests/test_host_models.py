"""ComfyUI's Wan model and its LoRA patching against ours and the reference, inside a real ComfyUI:
the same tiny weights give the same DiT output; sampled by ComfyUI with StoryMem Conditioning's CONDITIONING, it
gives the reference's output at the memory placement the case was made with (the authors' fixed code, `*_negrope`,
by default, with no other node); StoryMem LoRA (MODEL) patches the weights our engine's merge gives, from the
released .pth, a ComfyUI-layout file and a convert-lora file, stacked with LoraLoaderModelOnly."""

from __future__ import annotations

import json

import pytest
import torch
from comfy_host import run_in_host
from golden_data import case_paths, case_placement, cases, load_case, memory_cases, other_placement, with_prefix
from safetensors.torch import load_file, save_file

from storymem_core import tiny_models
from storymem_core.choices import DEFAULT_MEMORY_POSITIONS
from storymem_core.commands.cli import main as cli_main
from storymem_core.lora import apply_loras, load_lora
from storymem_core.wan.dit import DiTConfig, WanDiT
from storymem_core.weights.loading import load_dit

TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}  # golden README: DiT / LoRA forward


def core_dit_inputs(config: dict) -> dict:
    generator = torch.Generator().manual_seed(3)
    return {
        "x": torch.randn(16, 3, 8, 8, generator=generator),
        "y": torch.randn(20, 3, 8, 8, generator=generator),
        "t": torch.tensor([700.0]),
        "context": torch.randn(12, config["text_dim"], generator=generator),
    }


@pytest.fixture(scope="module")
def host_results(tmp_path_factory) -> dict:
    scratch = tmp_path_factory.mktemp("host_models")
    jobs = scratch / "jobs"
    loras = jobs / "models" / "loras"
    loras.mkdir(parents=True)
    state, config = tiny_models._dit(36, 1, tiny_models.CORE_DIT)
    tiny_models._save(state, jobs / "core_dit.safetensors", config)
    save_file(core_dit_inputs(config), str(jobs / "core_dit_inputs.safetensors"))
    for path in case_paths("dit_"):
        case, tensors = load_case(path)
        save_file(tensors, str(jobs / f"{path.stem}.safetensors"))
        placement, _ = case_placement(case)
        job = {"config": case["config"], "memory_size": case.get("memory_size", 0),
               "placement": placement, "other_placement": other_placement(placement)}
        (jobs / f"{path.stem}.json").write_text(json.dumps(job))
    for path in case_paths("lora_"):
        case, tensors = load_case(path)
        torch.save(with_prefix(tensors, "peft."), loras / f"{path.stem}.pth")
        save_file(with_prefix(tensors, "comfy."), str(loras / f"{path.stem}_comfy.safetensors"))
        converted = loras / f"{path.stem}_converted.safetensors"
        assert (
            cli_main(
                ["convert-lora", str(loras / f"{path.stem}.pth"), str(converted), "--alpha", str(case["lora_alpha"])]
            )
            == 0
        )
        save_file(
            {k: v for k, v in tensors.items() if not k.startswith(("peft.", "comfy."))},
            str(jobs / f"{path.stem}.safetensors"),
        )
        (jobs / f"{path.stem}.json").write_text(
            json.dumps(
                {
                    "config": case["config"],
                    "pth": f"{path.stem}.pth",
                    "alpha": case["lora_alpha"],
                    "comfy": f"{path.stem}_comfy.safetensors",
                    "converted": f"{path.stem}_converted.safetensors",
                }
            )
        )
    run_in_host("wan_models.py", jobs, scratch=scratch)
    return {"jobs": jobs, **load_file(str(jobs / "results.safetensors"))}


def test_host_dit_comfyui_wan_and_our_dit_agree_on_a_core_loaded_file(host_results):
    """The same tiny file through ComfyUI's UNETLoader path (heads = dim // 128) and our loader."""
    jobs = host_results["jobs"]
    inputs = load_file(str(jobs / "core_dit_inputs.safetensors"))
    ours = load_dit(jobs / "core_dit.safetensors", torch.float32).eval()
    with torch.no_grad():
        out = ours(inputs["x"][None], inputs["t"], inputs["context"][None], inputs["y"][None])[0]
    assert out.abs().mean() > 1e-3  # a real output, not zeros on both sides
    torch.testing.assert_close(host_results["core_dit.out"], out, **TOLERANCE)


@pytest.mark.parametrize("path", cases("dit_"))
def test_host_dit_comfyui_wan_sampled_with_storymem_conditioning_matches_reference(path, host_results):
    """ComfyUI's WanModel at the golden size and weights, called by ComfyUI's sampler with StoryMem Conditioning's
    CONDITIONING, reproduces the reference DiT output: memory at the authors' positions for their fixed code's cases
    (the conditioning's default placement: no node but the conditioning), the plain numbering for the others."""
    config, tensors = load_case(path)
    assert case_placement(config)[0] == DEFAULT_MEMORY_POSITIONS or "memory_size" not in config
    torch.testing.assert_close(host_results[f"{path.stem}.sampled"], tensors["out"], **TOLERANCE)
    assert int(host_results[f"{path.stem}.sampled.calls"]) >= 1  # a wrapper on the MODEL still runs
    assert bool(host_results[f"{path.stem}.rope_encode_restored"])  # the model is ComfyUI's own after sampling
    assert bool(host_results[f"{path.stem}.others_rope_patch_kept"])  # and another pack's patch of it stays


@pytest.mark.parametrize("path", memory_cases("dit_"))
def test_host_dit_other_memory_placement_misses_reference(path, host_results):
    """The conditioning's placement acts on ComfyUI's model: the other one gives another output."""
    _, tensors = load_case(path)
    assert (host_results[f"{path.stem}.other"] - tensors["out"]).abs().max() > 1e-3


def merged(case: dict, tensors: dict, loras: list) -> dict[str, torch.Tensor]:
    model = WanDiT(DiTConfig.from_dict(case["config"]))
    model.load_state_dict(with_prefix(tensors, "weight."))
    apply_loras(model, loras, mode="merge")
    return model.state_dict()


def assert_weights(host_results: dict, prefix: str, expected: dict) -> None:
    for name, value in expected.items():
        torch.testing.assert_close(
            host_results[f"{prefix}.{name}"], value, atol=1e-6, rtol=1e-5, msg=f"{prefix}.{name}"
        )


@pytest.mark.parametrize("path", cases("lora_"))
def test_host_lora_node_patches_the_weights_of_our_merge(path, host_results):
    case, tensors = load_case(path)
    storymem = load_lora(with_prefix(tensors, "peft."), alpha=case["lora_alpha"])
    expected = merged(case, tensors, [storymem])
    for variant in (
        "pth",
        "comfy",
        "converted",
    ):  # released .pth, ComfyUI layout, convert-lora file via LoraLoaderModelOnly
        assert_weights(host_results, f"{path.stem}.{variant}", expected)
    assert not torch.equal(
        expected["blocks.0.self_attn.q.weight"], with_prefix(tensors, "weight.")["blocks.0.self_attn.q.weight"]
    )
    assert bool(host_results[f"{path.stem}.base_unchanged"])  # the MODEL given to the node is not changed


@pytest.mark.parametrize("path", cases("lora_"))
def test_host_lora_node_stacks_with_loraloadermodelonly(path, host_results):
    case, tensors = load_case(path)
    storymem = load_lora(with_prefix(tensors, "peft."), alpha=case["lora_alpha"])
    expected = merged(case, tensors, [storymem, load_lora(with_prefix(tensors, "comfy."), 0.5)])
    assert_weights(host_results, f"{path.stem}.stacked", expected)


@pytest.mark.parametrize("path", cases("lora_"))
def test_host_lora_node_output_matches_reference(path, host_results):
    """The rsLoRA scale is right: ComfyUI's patched model gives the reference's LoRA-on output, not out_base."""
    _, tensors = load_case(path)
    torch.testing.assert_close(host_results[f"{path.stem}.pth_out"], tensors["out"], **TOLERANCE)
    assert not torch.allclose(tensors["out"], tensors["out_base"], **TOLERANCE)
