"""LoRA: golden parity (peft and ComfyUI layouts, merge and hook), parity with peft itself, undo, stacking, reports."""

import copy

import peft
import pytest
import torch
from golden_data import cases, load_case, with_prefix
from safetensors.torch import save_file
from torch import nn

from storymem_core import tiny_models as tiny
from storymem_core.errors import CheckpointError
from storymem_core.lora import apply_loras, load_lora
from storymem_core.wan.dit import DiTConfig, WanDiT
from storymem_core.wan.fp8 import Fp8Linear, quantize_dit_to_fp8
from storymem_core.weights.renaming import lora_name, module_aliases


def base_model(config: dict, tensors: dict) -> WanDiT:
    model = WanDiT(DiTConfig.from_dict(config["config"])).eval()
    model.load_state_dict(with_prefix(tensors, "weight."))
    return model


def run(model: nn.Module, tensors: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(tensors["x"][None], tensors["t"].reshape(1), tensors["context"][None], tensors["y"][None])[0]


def golden_lora(config: dict, tensors: dict, layout: str, strength: float = 1.0):
    """peft files store no alpha, so the case's alpha is passed as StoryMem's config would; ComfyUI files carry it."""
    alpha = config["lora_alpha"] if layout == "peft" else None
    return load_lora(with_prefix(tensors, f"{layout}."), strength=strength, alpha=alpha)


@pytest.mark.parametrize("mode", ["merge", "hook"])
@pytest.mark.parametrize("layout", ["peft", "comfy"])
@pytest.mark.parametrize("path", cases("lora_"))
def test_lora_matches_reference(path, layout, mode):
    config, tensors = load_case(path)
    model = base_model(config, tensors)
    lora = golden_lora(config, tensors, layout)
    assert {part.scale for part in lora.modules.values()} == pytest.approx([config["effective_scale"]])
    applied = apply_loras(model, [lora], mode=mode)
    torch.testing.assert_close(run(model, tensors), tensors["out"], atol=1e-4, rtol=1e-4)
    applied.remove()
    torch.testing.assert_close(run(model, tensors), tensors["out_base"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("path", cases("lora_"))
def test_lora_storymem_pth_and_kohya_names_load_like_the_state_dict(tmp_path, path):
    config, tensors = load_case(path)
    peft_file = tmp_path / "backbone_high_noise.pth"
    torch.save(with_prefix(tensors, "peft."), peft_file)
    kohya = {}
    for name, tensor in with_prefix(tensors, "comfy.diffusion_model.").items():
        module, _, part = name.partition(".lora_")
        module, part = (name[: -len(".alpha")], "alpha") if name.endswith(".alpha") else (module, "lora_" + part)
        part = part.replace("lora_A", "lora_down").replace("lora_B", "lora_up")
        kohya[f"lora_unet_{module.replace('.', '_')}.{part}"] = tensor
    expected = golden_lora(config, tensors, "peft").modules
    for lora in (load_lora(peft_file, alpha=config["lora_alpha"]), load_lora(kohya)):
        assert lora.modules.keys() == expected.keys()
        for name, (down, up, scale) in lora.modules.items():
            assert torch.equal(down, expected[name].down) and torch.equal(up, expected[name].up)
            assert scale == pytest.approx(expected[name].scale)


@pytest.mark.parametrize("use_rslora", [True, False])
@pytest.mark.parametrize("path", cases("lora_"))
def test_lora_equals_peft_on_a_random_adapter(path, use_rslora):
    """peft itself is the reference: a random (non-zero B) adapter of another rank and alpha, peft state dict in."""
    config, tensors = load_case(path)
    torch.manual_seed(1)
    target = copy.deepcopy(base_model(config, tensors))
    peft_config = peft.LoraConfig(
        r=3, lora_alpha=5, target_modules=config["target_modules"], use_rslora=use_rslora, init_lora_weights=False
    )
    peft_model = peft.get_peft_model(target, peft_config).eval()
    expected = run(peft_model, tensors)
    state = peft.get_peft_model_state_dict(peft_model)
    for mode in ("merge", "hook"):
        model = base_model(config, tensors)
        apply_loras(model, [load_lora(state, alpha=5, rslora=use_rslora)], mode=mode)
        torch.testing.assert_close(run(model, tensors), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("path", cases("lora_"))
def test_lora_unmerge_restores_weights_exactly(path):
    config, tensors = load_case(path)
    model = base_model(config, tensors)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    applied = apply_loras(model, [golden_lora(config, tensors, "comfy")], mode="merge")
    assert not torch.equal(model.blocks[0].ffn[2].weight, before["blocks.0.ffn.2.weight"])
    applied.remove()
    torch.testing.assert_close(model.state_dict(), before, atol=1e-6, rtol=0)
    hooked = apply_loras(model, [golden_lora(config, tensors, "comfy")], mode="hook")
    hooked.remove()
    assert model.state_dict().keys() == before.keys() and not model.blocks[0].ffn[2]._forward_hooks


@pytest.mark.parametrize("path", cases("lora_"))
def test_lora_stacking_adds_up(path):
    config, tensors = load_case(path)
    first = golden_lora(config, tensors, "peft", strength=0.5)
    second = golden_lora(config, tensors, "comfy", strength=-1.5)
    deltas = []
    for lora in (first, second):
        model = base_model(config, tensors)
        base = model.blocks[1].cross_attn.v.weight.clone()
        apply_loras(model, [lora])
        deltas.append(model.blocks[1].cross_attn.v.weight - base)
    stacked = base_model(config, tensors)
    base = stacked.blocks[1].cross_attn.v.weight.clone()
    apply_loras(stacked, [first, second], mode="merge")
    torch.testing.assert_close(stacked.blocks[1].cross_attn.v.weight, base + deltas[0] + deltas[1], atol=1e-6, rtol=0)

    hooked = base_model(config, tensors)
    apply_loras(hooked, [first], mode="hook")
    apply_loras(hooked, [second], mode="hook")  # a second call stacks on the same layers
    torch.testing.assert_close(run(hooked, tensors), run(stacked, tensors), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("path", cases("lora_"))
def test_lora_unmatched_keys_are_reported(path):
    config, tensors = load_case(path)
    state = with_prefix(tensors, "comfy.")
    for part in ("A", "B"):
        state[f"diffusion_model.blocks.99.self_attn.q.lora_{part}.weight"] = state[
            f"diffusion_model.blocks.0.self_attn.q.lora_{part}.weight"
        ]
    state["diffusion_model.blocks.0.cross_attn.k_img.diff_b"] = torch.zeros(config["config"]["dim"])  # Wan2.1 I2V only
    lora = load_lora(state)
    model = base_model(config, tensors)
    before = model.blocks[0].self_attn.q.weight.clone()
    with pytest.raises(CheckpointError, match=r"2 LoRA entries match no layer") as error:
        apply_loras(model, [lora])
    assert "blocks.99.self_attn.q" in str(error.value) and "cross_attn.k_img.bias" in str(error.value)
    assert torch.equal(model.blocks[0].self_attn.q.weight, before)
    applied = apply_loras(model, [lora], strict=False)
    assert len(applied.unmatched) == 2
    torch.testing.assert_close(run(model, tensors), tensors["out"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("path", cases("lora_"))
def test_lora_for_another_base_model_names_module_and_shapes(tmp_path, path):
    config, tensors = load_case(path)
    state = with_prefix(tensors, "comfy.")
    down = state["diffusion_model.blocks.1.ffn.0.lora_A.weight"]
    state["diffusion_model.blocks.1.ffn.0.lora_A.weight"] = torch.zeros(down.shape[0], down.shape[1] + 8)
    file = tmp_path / "wan_1.3b_style_lora.safetensors"
    save_file(state, str(file))
    with pytest.raises(CheckpointError) as error:
        apply_loras(base_model(config, tensors), [load_lora(file)])
    message = str(error.value)
    assert "blocks.1.ffn.0" in message and str(file) in message and f"{down.shape[1] + 8}]" in message


@pytest.mark.parametrize("path", cases("lora_"))
def test_lora_on_fp8_layers_merges_into_requantised_weights_or_hooks(path):
    config, tensors = load_case(path)
    lora = golden_lora(config, tensors, "comfy")
    lora_effect = tensors["out"] - tensors["out_base"]
    hooked_model = quantize_dit_to_fp8(base_model(config, tensors))
    plain = run(hooked_model, tensors)
    apply_loras(hooked_model, [lora], mode="hook")
    hooked = run(hooked_model, tensors)
    assert (hooked - plain - lora_effect).norm() < 0.05 * lora_effect.norm()
    merged_model = quantize_dit_to_fp8(base_model(config, tensors))
    apply_loras(merged_model, [lora], mode="merge")
    assert all(isinstance(layer.weight, torch.nn.Parameter) and layer.weight.dtype == torch.float8_e4m3fn
               for layer in merged_model.modules() if isinstance(layer, Fp8Linear))
    # one more fp8 rounding of the merged weights: far below the LoRA's own effect
    assert (run(merged_model, tensors) - hooked).norm() < 0.05 * lora_effect.norm()


def with_deltas(config: dict, tensors: dict) -> tuple[dict, dict]:
    """The case's ComfyUI LoRA plus full weight / bias deltas (`.diff`, `.diff_b`) on the layer types speed LoRAs
    change (linear, RMSNorm, LayerNorm, the patch embedding's bias), and those deltas under parameter names."""
    model = base_model(config, tensors)
    generator = torch.Generator().manual_seed(5)
    state, deltas = with_prefix(tensors, "comfy."), {}
    for parameter in (
        "blocks.0.self_attn.q.weight",
        "blocks.0.self_attn.q.bias",
        "blocks.1.ffn.2.bias",
        "blocks.0.self_attn.norm_q.weight",
        "blocks.1.norm3.weight",
        "blocks.1.norm3.bias",
        "patch_embedding.bias",
        "head.head.weight",
    ):
        module, _, kind = parameter.rpartition(".")
        deltas[parameter] = torch.randn(model.get_parameter(parameter).shape, generator=generator) * 0.05
        state[f"diffusion_model.{module}.{'diff' if kind == 'weight' else 'diff_b'}"] = deltas[parameter]
    return state, deltas


@pytest.mark.parametrize("mode", ["merge", "hook"])
@pytest.mark.parametrize("path", cases("lora_"))
def test_lora_weight_and_bias_deltas_act_like_changed_parameters(path, mode):
    config, tensors = load_case(path)
    state, deltas = with_deltas(config, tensors)
    lora = load_lora(state, strength=0.5)
    assert {name: t * 0.5 for name, t in deltas.items()}.keys() == lora.deltas.keys() and not lora.unrecognized
    expected = base_model(config, tensors)
    apply_loras(expected, [load_lora(with_prefix(tensors, "comfy."), strength=0.5)])
    with torch.no_grad():
        for name, delta in deltas.items():
            expected.get_parameter(name).add_(delta * 0.5)
    model = base_model(config, tensors)
    applied = apply_loras(model, [lora], mode=mode)
    torch.testing.assert_close(run(model, tensors), run(expected, tensors), atol=1e-4, rtol=1e-4)
    applied.remove()
    torch.testing.assert_close(run(model, tensors), tensors["out_base"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("path", cases("lora_"))
def test_lora_delta_of_another_shape_names_the_parameter(path):
    config, tensors = load_case(path)
    state = with_prefix(tensors, "comfy.")
    state["diffusion_model.blocks.0.self_attn.q.diff_b"] = torch.zeros(config["config"]["dim"] + 4)
    with pytest.raises(CheckpointError, match=r"blocks.0.self_attn.q.bias is \[\d+\] but the LoRA's delta is"):
        apply_loras(base_model(config, tensors), [load_lora(state)], mode="hook")


def test_kohya_lora_for_every_linear_of_a_dit_merges_into_each_of_them():
    """Kohya names (`lora_unet_blocks_1_cross_attn_q`) come back to the DiT's own module names for every linear
    layer, with no list of underscored names to keep up."""
    torch.manual_seed(0)
    model = WanDiT(DiTConfig.from_dict({**tiny.DIT, "num_layers": 2}))
    linears = {name: layer for name, layer in model.named_modules() if isinstance(layer, nn.Linear)}
    state = {}
    for name, layer in linears.items():
        stem = "lora_unet_" + name.replace(".", "_")
        state[f"{stem}.lora_down.weight"] = torch.randn(2, layer.in_features)
        state[f"{stem}.lora_up.weight"] = torch.randn(layer.out_features, 2)
        state[f"{stem}.alpha"] = torch.tensor(1.0)
    before = {name: layer.weight.detach().clone() for name, layer in linears.items()}
    lora = load_lora(state)
    assert lora.modules.keys() == linears.keys() and not lora.unrecognized
    applied = apply_loras(model, [lora])
    assert not applied.unmatched
    for name, layer in linears.items():
        stem = "lora_unet_" + name.replace(".", "_")
        added = state[f"{stem}.lora_up.weight"] @ state[f"{stem}.lora_down.weight"] / 2
        torch.testing.assert_close(layer.weight.detach() - before[name], added, atol=1e-5, rtol=1e-5)


def test_lora_aliases_follow_the_model_names_including_layers_no_list_named():
    """A model with a layer of its own (`gate_proj`) is reached under every layout, in any block."""
    names = ["blocks.0.self_attn.q", "blocks.0.self_attn.gate_proj", "time_projection.1"]
    aliases = module_aliases(names)
    for key in ("lora_unet_blocks_17_self_attn_gate_proj.lora_down.weight",
                "diffusion_model.blocks.17.self_attn.gate_proj.lora_A.weight",
                "model.diffusion_model.blocks.17.self_attn.gate_proj.lora_down.weight",
                "base_model.model.blocks.17.self_attn.gate_proj.lora_A.weight"):
        assert lora_name(key, aliases) == "blocks.17.self_attn.gate_proj.lora_A.weight"
    assert lora_name("lora_unet_time_projection_1.alpha", aliases) == "time_projection.1.alpha"
    # a key for no module keeps its (de-prefixed) name, to be reported when the LoRA is applied
    assert lora_name("lora_unet_down_blocks_0_proj_in.lora_up.weight", aliases) == "down.blocks.0.proj.in.lora_B.weight"
