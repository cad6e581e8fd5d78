"""In ComfyUI: StoryMem Conditioning for each job in JOB_DIR, sampled one step by KSampler on a tiny Wan2.2
I2V model; writes what reached the model (c_concat of every model call) to JOB_DIR/<job>.out.safetensors.

A job is <job>.json (length, width, height, mode, fix_mem) + <job>.safetensors (vae.* weights,
memory_images uint8 [M, H, W, 3], previous_frames uint8 [N, H, W, 3] when the mode needs them).
"""

import json
import sys
from pathlib import Path

import in_host

classes = in_host.start()

import comfy.sd  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from nodes import KSampler  # noqa: E402  (ComfyUI's)
from storymem_core import tiny_models  # noqa: E402
from storymem_core.memory import MemoryBank  # noqa: E402


def tiny_i2v_model():
    state, _ = tiny_models._dit(36, 1, tiny_models.CORE_DIT)
    return comfy.sd.load_diffusion_model_state_dict(state, model_options={"dtype": torch.float32})


def capture(model, positive, negative, latent) -> torch.Tensor:
    seen = []

    def record(apply_model, args):
        seen.append(args["c"]["c_concat"].detach().cpu().clone())
        return apply_model(args["input"], args["timestep"], **args["c"])

    patched = model.clone()
    patched.set_model_unet_function_wrapper(record)
    KSampler().sample(patched, 0, 1, 2.0, "euler", "simple", positive, negative, latent)
    return torch.cat(seen)  # cond and uncond rows of every call


job_dir = Path(sys.argv[1])
model = tiny_i2v_model()
node = classes["StoryMemConditioning"]()
for job in sorted(job_dir.glob("*.json")):
    settings = json.loads(job.read_text())
    tensors = load_file(str(job.with_suffix(".safetensors")))
    vae = comfy.sd.VAE(sd={k.removeprefix("vae."): v for k, v in tensors.items() if k.startswith("vae.")})
    memory_images = tensors["memory_images"]
    bank = MemoryBank.from_images(memory_images, max_size=len(memory_images), fixed=0)
    context = torch.randn(1, 8, 4096, generator=torch.Generator().manual_seed(0))
    previous = tensors["previous_frames"].float().div(255) if "previous_frames" in tensors else None
    positive, negative, latent, memory_latents, given = node.condition(
        [[context, {}]], [[context.neg(), {}]], vae, bank, cut=settings["mode"] == "m2v", mode=settings["mode"],
        width=settings["width"], height=settings["height"], length=settings["length"], batch_size=1,
        previous_frames=previous, fix_mem=settings["fix_mem"])
    c_concat = capture(model, positive, negative, latent)
    save_file({"c_concat": c_concat, "latent": latent["samples"], "counts": torch.tensor([memory_latents, given])},
              str(job.with_suffix(".out.safetensors")))
    print(f"{job.stem}: {c_concat.shape[0]} conditioned rows captured")
