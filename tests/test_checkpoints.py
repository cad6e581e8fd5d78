"""Checkpoint loading: every layout users have loads into our modules by name and gives the same forward."""

import builtins
import json

import pytest
import torch
from golden_data import case_paths, cases, golden_dir, load_case, manifests, vae_case, with_prefix
from helpers import build_dit, build_vae, hf_t5_names, run_case
from safetensors.torch import save_file

from storymem_core.commands.inspect import inspect_command
from storymem_core.errors import CheckpointError
from storymem_core.tiny_models import AESTHETIC_FILE, CLIP_FILE, I2V_HIGH, spiece_model, write_tiny_models
from storymem_core.tiny_models import CLIP as TINY_CLIP
from storymem_core.wan.dit import DiTConfig, WanDiT
from storymem_core.wan.fp8 import Fp8Linear, quantize_per_tensor
from storymem_core.wan.t5 import T5Config, UMT5Encoder
from storymem_core.wan.vae import WAN21_LATENT_MEAN, WAN21_LATENT_STD, VAEConfig
from storymem_core.weights.checkpoint import Checkpoint, detect
from storymem_core.weights.loading import load_model, load_state_dict, load_text_encoder, load_vae
from storymem_core.weights.sources import find_wan_parts

COMFY_PREFIX = "model.diffusion_model."
# fp8 e4m3 keeps 3 mantissa bits; test_fp8 measured 0.2-0.3% on the tiny golden DiTs
FP8_RELATIVE_ERROR = 0.01
# umT5 with every block linear in fp8 e4m3 (per-tensor scale): round-to-nearest with 3 mantissa bits moves each
# weight by at most 2^-4 (6.25%) of itself, about 2.5% RMS. A matmul sums many such independent errors, so its
# output moves by about that RMS, not the worst case, and the final RMSNorm keeps the scale; so the output's
# relative error (norm) stays under the per-weight bound 2^-4. Single elements are not bounded that way:
# measured 2.3% (norm) on the shared t5_tiny (2 layers), 4.7% on a 3-layer case whose worst element moved 0.27
# against a largest |out| of 3.4. Exactness is checked against the dequantised weights instead.
FP8_T5_RELATIVE_ERROR = 2**-4


@pytest.fixture(scope="module")
def dit_case():
    """The first i2v DiT case of the golden folder (the layout tests need a y input and 36 channels)."""
    for path in case_paths("dit_"):
        config, tensors = load_case(path)
        if config["model_type"] == "i2v":
            return config, tensors, with_prefix(tensors, "weight.")
    pytest.skip(f"no i2v dit_* case in {golden_dir()}")


@pytest.fixture(scope="module")
def t5_case():
    paths = case_paths("t5_")
    if not paths:
        pytest.skip(f"no t5_* case in {golden_dir()}")
    config, tensors = load_case(paths[0])
    return config, tensors, with_prefix(tensors, "weight.")


def fresh_dit(config: dict) -> WanDiT:
    return WanDiT(DiTConfig.from_dict({**config["config"], "model_type": config["model_type"]})).eval()


def write_shards(folder, weights: dict, shards: int = 2) -> None:
    """The Wan-AI layout: diffusion_pytorch_model-0000N-of-0000M.safetensors + index.json."""
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(weights)
    weight_map = {}
    for i in range(shards):
        file = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = names[i::shards]
        save_file({n: weights[n].contiguous() for n in part}, str(folder / file))
        weight_map.update({n: file for n in part})
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )


def block_linears(weights: dict) -> list[str]:
    return [
        n[: -len(".weight")]
        for n, t in weights.items()
        if n.startswith("blocks.") and n.endswith(".weight") and t.dim() == 2
    ]


def fp8_file(weights: dict, generation: str) -> tuple[dict, dict]:
    """(file tensors in ComfyUI's fp8 layout of that generation, the float32 weights it dequantises to)."""
    stored, dequantised = dict(weights), dict(weights)
    for layer in block_linears(weights):
        fp8, scale = quantize_per_tensor(weights[f"{layer}.weight"])
        stored[f"{layer}.weight"] = fp8
        dequantised[f"{layer}.weight"] = fp8.float() * scale
        if generation == "old":
            stored[f"{layer}.scale_weight"] = scale.reshape(1)
            stored[f"{layer}.scale_input"] = torch.ones(())
        else:
            stored[f"{layer}.weight_scale"] = scale
            stored[f"{layer}.comfy_quant"] = torch.tensor(
                list(json.dumps({"format": "float8_e4m3fn"}).encode()), dtype=torch.uint8
            )
    if generation == "old":
        stored = {COMFY_PREFIX + n: t for n, t in stored.items()}
        stored["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    return stored, dequantised


def fp8_scaled_t5_file(weights: dict) -> tuple[dict, dict]:
    """(ComfyUI's umt5_xxl_fp8_e4m3fn_scaled.safetensors layout, the float32 weights it dequantises to), both under HF
    names.

    Every block linear (q, k, v, o, wi_0, wi_1, wo) is float8_e4m3fn with a per-tensor float32 `scale_weight`;
    embedding, position biases and norms stay 16-bit; a `scaled_fp8` marker says which fp8 format it is.
    """
    stored, dequantised = {}, {}
    for name, tensor in hf_t5_names(weights).items():
        if name.startswith("encoder.block.") and tensor.dim() == 2 and "relative_attention_bias" not in name:
            fp8, scale = quantize_per_tensor(tensor)
            stored[name], stored[name.removesuffix("weight") + "scale_weight"] = fp8, scale
            dequantised[name] = fp8.float() * scale
        else:
            stored[name] = tensor.half()
            dequantised[name] = tensor.half().float()
    stored["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    return stored, dequantised


def vae_from_file(path, config: dict):
    """The VAE as the loader nodes get it (`load_vae`, which reads only the width from a file without a stored
    config); a case that is not Wan2.1 at some width goes through `load_model` into its own architecture."""
    wan21 = VAEConfig.from_dict(config["config"]) == VAEConfig(dim=config["config"]["dim"]) and all(
        torch.allclose(torch.tensor(config[key]), torch.tensor(default))
        for key, default in (("latent_mean", WAN21_LATENT_MEAN), ("latent_std", WAN21_LATENT_STD))
    )
    return load_vae(path, torch.float32) if wan21 else load_model(build_vae(config), path)


def assert_vae_forward(vae, tensors: dict, reference=None, **tolerance) -> None:
    """encode(video) and decode(latent) equal the golden tensors, or what `reference` gives for them."""
    expected_latent = tensors["latent"] if reference is None else reference.encode(tensors["video"])
    expected_decoded = tensors["decoded"] if reference is None else reference.decode(tensors["latent"])
    torch.testing.assert_close(vae.encode(tensors["video"]), expected_latent, **tolerance)
    torch.testing.assert_close(vae.decode(tensors["latent"]), expected_decoded, **tolerance)


@pytest.fixture(scope="module")
def spiece_bytes() -> bytes:
    return spiece_model()


# ------------------------------------------------------------------ real-size names


@pytest.mark.parametrize("model_type", ["t2v", "i2v"])
def test_dit_manifest_names_and_shapes_match(model_type):
    manifest = manifests()
    key = f"wan22_a14b_{model_type}_dit"
    with torch.device("meta"):
        model = WanDiT(DiTConfig.a14b(model_type))
    assert {n: list(t.shape) for n, t in model.state_dict().items()} == manifest["shapes"][key]
    assert sum(p.numel() for p in model.parameters()) == manifest["parameter_counts"][key]


@pytest.mark.parametrize(
    "manifest_key, kind, hf_names",
    [
        ("wan22_a14b_t2v_dit", "wan22-t2v-dit", False),
        ("wan22_a14b_i2v_dit", "wan22-i2v-dit", False),
        ("wan21_vae", "wan21-vae", False),
        ("umt5_xxl_encoder", "umt5", False),
        ("umt5_xxl_encoder", "umt5", True),
    ],
)
def test_checkpoint_kind_and_size_of_real_models_from_names_alone(manifest_key, kind, hf_names):
    manifest = manifests()
    meta = {n: torch.empty(s, device="meta") for n, s in manifest["shapes"][manifest_key].items()}
    info = Checkpoint(hf_t5_names(meta) if hf_names else meta).info
    assert info.kind == kind and info.usable
    assert info.parameter_count == manifest["parameter_counts"][manifest_key]


# ------------------------------------------------------------------ DiT layouts


def test_dit_wan_ai_folder_loads_each_expert_and_finds_the_other_pieces(tmp_path, dit_case, t5_case):
    config, tensors, weights = dit_case
    root = tmp_path / "Wan2.2-I2V-A14B"
    write_shards(root / "high_noise_model", weights)
    write_shards(root / "low_noise_model", weights, shards=3)
    torch.save(t5_case[2], root / "models_t5_umt5-xxl-enc-bf16.pth")
    torch.save(with_prefix(vae_case()[1], "weight."), root / "Wan2.1_VAE.pth")
    (root / "google" / "umt5-xxl").mkdir(parents=True)
    (root / "google" / "umt5-xxl" / "spiece.model").write_bytes(b"pieces")

    for expert in ("high_noise_model", "low_noise_model"):
        model = load_model(fresh_dit(config), root / expert)
        torch.testing.assert_close(run_case(model, tensors), tensors["out"], atol=1e-4, rtol=1e-4)
    index = root / "high_noise_model" / "diffusion_pytorch_model.safetensors.index.json"
    torch.testing.assert_close(load_state_dict(index), weights, atol=0, rtol=0)
    torch.testing.assert_close(load_state_dict(root, kind="umt5"), t5_case[2], atol=0, rtol=0)

    info = detect(root)
    assert info.layout == "wan-folder" and info.kind == "wan22-i2v-dit" and info.usable
    assert {part: p.kind for part, p in info.parts.items()} == {
        "high_noise": "wan22-i2v-dit",
        "low_noise": "wan22-i2v-dit",
        "text_encoder": "umt5",
        "vae": "wan21-vae",
    }
    with pytest.raises(CheckpointError, match="two DiT experts"):
        load_state_dict(root)

    (root / "google" / "umt5-xxl" / "spiece.model").unlink()
    (root / "low_noise_model" / "diffusion_pytorch_model-00002-of-00003.safetensors").unlink()
    assert find_wan_parts(root).tokenizer is None
    problems = " ".join(detect(root).problems)
    assert "spiece.model" in problems and "diffusion_pytorch_model-00002-of-00003.safetensors" in problems


@pytest.mark.parametrize("prefix", ["", COMFY_PREFIX])
def test_dit_comfy_single_file_loads_with_or_without_prefix(tmp_path, dit_case, prefix):
    config, tensors, weights = dit_case
    path = tmp_path / "wan2.2_i2v_high_noise_14B_fp32.safetensors"
    save_file({prefix + n: t for n, t in weights.items()}, str(path))
    info = detect(path)
    assert (info.layout, info.kind, info.prefix, info.fp8) == ("safetensors", "wan22-i2v-dit", prefix, None)
    model = load_model(fresh_dit(config), path)
    torch.testing.assert_close(run_case(model, tensors), tensors["out"], atol=1e-4, rtol=1e-4)


def test_dit_bf16_file_loads_the_rounded_weights(tmp_path, dit_case):
    config, tensors, weights = dit_case
    path = tmp_path / "wan2.2_i2v_low_noise_14B_bf16.safetensors"
    save_file({COMFY_PREFIX + n: t.bfloat16() for n, t in weights.items()}, str(path))
    assert detect(path).dtypes == {"bfloat16": len(weights)}
    model = load_model(fresh_dit(config), path)
    rounded = build_dit(config, {n: t.bfloat16().float() for n, t in weights.items()})
    torch.testing.assert_close(run_case(model, tensors), run_case(rounded, tensors), atol=0, rtol=0)
    assert load_state_dict(path, dtype=torch.float16)["head.head.weight"].dtype == torch.float16


@pytest.mark.parametrize("generation, label", [("old", "scaled_fp8"), ("new", "comfy_quant")])
def test_dit_fp8_scaled_file_dequantises_to_weight_times_scale(tmp_path, dit_case, generation, label):
    config, tensors, weights = dit_case
    stored, dequantised = fp8_file(weights, generation)
    path = tmp_path / "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors"
    save_file(stored, str(path))
    info = detect(path)
    assert info.kind == "wan22-i2v-dit" and info.fp8 == label and info.usable
    assert info.parameter_count == sum(t.numel() for t in weights.values())

    model = load_model(fresh_dit(config), path)
    expected = run_case(build_dit(config, dequantised), tensors)
    out = run_case(model, tensors)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert (out - tensors["out"]).norm() / tensors["out"].norm() < FP8_RELATIVE_ERROR
    assert load_state_dict(path)["blocks.0.ffn.0.weight"].dtype == torch.bfloat16  # dequantised default


@pytest.mark.parametrize("generation", ["old", "new"])
def test_dit_fp8_scaled_file_can_stay_fp8(tmp_path, dit_case, generation):
    config, tensors, weights = dit_case
    stored, dequantised = fp8_file(weights, generation)
    path = tmp_path / "fp8.safetensors"
    save_file(stored, str(path))
    state = load_state_dict(path, keep_fp8=True)
    assert state["blocks.0.self_attn.q.weight"].dtype == torch.float8_e4m3fn
    assert "blocks.0.self_attn.q.scale_weight" in state and not any("comfy_quant" in n or "input" in n for n in state)
    model = load_model(fresh_dit(config), path, keep_fp8=True)
    assert isinstance(model.blocks[0].self_attn.q, Fp8Linear)
    expected = run_case(build_dit(config, dequantised), tensors)
    torch.testing.assert_close(run_case(model, tensors), expected, atol=1e-5, rtol=1e-5)


def test_dit_loads_into_a_meta_model_without_a_second_copy(tmp_path, dit_case):
    config, tensors, weights = dit_case
    path = tmp_path / "dit.safetensors"
    save_file(weights, str(path))
    with torch.device("meta"):
        model = fresh_dit(config)
    load_model(model, path)
    assert not any(p.is_meta for p in model.parameters())
    torch.testing.assert_close(run_case(model, tensors), tensors["out"], atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ VAE layouts


@pytest.mark.parametrize("path", cases("vae_"))
def test_vae_wan_ai_pth_loads_and_encodes_decodes_like_the_reference(tmp_path, path):
    """Wan2.1_VAE.pth of a Wan-AI folder: the reference's own names, torch.save of a plain state dict."""
    config, tensors = load_case(path)
    file = tmp_path / "Wan2.1_VAE.pth"
    torch.save(with_prefix(tensors, "weight."), file)
    info = detect(file)
    assert (info.layout, info.kind, info.prefix, info.fp8, info.usable) == ("pth", "wan21-vae", "", None, True)
    assert_vae_forward(vae_from_file(file, config), tensors, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("path", cases("vae_"))
def test_vae_comfy_safetensors_loads_and_encodes_decodes_like_the_reference(tmp_path, path, dtype):
    """ComfyUI's wan_2.1_vae.safetensors: the same names, no prefix, no stored config; a 16-bit copy gives
    exactly what its rounded weights give."""
    config, tensors = load_case(path)
    weights = with_prefix(tensors, "weight.")
    file = tmp_path / "wan_2.1_vae.safetensors"
    save_file({n: t.to(dtype).contiguous() for n, t in weights.items()}, str(file))
    info = detect(file)
    assert (info.layout, info.kind, info.prefix, info.fp8, info.usable) == ("safetensors", "wan21-vae", "", None, True)
    assert info.parameter_count == sum(t.numel() for t in weights.values())
    vae = vae_from_file(file, config)
    assert all(p.dtype == torch.float32 for p in vae.parameters())
    if dtype == torch.float32:
        assert_vae_forward(vae, tensors, atol=1e-4, rtol=1e-4)
    else:
        rounded = build_vae(config, {n: t.to(dtype).float() for n, t in weights.items()})
        assert_vae_forward(vae, tensors, reference=rounded, atol=0, rtol=0)


# ------------------------------------------------------------------ text encoder


@pytest.mark.parametrize("path", cases("t5_"))
def test_t5_hf_fp8_scaled_file_equals_its_dequantised_weights(tmp_path, path, spiece_bytes):
    """umt5_xxl_fp8_e4m3fn_scaled.safetensors as ComfyUI ships it, through load_text_encoder as the nodes call it."""
    config, tensors = load_case(path)
    stored, dequantised = fp8_scaled_t5_file(with_prefix(tensors, "weight."))
    stored["spiece_model"] = torch.frombuffer(bytearray(spiece_bytes), dtype=torch.uint8)
    file = tmp_path / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
    save_file(stored, str(file))
    info = detect(file)
    assert (info.kind, info.prefix, info.fp8, info.usable) == ("umt5", "", "scaled_fp8", True)
    assert info.dtypes["float8_e4m3fn"] == 7 * config["config"]["num_layers"]

    text_encoder = load_text_encoder(file, torch.float32)
    assert text_encoder.tokenizer.processor.serialized_model_proto() == spiece_bytes
    reference = load_model(UMT5Encoder(T5Config.from_dict(config["config"])).eval(), dequantised)
    with torch.no_grad():
        out = text_encoder.encoder(tensors["ids"], tensors["mask"])
        expected = reference(tensors["ids"], tensors["mask"])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    golden = tensors["out"]
    assert (out - golden).norm() / golden.norm() < FP8_T5_RELATIVE_ERROR


def test_t5_hf_layout_file_loads_into_umt5_encoder(tmp_path, t5_case):
    config, tensors, weights = t5_case
    hf = hf_t5_names(weights)
    hf["encoder.embed_tokens.weight"] = hf["shared.weight"].clone()  # tied copy some exports carry
    hf["spiece_model"] = torch.tensor(list(b"serialised tokenizer"), dtype=torch.uint8)
    path = tmp_path / "umt5_xxl_fp16.safetensors"
    save_file(hf, str(path))
    info = detect(path)
    assert info.kind == "umt5" and info.usable and any("tokenizer" in note for note in info.notes)
    model = load_model(UMT5Encoder(T5Config.from_dict(config["config"])).eval(), path)
    with torch.no_grad():
        out = model(tensors["ids"], tensors["mask"])
    torch.testing.assert_close(out, tensors["out"], atol=1e-4, rtol=1e-4)
    assert bytes(Checkpoint(path).embedded_tokenizer().tolist()) == b"serialised tokenizer"


def test_t5_hf_names_mean_what_transformers_computes(tmp_path, t5_case):
    """The wi_0 / wi_1 roles are proved against transformers' own umT5, not just renamed back and forth."""
    transformers = pytest.importorskip("transformers")
    config, tensors, _ = t5_case
    c = config["config"]
    hf_config = transformers.UMT5Config(
        vocab_size=c["vocab"],
        d_model=c["dim"],
        d_kv=c["dim_attn"] // c["num_heads"],
        d_ff=c["dim_ffn"],
        num_heads=c["num_heads"],
        num_layers=c["num_layers"],
        relative_attention_num_buckets=c["num_buckets"],
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
    )
    torch.manual_seed(0)
    hf_model = transformers.UMT5EncoderModel(hf_config).eval()
    path = tmp_path / "umt5_hf.safetensors"
    save_file({n: t.clone() for n, t in hf_model.state_dict().items()}, str(path))
    model = load_model(UMT5Encoder(T5Config.from_dict(c)).eval(), path)
    with torch.no_grad():
        expected = hf_model(input_ids=tensors["ids"], attention_mask=tensors["mask"]).last_hidden_state
        out = model(tensors["ids"], tensors["mask"])
    real = tensors["mask"].bool()
    torch.testing.assert_close(out[real], expected[real], atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize("fault", ["missing", "extra", "shape"])
def test_dit_file_that_does_not_fit_names_the_key_and_the_file(tmp_path, dit_case, fault):
    config, _, weights = dit_case
    weights = dict(weights)
    key = {"missing": "blocks.1.cross_attn.k.weight", "extra": "blocks.0.ffn.9.weight", "shape": "head.head.weight"}[
        fault
    ]
    if fault == "missing":
        del weights[key]
    elif fault == "extra":
        weights[key] = torch.zeros(3)
    else:
        weights[key] = torch.zeros(5, weights[key].shape[1])
    path = tmp_path / f"{fault}.safetensors"
    save_file(weights, str(path))
    model = fresh_dit(config)
    before = model.state_dict()["head.head.weight"].clone()
    with pytest.raises(CheckpointError) as error:
        load_model(model, path)
    assert key in str(error.value) and str(path) in str(error.value)
    assert torch.equal(model.state_dict()["head.head.weight"], before)  # nothing assigned


def test_dit_given_a_vae_file_says_what_both_are(tmp_path, dit_case):
    path = tmp_path / "wan_2.1_vae.safetensors"
    save_file(with_prefix(vae_case()[1], "weight."), str(path))
    assert detect(path).kind == "wan21-vae"
    with pytest.raises(CheckpointError, match=r"is a Wan2\.1 VAE, but a Wan2\.2 image-to-video .* expected") as error:
        load_model(fresh_dit(dit_case[0]), path)
    assert str(path) in str(error.value)


def test_checkpoint_truncated_safetensors_is_refused(tmp_path, dit_case):
    path = tmp_path / "partial.safetensors"
    save_file(dit_case[2], str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="not a complete safetensors file"):
        load_state_dict(path)
    assert not detect(path).usable


def test_checkpoint_pickle_payload_is_refused_without_running(tmp_path):
    target = tmp_path / "created_by_unpickling.txt"

    class Payload:
        def __reduce__(self):
            return builtins.open, (str(target), "w")

    path = tmp_path / "backbone_high_noise.pth"
    torch.save({"base_model.model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(2, 4), "payload": Payload()}, path)
    with pytest.raises(CheckpointError, match="refused") as error:
        load_state_dict(path)
    assert str(path) in str(error.value)
    assert not detect(path).usable
    assert not target.exists()


def test_checkpoint_single_shard_is_flagged(tmp_path, dit_case):
    write_shards(tmp_path / "high_noise_model", dit_case[2])
    info = detect(tmp_path / "high_noise_model" / "diffusion_pytorch_model-00001-of-00002.safetensors")
    assert not info.usable and "shard 1 of 2" in info.problems[0]


# ------------------------------------------------------------------ inspect


def test_checkpoint_inspect_exit_codes(tmp_path, dit_case, capsys):
    good = tmp_path / "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors"
    save_file(fp8_file(dit_case[2], "new")[0], str(good))
    lora = tmp_path / "backbone_high_noise.pth"
    torch.save(
        {
            "base_model.model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(4, 8),
            "base_model.model.blocks.0.self_attn.q.lora_B.weight": torch.zeros(8, 4),
        },
        lora,
    )
    assert inspect_command([str(good), str(lora)]) == 0
    printed = capsys.readouterr().out
    assert "wan22-i2v-dit" in printed and "comfy_quant" in printed and "rank 4" in printed and "self_attn.q" in printed

    bad = tmp_path / "notes.safetensors"
    save_file({"something.else": torch.zeros(2)}, str(bad))
    assert inspect_command([str(good), str(bad), str(tmp_path / "absent.safetensors")]) == 2
    printed = capsys.readouterr().out
    assert "NOT usable" in printed and "does not exist" in printed


def test_checkpoint_inspect_says_what_is_no_model_file_and_where_a_file_contradicts_its_name(tmp_path, capsys):
    video = tmp_path / "film.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    assert inspect_command([str(video)]) == 2
    printed = capsys.readouterr().out
    assert "layout      not a model file" in printed and "layout      safetensors" not in printed
    expert = write_tiny_models(tmp_path / "models") / "diffusion_models" / I2V_HIGH
    assert inspect_command([str(expert)]) == 0  # it loads: the notes warn, they do not refuse
    printed = capsys.readouterr().out
    assert "tiny random test model" in printed
    assert "the name says 14B but it holds" in printed and "the name says fp8 but none of its tensors" in printed


def test_checkpoint_inspect_knows_the_keyframe_files(tmp_path, capsys):
    models = write_tiny_models(tmp_path / "models") / "clip_vision"
    clip, head = models / CLIP_FILE, models / AESTHETIC_FILE
    assert inspect_command([str(clip), str(head)]) == 0
    printed = capsys.readouterr().out
    embed_dim = f"embed_dim {TINY_CLIP['embed_dim']}"
    assert (
        f"clip-vision: an open_clip CLIP image encoder (keyframe selection); width {TINY_CLIP['vision_cfg']['width']}"
        in printed
    )
    assert (
        f"aesthetic-head: an aesthetic head on CLIP embeddings (keyframe quality filter); {embed_dim}, layers 1"
        in printed
    )
    assert printed.count(embed_dim) == 2

    hugging_face = tmp_path / "clip_vision_hf.safetensors"
    save_file(
        {
            "vision_model.embeddings.class_embedding": torch.zeros(8),
            "vision_model.post_layernorm.weight": torch.zeros(8),
        },
        str(hugging_face),
    )
    assert inspect_command([str(hugging_face)]) == 2
    assert "Hugging Face CLIP vision model, but keyframe selection reads open_clip files" in capsys.readouterr().out


@pytest.mark.parametrize(
    "fault,expected",
    [
        ("missing", "missing blocks.0.ffn.0.bias"),
        ("extra", "unexpected blocks.0.extra.weight"),
        ("wrong shape", "wrong shape blocks.0.ffn.0.bias"),
    ],
)
def test_checkpoint_inspect_finds_what_loading_would_refuse(tmp_path, dit_case, capsys, fault, expected):
    weights = dict(dit_case[2])
    if fault == "missing":
        del weights["blocks.0.ffn.0.bias"]
    elif fault == "extra":
        weights["blocks.0.extra.weight"] = torch.zeros(2)
    else:
        weights["blocks.0.ffn.0.bias"] = torch.zeros(weights["blocks.0.ffn.0.bias"].shape[0] + 1)
    path = tmp_path / "wan2.2_i2v_high_noise_14B_fp16.safetensors"
    save_file(weights, str(path))
    assert inspect_command([str(path)]) == 2
    printed = capsys.readouterr().out
    assert expected in printed and "NOT usable" in printed
