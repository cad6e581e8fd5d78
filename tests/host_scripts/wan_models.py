"""In ComfyUI: its Wan model and its patching on the jobs in JOB_DIR (written by tests/test_host_models.py).

- core_dit: the tiny core-loadable DiT file loaded by ComfyUI's own loader, run on the given inputs, and with
  StoryMem Memory Positions (released, negative; a later DIFFUSION_MODEL wrapper counting its calls) on
  positions_inputs (which also hold the node's memory_latents and spacing), called with the MODEL's
  wrappers as ComfyUI's samplers pass them;
- dit_*: ComfyUI's WanModel built at a golden case's size with its weights, run on its inputs;
- lora_*: the golden base model as a ComfyUI MODEL, patched by StoryMem LoRA (MODEL) with the peft .pth,
  with the ComfyUI-layout file, stacked with LoraLoaderModelOnly, and the convert-lora file through
  LoraLoaderModelOnly; the patched weights and the .pth-patched model's output are written out.
"""

import json
import sys
from pathlib import Path

job_dir = Path(sys.argv[1])

import in_host  # noqa: E402

classes = in_host.start(models_dir=job_dir / "models")

import comfy.model_detection  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.patcher_extension  # noqa: E402
import comfy.sd  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

CPU = torch.device("cpu")


def wan_model(config: dict, weights: dict) -> comfy.model_patcher.ModelPatcher:
    """ComfyUI's Wan model at this size (heads from the config: core would read dim // 128), as a MODEL."""
    unet_config = {**config, "image_model": "wan2.1", "model_type": "t2v", "patch_size": tuple(config["patch_size"]),
                   "window_size": tuple(config["window_size"])}
    model_config = comfy.model_detection.model_config_from_unet_config(unet_config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, "")
    model.diffusion_model.load_state_dict(weights)
    return comfy.model_patcher.ModelPatcher(model, load_device=CPU, offload_device=CPU)


def run(diffusion_model, inputs: dict, text_len: int, transformer_options: dict | None = None) -> torch.Tensor:
    """out for x ++ y, t and the context zero-padded to text_len (what the reference does before embedding);
    transformer_options as a sampler passes them (its MODEL's wrappers)."""
    x = (torch.cat([inputs["x"], inputs["y"]]) if "y" in inputs else inputs["x"])[None]
    context = torch.nn.functional.pad(inputs["context"], (0, 0, 0, text_len - inputs["context"].shape[0]))[None]
    with torch.no_grad():
        return diffusion_model(x, inputs["t"].float(), context, transformer_options=transformer_options or {})[0]


def patched_weights(patcher) -> dict:
    patcher.patch_model(device_to=CPU)
    return {k: v.detach().clone() for k, v in patcher.model.diffusion_model.state_dict().items()}


results = {}
core = job_dir / "core_dit.safetensors"
if core.exists():
    model = comfy.sd.load_diffusion_model(str(core), model_options={"dtype": torch.float32})
    inputs = load_file(str(job_dir / "core_dit_inputs.safetensors"))
    results["core_dit.out"] = run(model.model.diffusion_model, inputs, model.model.diffusion_model.text_len)
    inputs = load_file(str(job_dir / "positions_inputs.safetensors"))  # with the node's memory_latents and spacing
    for placement in ("released", "negative"):
        patched = classes["StoryMemMemoryPositions"]().patch(
            model, int(inputs["memory_latents"]), placement, int(inputs["spacing"])
        )[0]
        calls = []
        probed = patched.clone()
        probed.add_wrapper_with_key(
            comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
            "probe",
            lambda executor, *args, **kwargs: calls.append(1) or executor(*args, **kwargs),
        )
        results[f"positions.{placement}"] = run(
            model.model.diffusion_model, inputs, model.model.diffusion_model.text_len, {"wrappers": probed.wrappers}
        )
        results[f"positions.{placement}.inner_calls"] = torch.tensor(len(calls))
    results["positions.unpatched"] = run(model.model.diffusion_model, inputs, model.model.diffusion_model.text_len)
    results["positions.rope_encode_restored"] = torch.tensor("rope_encode" not in vars(model.model.diffusion_model))

for job in sorted(job_dir.glob("*.json")):
    settings = json.loads(job.read_text())
    tensors = load_file(str(job.with_suffix(".safetensors")))
    weights = {k.removeprefix("weight."): v for k, v in tensors.items() if k.startswith("weight.")}
    base = wan_model(settings["config"], weights)
    if job.stem.startswith("dit_"):
        results[f"{job.stem}.out"] = run(base.model.diffusion_model, tensors, settings["config"]["text_len"])
        continue
    lora_node, stacker = classes["StoryMemLoraModel"](), classes["LoraLoaderModelOnly"]()
    with_pth = lora_node.load(base, settings["pth"], 1.0, settings["alpha"])[0]
    variants = {
        "pth": with_pth,
        "comfy": lora_node.load(base, settings["comfy"], 1.0)[0],
        "stacked": stacker.load_lora_model_only(with_pth, settings["comfy"], 0.5)[0],
        "converted": stacker.load_lora_model_only(base, settings["converted"], 1.0)[0],
    }
    for name, patcher in variants.items():
        for key, value in patched_weights(patcher).items():
            results[f"{job.stem}.{name}.{key}"] = value
        if name == "pth":
            results[f"{job.stem}.pth_out"] = run(patcher.model.diffusion_model, tensors, settings["config"]["text_len"])
        patcher.unpatch_model(CPU)
    after = base.model.diffusion_model.state_dict()
    results[f"{job.stem}.base_unchanged"] = torch.tensor(all(torch.equal(after[k], v) for k, v in weights.items()))

save_file({k: v.contiguous() for k, v in results.items()}, str(job_dir / "results.safetensors"))
print(f"{len(results)} results written")
