"""Loader nodes: Wan2.2 expert pair, StoryMem and other LoRAs, umT5, VAE, keyframe encoder.

Files come from ComfyUI's model folders; the model size is read from each file (storymem_core/weights/).
Weights are loaded onto the offload device (CPU); shots move what they need to the GPU.
"""

from __future__ import annotations

import torch

from storymem_core.choices import ExpertKind, Noise, Offload, Quality, WeightDtype
from storymem_core.expert_pair import DTYPES, auto_dtype, load_expert_pair
from storymem_core.lora import apply_loras, load_lora
from storymem_core.presets import find_lora_names, preset_loras
from storymem_core.shot import shot_tokens
from storymem_core.weights.loading import load_text_encoder, load_vae
from storymem_core.weights.scorer_files import load_aesthetic_head, load_hpsv3, load_keyframe_encoder

from . import host
from .inputs import model_file
from .types import KEYFRAME_ENCODER, MODEL, TEXT_ENCODER, VAE, KeyframeModel, LoraSpec, TextModel, WanExperts

CATEGORY = "StoryMem/loaders"
# an 832x480, 81-frame shot with 10 memory frames: what "auto" offload plans for
PLANNED_TOKENS = shot_tokens(10, 81, 832 * 480)
NO_AESTHETIC_HEAD = "none"
AESTHETIC_HEAD = "sa_0_4_vit_b_32_linear.pth"
BOTH_EXPERTS = "both"


class LoadWanExperts:
    DESCRIPTION = ("Loads the Wan2.2 A14B high-noise and low-noise experts: I2V experts (+ the StoryMem LoRA) for "
                   "memory shots, T2V experts for a text-only first shot.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "high_noise_model": model_file("diffusion_models",
                                           "High-noise expert, e.g. wan2.2_i2v_high_noise_14B_fp8_scaled"),
            "low_noise_model": model_file("diffusion_models",
                                          "Low-noise expert of the same pair, e.g. "
                                          "wan2.2_i2v_low_noise_14B_fp8_scaled"),
            "weight_dtype": (WeightDtype.names(),
                             {"default": WeightDtype.AUTO,
                              "tooltip": "auto: fp8 files stay fp8 on a GPU, others run in bf16 (fp32 on CPU)."}),
            "offload": (Offload.names(),
                        {"default": Offload.AUTO,
                         "tooltip": "GPU memory plan: none (both experts resident), experts (one at a time), blocks "
                                    "(stream blocks from RAM, for small GPUs), auto (pick from free memory)."}),
            "compile": ("BOOLEAN",
                        {"default": False,
                         "tooltip": "torch.compile the DiT blocks on a GPU: about 25% faster steps after a one-time "
                                    "compile of about 20 s per expert (needs Triton)."}),
        }}

    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The expert pair, to a LoRA loader or a shot node.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, high_noise_model: str, low_noise_model: str, weight_dtype: str, offload: str,
             compile: bool = False) -> tuple:
        device = host.device()
        high, low, placement = load_expert_pair(
            host.model_path("diffusion_models", high_noise_model), host.model_path("diffusion_models", low_noise_model),
            weight_dtype, offload, compile, device, host.free_memory(device), PLANNED_TOKENS,
            on_progress=host.ProgressSteps(100, "loading the Wan experts"),
        )
        name = f"{high_noise_model} + {low_noise_model}"
        return (WanExperts(high, low, high.config.model_type, name, placement),)


def _read_lora(name: str, strength: float, module: torch.nn.Module, strict: bool = True):
    """Read a LoRA and check now, not at the first shot, that it fits the expert (hooked and removed at once)."""
    weights = load_lora(host.model_path("loras", name), strength)
    apply_loras(getattr(module, "dit", module), [weights], mode="hook", strict=strict).remove()
    return weights


def with_preset_loras(model: WanExperts, preset: str) -> WanExperts:
    """The experts with the preset's speed LoRAs (found in the LoRA folder by their published names) added; with
    preset none, as given. The preset's sampler settings are the engine's (`presets.sampler_settings`)."""
    loras = preset_loras(preset, model.kind)
    if loras is None:
        return model
    high, low = find_lora_names(host.model_names("loras"), loras)
    # entries for layers Wan2.2 lacks are skipped (and logged), as for any speed LoRA
    weights = {expert: _read_lora(name, 1.0, getattr(model, expert), strict=False)
               for expert, name in zip(Noise, (high, low))}
    speed = LoraSpec(f"{high} + {low}", 1.0, weights, strict=False)
    return model.with_lora(speed)


class LoadStoryMemLora:
    DESCRIPTION = ("Adds the StoryMem M2V LoRA pair (backbone_high_noise / backbone_low_noise) to Wan2.2 I2V experts: "
                   "what makes them memory-conditioned.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "Wan2.2 I2V-A14B experts."}),
            "lora_high_noise": model_file("loras",
                                          "StoryMem LoRA for the high-noise expert, e.g. "
                                          "StoryMem/Wan2.2-MI2V-A14B/backbone_high_noise.pth"),
            "lora_low_noise": model_file("loras",
                                         "StoryMem LoRA for the low-noise expert, e.g. "
                                         "StoryMem/Wan2.2-MI2V-A14B/backbone_low_noise.pth"),
            "strength": ("FLOAT",
                         {"default": 1.0, "min": -4.0, "max": 4.0, "step": 0.05,
                          "tooltip": "LoRA strength (1 as trained)."}),
        }}

    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The experts with the StoryMem LoRA applied while sampling.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, model: WanExperts, lora_high_noise: str, lora_low_noise: str, strength: float) -> tuple:
        model.require(ExpertKind.I2V, "The StoryMem LoRA")
        weights = {Noise.HIGH: _read_lora(lora_high_noise, strength, model.high),
                   Noise.LOW: _read_lora(lora_low_noise, strength, model.low)}
        return (model.with_lora(LoraSpec(f"{lora_high_noise} + {lora_low_noise}", strength, weights)),)


class AddWanLora:
    DESCRIPTION = "Adds any Wan2.2 LoRA (style, character, speed-up) to one or both experts; chain several."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "Wan2.2 experts (with or without other LoRAs)."}),
            "lora": model_file("loras", "A LoRA made for Wan2.2 A14B"),
            "strength": ("FLOAT", {"default": 1.0, "min": -4.0, "max": 4.0, "step": 0.05, "tooltip": "LoRA strength."}),
            "experts": ([BOTH_EXPERTS, *Noise.names()],
                        {"default": BOTH_EXPERTS, "tooltip": "Which expert(s) take this LoRA."}),
        }}

    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The experts with this LoRA added.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, model: WanExperts, lora: str, strength: float, experts: str) -> tuple:
        targets = tuple(Noise) if experts == BOTH_EXPERTS else (experts,)
        # entries for layers Wan2.2 lacks (a Wan2.1 speed LoRA's image cross-attention) are logged and skipped, as
        # ComfyUI does
        weights = {expert: _read_lora(lora, strength, getattr(model, expert), strict=False) for expert in targets}
        return (model.with_lora(LoraSpec(lora, strength, weights, strict=False)),)


class LoadTextEncoder:
    DESCRIPTION = ("Loads the umT5-xxl text encoder Wan2.2 uses; ComfyUI's files carry their tokenizer, otherwise "
                   "spiece.model must sit beside the file.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_encoder": model_file("text_encoders", "umT5-xxl, e.g. umt5_xxl_fp8_e4m3fn_scaled or umt5_xxl_fp16"),
            "weight_dtype": ([WeightDtype.AUTO, *DTYPES],
                             {"default": WeightDtype.AUTO, "tooltip": "auto: bf16 on a GPU, fp32 on CPU."}),
        }}

    RETURN_TYPES = (TEXT_ENCODER,)
    RETURN_NAMES = ("text_encoder",)
    OUTPUT_TOOLTIPS = ("Turns shot prompts into the experts' text context.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, text_encoder: str, weight_dtype: str) -> tuple:
        dtype = DTYPES.get(weight_dtype, auto_dtype(host.device()))
        encoder = load_text_encoder(host.model_path("text_encoders", text_encoder), dtype)
        return (TextModel(encoder, text_encoder),)


class LoadVAE:
    DESCRIPTION = "Loads the Wan2.1 VAE (the one the Wan2.2 A14B experts use)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": model_file("vae", "The Wan2.1 VAE, e.g. wan_2.1_vae"),
            "weight_dtype": ([WeightDtype.FP32, WeightDtype.BF16],
                             {"default": WeightDtype.FP32, "tooltip": "fp32 as in Wan2.2; bf16 halves its memory."}),
        }}

    RETURN_TYPES = (VAE,)
    RETURN_NAMES = ("vae",)
    OUTPUT_TOOLTIPS = ("Encodes memory keyframes and decodes shots.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, vae: str, weight_dtype: str) -> tuple:
        return (load_vae(host.model_path("vae", vae), DTYPES[weight_dtype]),)


class LoadKeyframeEncoder:
    DESCRIPTION = ("Loads the CLIP image encoder that picks each shot's keyframes (OpenAI ViT-B/32 in open_clip "
                   "format), and optionally an aesthetic head as quality filter.")

    @classmethod
    def INPUT_TYPES(cls):
        heads = [NO_AESTHETIC_HEAD, *host.model_names("clip_vision")]
        return {"required": {
            "clip_model": model_file("clip_vision",
                                     "open_clip CLIP weights, e.g. open_clip_model.safetensors of "
                                     "timm/vit_base_patch32_clip_224.openai"),
            "open_clip_name": ("STRING",
                               {"default": "ViT-B-32-quickgelu",
                                "tooltip": "open_clip model name the weights belong to."}),
            "aesthetic_head": (heads, {
                "default": AESTHETIC_HEAD if AESTHETIC_HEAD in heads else NO_AESTHETIC_HEAD,
                "tooltip": "Quality filter: frames scoring low are not kept as keyframes, as in StoryMem. A LAION "
                           f"aesthetic head ({AESTHETIC_HEAD}, "
                           "github.com/LAION-AI/aesthetic-predictor), or the paper's HPSv3.safetensors (needs pip "
                           "install hpsv3); none turns it off."}),
        }}

    RETURN_TYPES = (KEYFRAME_ENCODER,)
    RETURN_NAMES = ("keyframe_encoder",)
    OUTPUT_TOOLTIPS = ("Chooses the keyframes each shot adds to the memory.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, clip_model: str, open_clip_name: str, aesthetic_head: str) -> tuple:
        encoder = load_keyframe_encoder(host.model_path("clip_vision", clip_model), open_clip_name, host.device())
        scorer = None
        if aesthetic_head != NO_AESTHETIC_HEAD:
            path = host.model_path("clip_vision", aesthetic_head)
            # the paper's HPSv3 reward model when chosen (needs `pip install hpsv3`), else a LAION head on the CLIP
            # embeddings
            if Quality.HPSV3 in aesthetic_head.lower():
                scorer = load_hpsv3(path, host.device())
            else:
                scorer = load_aesthetic_head(path)
                scorer.check_fits(encoder)
        return (KeyframeModel(encoder, clip_model, scorer),)


NODE_CLASS_MAPPINGS = {
    "StoryMemLoadExperts": LoadWanExperts,
    "StoryMemLoadLora": LoadStoryMemLora,
    "StoryMemAddLora": AddWanLora,
    "StoryMemLoadTextEncoder": LoadTextEncoder,
    "StoryMemLoadVAE": LoadVAE,
    "StoryMemLoadKeyframeEncoder": LoadKeyframeEncoder,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "StoryMemLoadExperts": "Load Wan2.2 Experts",
    "StoryMemLoadLora": "Load StoryMem LoRA",
    "StoryMemAddLora": "Add Wan LoRA",
    "StoryMemLoadTextEncoder": "Load umT5 Text Encoder",
    "StoryMemLoadVAE": "Load Wan VAE",
    "StoryMemLoadKeyframeEncoder": "Load Keyframe Encoder",
}
