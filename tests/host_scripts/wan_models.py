"""In ComfyUI: its Wan model and its patching on the jobs in JOB_DIR (written by tests/test_host_models.py).

- core_dit: the tiny core-loadable DiT file loaded by ComfyUI's own loader, run on the given inputs;
- dit_*: ComfyUI's WanModel built at a golden case's size with its weights, called by ComfyUI's sampling code
  (comfy.sample.sample_custom, CFG 3 over equal prompts, one model call at the case's sigma) with StoryMem
  Conditioning's CONDITIONING for the case's `y` and memory at the job's placement and at the other one; a
  DIFFUSION_MODEL wrapper on the MODEL counts its calls (other wrappers still run under the positions);
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
import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402
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


def sampled_output(patcher, tensors: dict, text_len: int, memory_count: int, placement: str) -> tuple:
    """The DiT output for the case's x at t, as ComfyUI's sampling code calls the model with StoryMem Conditioning's
    conditioning (the case's y, memory at `placement`), and how many model calls a wrapper on the MODEL saw."""
    context = torch.nn.functional.pad(tensors["context"], (0, 0, 0, text_len - tensors["context"].shape[0]))[None]
    positive = negative = [[context, {}]]
    if "y" in tensors:  # an I2V case
        shot_conditioning = sys.modules[classes["StoryMemConditioning"].__module__].shot_conditioning
        latents = patcher.model.process_latent_out(tensors["y"][None, 4:])[0]  # raw, as a VAE gives them
        y = torch.cat([tensors["y"][:4], latents])
        positive, negative = shot_conditioning(positive, negative, y, memory_count, placement)
    sigma = float(tensors["t"]) / 1000  # Wan's flow timestep is sigma x 1000
    outputs, calls = [], []

    def one_call(model_call, x, sigmas, extra_args=None, callback=None, disable=None):
        denoised = model_call(x, sigmas[0] * x.new_ones([x.shape[0]]), **extra_args)
        outputs.append((x - denoised) / sigmas[0])  # flow models: denoised = x - sigma * output
        return denoised

    probed = patcher.clone()
    probed.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "probe",
                                lambda executor, *args, **kwargs: calls.append(1) or executor(*args, **kwargs))
    noise = tensors["x"][None] / sigma  # the sampler starts at sigma x noise: the case's x
    comfy.sample.sample_custom(probed, noise, 3.0, comfy.samplers.KSAMPLER(one_call), torch.tensor([sigma, 0.0]),
                               positive, negative, torch.zeros_like(noise), disable_pbar=True, seed=0)
    return outputs[0][0], len(calls)


def patched_weights(patcher) -> dict:
    patcher.patch_model(device_to=CPU)
    return {k: v.detach().clone() for k, v in patcher.model.diffusion_model.state_dict().items()}


results = {}
core = job_dir / "core_dit.safetensors"
if core.exists():
    model = comfy.sd.load_diffusion_model(str(core), model_options={"dtype": torch.float32})
    inputs = load_file(str(job_dir / "core_dit_inputs.safetensors"))
    results["core_dit.out"] = run(model.model.diffusion_model, inputs, model.model.diffusion_model.text_len)

for job in sorted(job_dir.glob("*.json")):
    settings = json.loads(job.read_text())
    tensors = load_file(str(job.with_suffix(".safetensors")))
    weights = {k.removeprefix("weight."): v for k, v in tensors.items() if k.startswith("weight.")}
    base = wan_model(settings["config"], weights)
    if job.stem.startswith("dit_"):
        for name, placement in (("sampled", settings["placement"]), ("other", settings["other_placement"])):
            out, calls = sampled_output(base, tensors, settings["config"]["text_len"], settings["memory_size"],
                                        placement)
            results[f"{job.stem}.{name}"], results[f"{job.stem}.{name}.calls"] = out, torch.tensor(calls)
        restored = "rope_encode" not in vars(base.model.diffusion_model)  # ComfyUI's own model again after the calls
        results[f"{job.stem}.rope_encode_restored"] = torch.tensor(restored)
        dit = base.model.diffusion_model
        own = dit.rope_encode

        def others_patch(*args, **kwargs):  # another pack's patch on the same model instance
            return own(*args, **kwargs)

        dit.rope_encode = others_patch
        sampled_output(base, tensors, settings["config"]["text_len"], settings["memory_size"], settings["placement"])
        results[f"{job.stem}.others_rope_patch_kept"] = torch.tensor(vars(dit).get("rope_encode") is others_patch)
        del dit.rope_encode
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
