"""Tiny random-weight model files under the names ComfyUI users have, in a ComfyUI-style models folder
(for the demo and the tests: real weights cannot be shipped).

Every file loads through the same loaders as the real one: sizes travel in the safetensors metadata key
`storymem_config` (what `weights.loading` reads first), the umT5 file carries its tokenizer as the
uint8 tensor `spiece_model` like ComfyUI's files, and the StoryMem LoRA is a peft `.pth` like the
released `backbone_*_noise.pth`. Seeded: the same call writes the same bytes.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import sentencepiece
import torch
from safetensors.torch import save_file

from .files import atomic_write_path, save_image
from .presets import PRESET_LORA_ROLES
from .viclip import ViCLIP, ViCLIPConfig
from .wan.dit import I2V_IN_DIM, T2V_IN_DIM, DiTConfig, WanDiT, expert_kind
from .wan.t5 import T5Config, UMT5Encoder
from .wan.vae import VAEConfig, WanVAE
from .weights.configs import CONFIG_KEY

TEXT_DIM = 32
DIT = {"patch_size": [1, 2, 2], "text_len": 32, "dim": 32, "ffn_dim": 64, "freq_dim": 16, "text_dim": TEXT_DIM,
       "out_dim": 16, "num_heads": 2, "num_layers": 1}
T5 = {"vocab": 128, "dim": TEXT_DIM, "dim_attn": TEXT_DIM, "dim_ffn": 64, "num_heads": 2, "num_layers": 1,
      "num_buckets": 8}
VAE = {"dim": 8, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 1, "attn_scales": [],
       "temperal_downsample": [False, True, True]}
CLIP = {"embed_dim": 16, "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        # vocab_size: the vocabulary of open_clip's own tokenizer, which the text tower is read with
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
# sizes ComfyUI core can load too: it reads heads as dim // 128, freq_dim 256, text_dim 4096, the VAE's
# base width from its weights (num_res_blocks 2) and umT5 in the Hugging Face layout
CORE_DIT = {**DIT, "dim": 128, "ffn_dim": 256, "freq_dim": 256, "text_dim": 4096, "text_len": 512, "num_heads": 1}
CORE_VAE = {**VAE, "num_res_blocks": 2}
CORE_T5 = {"d_model": 4096, "d_kv": 16, "num_heads": 2, "d_ff": 64, "num_layers": 1, "vocab_size": 128,
           "relative_attention_num_buckets": 32}  # ComfyUI builds 32 buckets whatever the config says
LORA_RANK = 2
LORA_TARGETS = ("self_attn.q", "self_attn.v", "cross_attn.k", "ffn.0")

# file names as ComfyUI's Wan2.2 example workflows and the StoryMem release name them
I2V_HIGH = "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors"
I2V_LOW = "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors"
T2V_HIGH = "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"
T2V_LOW = "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"
STORYMEM_LORA_HIGH = "StoryMem/Wan2.2-MI2V-A14B/backbone_high_noise.pth"
STORYMEM_LORA_LOW = "StoryMem/Wan2.2-MI2V-A14B/backbone_low_noise.pth"
MM2V_LORA_HIGH = "StoryMem/Wan2.2-MM2V-A14B/backbone_high_noise.pth"  # the pair --mm2v stories take
MM2V_LORA_LOW = "StoryMem/Wan2.2-MM2V-A14B/backbone_low_noise.pth"
EXTRA_LORA = "wan2.2_style_lora.safetensors"
LIGHTX2V_HIGH = "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors"  # Comfy-Org's names of the 4-step pair
LIGHTX2V_LOW = "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors"
TEXT_ENCODER = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
VAE_FILE = "wan_2.1_vae.safetensors"
CLIP_FILE = "open_clip_model.safetensors"
AESTHETIC_FILE = "sa_0_4_vit_b_32_linear.pth"
# the paper's scorers (evaluate --paper), under their published names
VICLIP_FILE = "ViClip-InternVid-10M-FLT.pth"
PAPER_CLIP_FILE = "vit_large_patch14_clip_224.openai.safetensors"
PAPER_AESTHETIC_FILE = "sa_0_4_vit_l_14_linear.pth"
# ViCLIP's sizes are read from its shapes, heads as width // 64 (as for ViCLIP-L/14)
VICLIP = {"vision_width": 64, "vision_layers": 1, "vision_heads": 1, "patch_size": 32, "image_size": 224,
          "num_frames": 8, "embed_dim": 16, "text_width": 16, "text_layers": 1, "text_heads": 1,
          "context_length": 32, "vocab_size": 49408}
PAPER_CLIP = {"embed_dim": 16, "quick_gelu": True, "text_cfg": CLIP["text_cfg"],  # open_clip registers none without
              "vision_cfg": {"image_size": 224, "layers": 1, "width": 32, "patch_size": 32, "head_width": 16}}

# shot sizes small enough for a CPU test: 32x32 pixels, 5 frames (2 latent frames), 2 steps
TINY_SHOT = {"width": 32, "height": 32, "frames": 5, "steps": 2}

WORDS = ("a fox runs through snow near the old lighthouse while waves crash on rocks and a girl in a red coat "
         "walks the harbor at dawn under golden light as boats drift past quiet houses").split()


def _save(tensors: dict[str, torch.Tensor], path: Path, config: dict | None = None) -> None:
    metadata = None if config is None else {CONFIG_KEY: json.dumps(config)}
    with atomic_write_path(path) as temp:
        save_file({name: t.detach().contiguous() for name, t in tensors.items()}, str(temp), metadata=metadata)


def _save_pth(state: dict, path: Path) -> None:
    """A .pth as torch.save writes one (the released LoRAs and aesthetic heads are such files)."""
    with atomic_write_path(path) as temp:
        torch.save(state, temp)


def _aesthetic_head(seed: int, width: int) -> dict[str, torch.Tensor]:
    """A LAION-style linear head whose scores sit near 5, above the 4.0 quality threshold, as real frames' do."""
    weight = torch.randn(1, width, generator=torch.Generator().manual_seed(seed)) * 0.1
    return {"weight": weight, "bias": torch.tensor([5.0])}


def _dit(in_dim: int, seed: int, sizes: dict = DIT) -> tuple[dict[str, torch.Tensor], dict]:
    config = {**sizes, "in_dim": in_dim, "model_type": expert_kind(in_dim)}
    torch.manual_seed(seed)
    return WanDiT(DiTConfig.from_dict(config)).state_dict(), config


def spiece_model(vocab_size: int = 100) -> bytes:
    """A small unigram tokenizer with T5's special ids (pad 0, eos 1, unk 2, no bos)."""
    sentences = (" ".join(WORDS[(i * k) % len(WORDS)] for k in range(1, 8)) for i in range(300))
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=sentences, model_writer=model, vocab_size=vocab_size, hard_vocab_limit=False,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2,
    )
    return model.getvalue()


def _peft_lora(seed: int, sizes: dict = DIT) -> dict[str, torch.Tensor]:
    """StoryMem's layout: `base_model.model.<module>.lora_A/B.weight`, no alpha (rsLoRA with alpha = rank)."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for block in range(sizes["num_layers"]):
        for target in LORA_TARGETS:
            out_dim = sizes["ffn_dim"] if target == "ffn.0" else sizes["dim"]
            prefix = f"base_model.model.blocks.{block}.{target}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(LORA_RANK, sizes["dim"], generator=generator) * 0.1
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_dim, LORA_RANK, generator=generator) * 0.1
    return tensors


def _comfy_lora(seed: int, sizes: dict = DIT) -> dict[str, torch.Tensor]:
    """ComfyUI's layout: `diffusion_model.<module>.lora_down/up.weight` with `.alpha`."""
    peft = _peft_lora(seed, sizes)
    renamed = {}
    for name, tensor in peft.items():
        module = name.removeprefix("base_model.model.").rsplit(".lora_", 1)[0]
        part = "lora_down" if ".lora_A." in name else "lora_up"
        renamed[f"diffusion_model.{module}.{part}.weight"] = tensor
        renamed[f"diffusion_model.{module}.alpha"] = torch.tensor(float(LORA_RANK))
    return renamed


def _speed_lora(seed: int) -> dict[str, torch.Tensor]:
    """A distilled speed LoRA's layout (lightx2v): ComfyUI pairs with alpha, plus full deltas of a norm's weight and a
    bias."""
    tensors = _comfy_lora(seed)
    generator = torch.Generator().manual_seed(seed)
    for block in range(DIT["num_layers"]):
        prefix = f"diffusion_model.blocks.{block}"
        tensors[f"{prefix}.norm3.diff"] = torch.randn(DIT["dim"], generator=generator) * 0.1
        tensors[f"{prefix}.self_attn.o.diff_b"] = torch.randn(DIT["dim"], generator=generator) * 0.1
    return tensors


def write_speed_loras(models_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Tiny stand-ins for every preset's speed LoRAs, in `models_dir`/loras under their published names; role ->
    path."""
    written = {}
    for offset, (role, lora) in enumerate(PRESET_LORA_ROLES.items()):
        written[role] = Path(models_dir) / "loras" / lora.usual_name
        _save(_speed_lora(seed + 20 + offset), written[role])
    return written


def _clip(seed: int) -> dict[str, torch.Tensor]:
    """Both towers under open_clip's CLIP names, as timm's open_clip_model.safetensors holds them."""
    import open_clip

    torch.manual_seed(seed)
    visual = open_clip.model._build_vision_tower(CLIP["embed_dim"], CLIP["vision_cfg"], CLIP["quick_gelu"])
    text = open_clip.model._build_text_tower(CLIP["embed_dim"], CLIP["text_cfg"], CLIP["quick_gelu"])
    visual_state = {f"visual.{name}": t for name, t in _content_vision(visual.state_dict(), seed).items()}
    return visual_state | text.state_dict() | {"logit_scale": torch.tensor(4.6052)}  # log(100), CLIP's trained value


def _content_vision(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """The vision tower's weights chosen so that its embedding is a random projection of the image's pixels.

    At random init the class token dominates what the tower returns, so every image looks alike (cosine above
    keyframe selection's 0.9 cut) and no story's memory grows. Here the class token starts empty and only gathers:
    no class or position embedding, uniform attention (zero queries and keys), identity values and output, no MLP
    output. It ends as the mean of the layer-normed patch embeddings, random projections of the pixels (normalised
    by CLIP's mean and std), so different images give different embeddings and the same image the same one.
    """
    generator = torch.Generator().manual_seed(seed)
    width, embed_dim = state["proj"].shape
    patch = torch.randn(state["conv1.weight"].shape, generator=generator)
    chosen = {
        "conv1.weight": patch / patch[0].numel() ** 0.5,  # scaled by fan-in, as a linear layer is
        "class_embedding": torch.zeros(width),
        "positional_embedding": torch.zeros_like(state["positional_embedding"]),
        "proj": torch.randn(width, embed_dim, generator=generator) / width**0.5,
    }
    for layer in range(CLIP["vision_cfg"]["layers"]):
        block = f"transformer.resblocks.{layer}"
        chosen |= {
            f"{block}.attn.in_proj_weight": torch.cat([torch.zeros(2 * width, width), torch.eye(width)]),  # q, k, v
            f"{block}.attn.in_proj_bias": torch.zeros(3 * width),
            f"{block}.attn.out_proj.weight": torch.eye(width),
            f"{block}.attn.out_proj.bias": torch.zeros(width),
            f"{block}.mlp.c_proj.weight": torch.zeros_like(state[f"{block}.mlp.c_proj.weight"]),
            f"{block}.mlp.c_proj.bias": torch.zeros(width),
        }
    return state | chosen


def write_tiny_models(models_dir: str | Path, seed: int = 0, num_heads: int = DIT["num_heads"]) -> Path:
    """Write every model a StoryMem workflow loads into `models_dir`/<ComfyUI folder>/<usual name>.

    `num_heads` (dividing the width 32) sets the experts' attention heads, e.g. 4 to split them over 4 ranks."""
    root = Path(models_dir)
    experts = ((I2V_HIGH, I2V_IN_DIM), (I2V_LOW, I2V_IN_DIM), (T2V_HIGH, T2V_IN_DIM), (T2V_LOW, T2V_IN_DIM))
    for offset, (name, in_dim) in enumerate(experts, start=1):
        tensors, config = _dit(in_dim, seed + offset, {**DIT, "num_heads": num_heads})
        _save(tensors, root / "diffusion_models" / name, config)
    for name, offset in ((STORYMEM_LORA_HIGH, 5), (STORYMEM_LORA_LOW, 6), (MM2V_LORA_HIGH, 14), (MM2V_LORA_LOW, 15)):
        _save_pth(_peft_lora(seed + offset), root / "loras" / name)
    _save(_comfy_lora(seed + 7), root / "loras" / EXTRA_LORA)

    torch.manual_seed(seed + 8)
    t5 = UMT5Encoder(T5Config(**T5)).state_dict()
    t5["spiece_model"] = torch.frombuffer(bytearray(spiece_model()), dtype=torch.uint8)
    _save(t5, root / "text_encoders" / TEXT_ENCODER)  # sizes read from the shapes, as for real files

    torch.manual_seed(seed + 9)
    _save(WanVAE(VAEConfig.from_dict(VAE)).state_dict(), root / "vae" / VAE_FILE, VAE)
    _save(_clip(seed + 10), root / "clip_vision" / CLIP_FILE, CLIP)
    _save_pth(_aesthetic_head(seed + 11, CLIP["embed_dim"]), root / "clip_vision" / AESTHETIC_FILE)
    write_paper_scorers(root, seed + 30)
    return root


def write_paper_scorers(models_dir: str | Path, seed: int = 0) -> Path:
    """Tiny stand-ins of the paper's scorers in `models_dir`/clip_vision: ViCLIP as its published .pth wraps it
    (`{'model': state dict}`), OpenAI CLIP ViT-L/14 in open_clip's layout (its sizes stored) and the LAION head."""
    import open_clip

    folder = Path(models_dir) / "clip_vision"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    viclip = ViCLIP(ViCLIPConfig.from_dict(VICLIP))
    for parameter in viclip.parameters():  # its zero-initialised embeddings and projections must carry something
        if parameter.ndim > 1:
            torch.nn.init.normal_(parameter, std=0.02)
    _save_pth({"model": viclip.state_dict()}, folder / VICLIP_FILE)
    visual = open_clip.model._build_vision_tower(PAPER_CLIP["embed_dim"], PAPER_CLIP["vision_cfg"], True)
    _save({f"visual.{name}": t for name, t in visual.state_dict().items()}, folder / PAPER_CLIP_FILE, PAPER_CLIP)
    _save_pth(_aesthetic_head(seed + 1, PAPER_CLIP["embed_dim"]), folder / PAPER_AESTHETIC_FILE)
    return folder


def write_reference_images(folder: str | Path, count: int = 2, size: tuple[int, int] = (48, 32),
                           seed: int = 0) -> list[str]:
    """PNG images of smooth colour fields (width x height `size`) under the names the shipped MR2V workflow loads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    names = []
    for i in range(count):
        colours = torch.rand(1, 3, 2, 2, generator=generator)
        image = torch.nn.functional.interpolate(colours, size=(size[1], size[0]), mode="bilinear",
                                                align_corners=True)[0]
        name = f"storymem_reference_{i + 1}.png"
        save_image((image.permute(1, 2, 0) * 255).round().to(torch.uint8), folder / name)
        names.append(name)
    return names


def _core_umt5(seed: int) -> dict[str, torch.Tensor]:
    """A tiny umT5 encoder in the Hugging Face layout of ComfyUI's text-encoder files, tokenizer inside."""
    generator = torch.Generator().manual_seed(seed)
    c = CORE_T5
    inner = c["d_kv"] * c["num_heads"]
    shapes = {"shared.weight": (c["vocab_size"], c["d_model"]), "encoder.final_layer_norm.weight": (c["d_model"],)}
    for i in range(c["num_layers"]):
        block = f"encoder.block.{i}.layer"
        shapes |= {f"{block}.0.SelfAttention.{p}.weight": (inner, c["d_model"]) for p in "qkv"}
        shapes |= {f"{block}.0.SelfAttention.o.weight": (c["d_model"], inner),
                   f"{block}.0.SelfAttention.relative_attention_bias.weight": (c["relative_attention_num_buckets"],
                                                                               c["num_heads"]),
                   f"{block}.0.layer_norm.weight": (c["d_model"],), f"{block}.1.layer_norm.weight": (c["d_model"],),
                   f"{block}.1.DenseReluDense.wi_0.weight": (c["d_ff"], c["d_model"]),
                   f"{block}.1.DenseReluDense.wi_1.weight": (c["d_ff"], c["d_model"]),
                   f"{block}.1.DenseReluDense.wo.weight": (c["d_model"], c["d_ff"])}
    tensors = {name: (torch.randn(*shape, generator=generator) * 0.05 + (1.0 if "layer_norm" in name else 0.0))
               for name, shape in shapes.items()}
    tensors["spiece_model"] = torch.frombuffer(bytearray(spiece_model()), dtype=torch.uint8)
    # ComfyUI tells umT5-xxl from other T5s by the rows of block 23's wi_1 (10240); this unused stand-in says so
    tensors["encoder.block.23.layer.1.DenseReluDense.wi_1.weight"] = torch.zeros(10240, 1)
    return tensors


def write_core_models(models_dir: str | Path, seed: int = 0) -> Path:
    """Tiny models for ComfyUI's own loaders (UNETLoader, CLIPLoader type wan, VAELoader) under the usual
    names, with the StoryMem LoRA pair and the keyframe encoder; the DiT and VAE files load in our engine too."""
    root = Path(models_dir)
    for name, offset in ((I2V_HIGH, 1), (I2V_LOW, 2)):
        tensors, config = _dit(36, seed + offset, CORE_DIT)
        _save(tensors, root / "diffusion_models" / name, config)
    for name, offset in ((STORYMEM_LORA_HIGH, 5), (STORYMEM_LORA_LOW, 6)):
        _save_pth(_peft_lora(seed + offset, CORE_DIT), root / "loras" / name)
    for name, offset in ((LIGHTX2V_HIGH, 12), (LIGHTX2V_LOW, 13)):
        _save(_comfy_lora(seed + offset, CORE_DIT), root / "loras" / name)
    _save(_core_umt5(seed + 8), root / "text_encoders" / TEXT_ENCODER)
    torch.manual_seed(seed + 9)
    _save(WanVAE(VAEConfig.from_dict(CORE_VAE)).state_dict(), root / "vae" / VAE_FILE, CORE_VAE)
    _save(_clip(seed + 10), root / "clip_vision" / CLIP_FILE, CLIP)
    _save_pth(_aesthetic_head(seed + 11, CLIP["embed_dim"]), root / "clip_vision" / AESTHETIC_FILE)
    return root
