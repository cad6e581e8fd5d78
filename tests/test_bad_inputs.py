"""The bad-input matrix: each row is an input a user can give, the StoryMemError it must raise, a fragment of
its message, and the promise that nothing changed: every file under the models and output folders is
byte-identical with the same mtime, and every input value is as it was.

Rows run through the nodes on the standalone host (what a ComfyUI user reaches) or the engine entry a CLI user
reaches. Adding a case is adding a row; `docs/reliability.md` counts them.
"""

from __future__ import annotations

import builtins
import json
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from helpers import (
    BAD_SCRIPTS,
    SHOT,
    VALID,
    call,
    files_under,
    image_batch,
    models,
    reference_bank,
    runner_arguments,
    same,
    snapshot,
)
from safetensors.torch import load_file, save_file

from nodes import host
from storymem_core import tiny_models as tiny
from storymem_core.bank_files import BANK_FILE, save_bank
from storymem_core.errors import (
    CheckpointError,
    ConditioningError,
    MemoryBankError,
    StoryMemError,
    StoryScriptError,
)
from storymem_core.memory import MemoryBank
from storymem_core.story import loads_story

SCRIPT = json.dumps(VALID)


@dataclass(frozen=True)
class Row:
    """`prepare(pack)` writes the bad files it needs and returns (action, input values); the action must raise."""

    id: str
    prepare: Callable
    error: type[StoryMemError]
    fragment: str


def node(name: str, **fixed) -> Callable:
    """A row action running node `name` with the prepared inputs (and `fixed` ones that need no pack)."""
    return lambda **inputs: call(name, **fixed, **inputs)


class Payload:
    """Unpickling this creates the file `target`: proof that a loader ran code."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return builtins.open, (self.target, "w")


def payload_target(pack) -> Path:
    return pack.root / "models" / "payload_ran.txt"


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------ story scripts


def script_file(name: str, data: bytes) -> Callable:
    def prepare(pack):
        write(pack.root / "models" / "storymem" / "stories" / f"{name}.json", data)
        return node("StoryMemStoryScript"), dict(script_file=f"stories/{name}.json", script="")
    return prepare


def script_text(text: str) -> Callable:
    return lambda pack: (loads_story, dict(text=text))


STORY_ROWS = [
    Row(f"story-file-{name}", script_file(name, text.encode()), StoryScriptError, fragment)
    for name, (text, fragment) in BAD_SCRIPTS.items()
] + [
    Row("story-text-nested-too-deep", script_text("[" * 100_000), StoryScriptError, "nested too deeply"),
    Row(
        "story-text-integer-of-5000-digits",
        script_text('{"story_overview": "x", "scenes": [{"scene_num": ' + "9" * 5000 + "}]}"),
        StoryScriptError,
        "cannot be read (Exceeds the limit",
    ),
    Row(
        "story-file-not-utf8",
        script_file("latin1", '{"story_overview": "café"}'.encode("latin-1")),
        StoryScriptError,
        "not UTF-8",
    ),
    Row("story-file-binary", script_file("binary", bytes(range(256))), StoryScriptError, "not UTF-8"),
    Row(
        "story-node-text-box-malformed",
        lambda pack: (node("StoryMemStoryScript"), dict(script_file="(script text below)", script="{'a': 1}")),
        StoryScriptError,
        "only double quotes",
    ),
    Row(
        "story-node-file-outside-folder",
        lambda pack: (node("StoryMemStoryScript"), dict(script_file="../models/x.json", script="")),
        StoryScriptError,
        "not a path",
    ),
    Row(
        "story-shot-number-past-the-end",
        lambda pack: (node("StoryMemStoryShot", story=loads_story(SCRIPT)), dict(shot_number=4)),
        StoryScriptError,
        "has shots 1 to 3",
    ),
]

# ------------------------------------------------------------------ node inputs


def shot(pack, **overrides):
    """A memory shot's inputs, with `overrides`."""
    return node("StoryMemShot"), dict(
        model=pack.m2v,
        **models(pack),
        memory=reference_bank(),
        prompt="the fox",
        cut=True,
        mode="auto-mi2v",
        seed=1,
        cfg=3.5,
        **SHOT,
    ) | overrides


def first(pack, **overrides):
    return node("StoryMemFirstShot"), dict(
        model=pack.t2v, **models(pack), memory=MemoryBank(), prompt="a fox", seed=0, cfg_high=4.0, cfg_low=3.0, **SHOT
    ) | overrides


def runner(pack, **overrides):
    arguments = {"output_folder": "runner-bad"} | overrides
    return node("StoryMemStoryRunner"), runner_arguments(pack, loads_story(SCRIPT), **arguments)


NODE_ROWS = [
    Row("shot-frames-6-not-4n+1", lambda pack: shot(pack, frames=6), ConditioningError, "use 5 or 9"),
    Row("shot-frames-0", lambda pack: shot(pack, frames=0), ConditioningError, "not of the form 4n+1"),
    Row("first-shot-frames-8-not-4n+1", lambda pack: first(pack, frames=8), ConditioningError, "use 5 or 9"),
    Row("runner-frames-7-not-4n+1", lambda pack: runner(pack, frames=7), ConditioningError, "not of the form 4n+1"),
    Row(
        "shot-width-40-not-divisible-by-16",
        lambda pack: shot(pack, width=40),
        ConditioningError,
        "40x32 is not divisible by 16",
    ),
    Row("first-shot-height-24", lambda pack: first(pack, height=24), ConditioningError, "32x24 is not divisible by 16"),
    Row(
        "first-shot-width-0",
        lambda pack: first(pack, width=0),
        ConditioningError,
        "0x32 is not divisible by 16 (or not positive)",
    ),
    Row("runner-size-40x32", lambda pack: runner(pack, width=40), ConditioningError, "40x32 is not divisible by 16"),
    Row(
        "shot-empty-memory-bank-m2v",
        lambda pack: shot(pack, memory=MemoryBank()),
        ConditioningError,
        "memory bank is empty",
    ),
    Row(
        "runner-mr2v-without-references",
        lambda pack: runner(pack, first_shot="mr2v", output_folder="runner-bad-mr2v"),
        StoryMemError,
        "reference_images is not connected: connect a Load Image node",
    ),
    Row(
        "runner-t2v-without-t2v-model",
        lambda pack: runner(pack, t2v_model=None),
        StoryMemError,
        "t2v_model is not connected",
    ),
    Row(
        "runner-from-shot-past-the-end",
        lambda pack: runner(pack, from_shot=9),
        StoryMemError,
        "from_shot 9 is not a shot",
    ),
    Row(
        "runner-fixed-above-max",
        lambda pack: runner(pack, max_size=2, fixed=3),
        StoryMemError,
        "between 0 and max memory",
    ),
    Row(
        "shot-continuation-without-previous-frames",
        lambda pack: shot(pack, cut=False),
        ConditioningError,
        "previous_frames is not connected",
    ),
    Row(
        "shot-mm2v-with-3-previous-frames",
        lambda pack: shot(pack, cut=False, mode="auto-mm2v", frames=9, previous_frames=image_batch(3)),
        ConditioningError,
        "needs exactly 5 motion frames, got 3",
    ),
    Row("shot-empty-prompt", lambda pack: shot(pack, prompt=" \n"), StoryMemError, "prompt is empty"),
    Row(
        "shot-given-t2v-experts",
        lambda pack: shot(pack, model=pack.t2v),
        StoryMemError,
        "needs the Wan2.2 I2V-A14B experts",
    ),
    Row(
        "first-shot-given-i2v-experts",
        lambda pack: first(pack, model=pack.m2v),
        StoryMemError,
        "needs the Wan2.2 T2V-A14B experts",
    ),
    Row(
        "bank-fixed-above-max-size",
        lambda pack: (node("StoryMemEmptyBank"), dict(max_size=2, fixed=3)),
        MemoryBankError,
        "between 0 and max_size",
    ),
    Row(
        "bank-from-rgba-images",
        lambda pack: (
            node("StoryMemBankFromImages"),
            dict(images=torch.rand(2, 32, 32, 4), width=32, height=32, max_size=4, fixed=1),
        ),
        ConditioningError,
        "RGB, no alpha",
    ),
    Row(
        "bank-edit-index-past-the-end",
        lambda pack: (node("StoryMemEditBank"), dict(memory=reference_bank(), action="pin", index=5)),
        MemoryBankError,
        "keyframe 5 does not exist",
    ),
    Row(
        "combine-shots-of-two-sizes",
        lambda pack: (
            node("StoryMemCombineShots"),
            dict(
                shot_1=image_batch(2),
                shot_2=image_batch(2, (16, 16)),
                fps=8,
                save_video=True,
                filename_prefix="bad/film",
            ),
        ),
        ConditioningError,
        "every shot of a film must have one size",
    ),
]

# ------------------------------------------------------------------ file names in save nodes


def outside(pack) -> Path:
    """An absolute path beside the pack's folders: a save node must never write there."""
    return pack.root.parent / f"{pack.root.name}-outside"


def saved_bank(pack, name: str) -> None:
    save_bank(reference_bank(), host.save_dir() / name)


PATH_ROWS = [
    Row(
        "save-bank-name-dotdot",
        lambda pack: (node("StoryMemSaveBank"), dict(memory=reference_bank(), name="../outside")),
        MemoryBankError,
        "relative folder name inside the output folder",
    ),
    Row(
        "save-bank-name-nested-dotdot",
        lambda pack: (node("StoryMemSaveBank"), dict(memory=reference_bank(), name="banks/../../../outside")),
        MemoryBankError,
        "relative folder name",
    ),
    Row(
        "save-bank-name-absolute",
        lambda pack: (node("StoryMemSaveBank"), dict(memory=reference_bank(), name=str(outside(pack) / "bank"))),
        MemoryBankError,
        "relative folder name",
    ),
    Row(
        "save-bank-name-empty",
        lambda pack: (node("StoryMemSaveBank"), dict(memory=reference_bank(), name="  ")),
        MemoryBankError,
        "bank name is empty",
    ),
    Row(
        "save-bank-name-dot-is-the-storymem-folder",
        lambda pack: (
            saved_bank(pack, "banks/kept"),
            (node("StoryMemSaveBank"), dict(memory=reference_bank(), name=".")),
        )[1],
        MemoryBankError,
        "not a memory bank that may be replaced",
    ),
    Row(
        "save-bank-name-a-folder-of-banks",
        lambda pack: (
            saved_bank(pack, "banks/kept"),
            (node("StoryMemSaveBank"), dict(memory=reference_bank(), name="banks")),
        )[1],
        MemoryBankError,
        "not a memory bank that may be replaced",
    ),
    Row(
        "combine-prefix-dotdot",
        lambda pack: (
            node("StoryMemCombineShots"),
            dict(shot_1=image_batch(2), fps=8, save_video=True, filename_prefix="../film"),
        ),
        ConditioningError,
        "filename_prefix '../film' must be a relative folder name",
    ),
    Row(
        "combine-prefix-absolute",
        lambda pack: (
            node("StoryMemCombineShots"),
            dict(shot_1=image_batch(2), fps=8, save_video=True, filename_prefix=str(outside(pack) / "film")),
        ),
        ConditioningError,
        "inside the output folder",
    ),
    Row(
        "runner-output-folder-dotdot",
        lambda pack: runner(pack, output_folder="stories/../../x"),
        StoryMemError,
        "output_folder 'stories/../../x'",
    ),
    Row(
        "runner-output-folder-absolute",
        lambda pack: runner(pack, output_folder=str(outside(pack))),
        StoryMemError,
        "inside the output folder",
    ),
    Row(
        "load-bank-name-dotdot",
        lambda pack: (node("StoryMemLoadBank"), dict(bank="../models")),
        MemoryBankError,
        "not a path",
    ),
]

# ------------------------------------------------------------------ model files


def model_copy(pack, source: str, folder: str, name: str, cut: int | None = None) -> str:
    data = (pack.root / "models" / source).read_bytes()
    write(pack.root / "models" / folder / name, data if cut is None else data[:cut])
    return name


def vae_loader(name: str) -> tuple:
    return node("StoryMemLoadVAE"), dict(vae=name, weight_dtype="fp32")


def experts_loader(high: str, low: str = tiny.I2V_LOW) -> tuple:
    return node("StoryMemLoadExperts"), dict(
        high_noise_model=high, low_noise_model=low, weight_dtype="fp32", offload="none"
    )


def lora_for_another_model(pack, name: str) -> str:
    """A ComfyUI LoRA shaped for a DiT 48 wide (ours is 32): the names match, the shapes do not."""
    tensors = {
        "diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(2, 48),
        "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(48, 2),
    }
    save_file(tensors, str(write(pack.root / "models" / "loras" / name, b"")))
    return name


def lora_for_another_architecture(pack, name: str) -> str:
    """A kohya SD-style LoRA: LoRA keys of modules a Wan DiT does not have."""
    tensors = {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 32),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 2),
    }
    save_file(tensors, str(write(pack.root / "models" / "loras" / name, b"")))
    return name


def storymem_lora_for_another_model(pack, name: str) -> str:
    torch.save(
        {
            "base_model.model.blocks.0.ffn.0.lora_A.weight": torch.zeros(2, 48),
            "base_model.model.blocks.0.ffn.0.lora_B.weight": torch.zeros(64, 2),
        },
        write(pack.root / "models" / "loras" / name, b""),
    )
    return name


def pickle_payload(pack, folder: str, name: str, form: str) -> str:
    """A checkpoint whose unpickling would create payload_target(pack): torch's zip format, its legacy format, or a
    bare pickle."""
    path = write(pack.root / "models" / folder / name, b"")
    state = {
        "base_model.model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(2, 32),
        "payload": Payload(payload_target(pack)),
    }
    if form == "pickle":
        path.write_bytes(pickle.dumps(state, protocol=2))
    else:
        torch.save(state, path, _use_new_zipfile_serialization=form == "zip")
    return name


def lora_pair(high: str, low: str = tiny.STORYMEM_LORA_LOW) -> Callable:
    return lambda pack: (
        node("StoryMemLoadLora", model=pack.i2v),
        dict(lora_high_noise=high, lora_low_noise=low, strength=1.0),
    )


MODEL_ROWS = [
    Row(
        "vae-truncated-safetensors",
        lambda pack: vae_loader(model_copy(pack, f"vae/{tiny.VAE_FILE}", "vae", "cut.safetensors", cut=-200)),
        CheckpointError,
        "not a complete safetensors file",
    ),
    Row(
        "vae-safetensors-cut-inside-its-header",
        lambda pack: vae_loader(model_copy(pack, f"vae/{tiny.VAE_FILE}", "vae", "header.safetensors", cut=40)),
        CheckpointError,
        "not a complete safetensors file",
    ),
    Row(
        "vae-empty-file",
        lambda pack: vae_loader(write(pack.root / "models" / "vae" / "empty.safetensors", b"").name),
        CheckpointError,
        "not a complete safetensors file",
    ),
    Row(
        "vae-random-bytes",
        lambda pack: vae_loader(write(pack.root / "models" / "vae" / "noise.safetensors", bytes(range(256)) * 8).name),
        CheckpointError,
        "not a complete safetensors file",
    ),
    Row(
        "dit-given-a-vae",
        lambda pack: experts_loader(
            model_copy(pack, f"vae/{tiny.VAE_FILE}", "diffusion_models", "vae_as_dit.safetensors")
        ),
        CheckpointError,
        "is a Wan2.1 VAE, not a Wan2.2 A14B DiT expert",
    ),
    Row(
        "dit-given-a-lora",
        lambda pack: experts_loader(
            model_copy(pack, f"loras/{tiny.EXTRA_LORA}", "diffusion_models", "lora_as_dit.safetensors")
        ),
        CheckpointError,
        "is a LoRA, not a Wan2.2 A14B DiT expert",
    ),
    Row(
        "dit-given-the-text-encoder",
        lambda pack: experts_loader(
            model_copy(pack, f"text_encoders/{tiny.TEXT_ENCODER}", "diffusion_models", "t5_as_dit.safetensors")
        ),
        CheckpointError,
        "is a umT5-xxl text encoder, not a Wan2.2 A14B DiT expert",
    ),
    Row(
        "dit-truncated",
        lambda pack: experts_loader(
            model_copy(pack, f"diffusion_models/{tiny.I2V_HIGH}", "diffusion_models", "cut_dit.safetensors", cut=-64)
        ),
        CheckpointError,
        "not a complete safetensors file",
    ),
    Row(
        "dit-pair-of-two-kinds",
        lambda pack: experts_loader(tiny.I2V_HIGH, tiny.T2V_LOW),
        CheckpointError,
        "load two experts of one pair",
    ),
    Row(
        "dit-missing-file",
        lambda pack: experts_loader("absent.safetensors"),
        CheckpointError,
        "is not in the diffusion_models folder",
    ),
    Row(
        "vae-given-the-text-encoder",
        lambda pack: vae_loader(model_copy(pack, f"text_encoders/{tiny.TEXT_ENCODER}", "vae", "t5_as_vae.safetensors")),
        CheckpointError,
        "not a Wan2.1 VAE",
    ),
    Row(
        "text-encoder-given-a-dit",
        lambda pack: (
            node("StoryMemLoadTextEncoder"),
            dict(
                text_encoder=model_copy(
                    pack, f"diffusion_models/{tiny.I2V_LOW}", "text_encoders", "dit_as_t5.safetensors"
                ),
                weight_dtype="fp32",
            ),
        ),
        CheckpointError,
        "not a umT5",
    ),
    Row(
        "lora-for-another-base-model",
        lambda pack: (
            node("StoryMemAddLora", model=pack.m2v),
            dict(lora=lora_for_another_model(pack, "wan_48_lora.safetensors"), strength=1.0, experts="both"),
        ),
        CheckpointError,
        "does not fit this model: blocks.0.self_attn.q is [32, 32] but the LoRA gives [48, 48]",
    ),
    Row(
        "lora-for-another-architecture",
        lambda pack: (
            node("StoryMemAddLora", model=pack.m2v),
            dict(lora=lora_for_another_architecture(pack, "sd_lora.safetensors"), strength=1.0, experts="high"),
        ),
        CheckpointError,
        "match no layer of this model",
    ),
    Row(
        "storymem-lora-for-another-base-model",
        lambda pack: lora_pair(storymem_lora_for_another_model(pack, "other_base.pth"))(pack),
        CheckpointError,
        "does not fit this model",
    ),
    Row(
        "storymem-lora-truncated-pth",
        lambda pack: lora_pair(model_copy(pack, f"loras/{tiny.STORYMEM_LORA_HIGH}", "loras", "cut.pth", cut=300))(pack),
        CheckpointError,
        "not a readable PyTorch checkpoint",
    ),
    Row(
        "storymem-lora-given-a-dit",
        lambda pack: lora_pair(
            model_copy(pack, f"diffusion_models/{tiny.I2V_HIGH}", "loras", "dit_as_lora.safetensors")
        )(pack),
        CheckpointError,
        "but a LoRA was expected",
    ),
    Row(
        "lora-name-leaving-the-folder",
        lambda pack: lora_pair(f"../vae/{tiny.VAE_FILE}")(pack),
        CheckpointError,
        "not a path",
    ),
    Row(
        "pth-pickle-payload-zip",
        lambda pack: lora_pair(pickle_payload(pack, "loras", "payload.pth", "zip"))(pack),
        CheckpointError,
        "could run code",
    ),
    Row(
        "pth-pickle-payload-legacy-format",
        lambda pack: experts_loader(pickle_payload(pack, "diffusion_models", "payload.ckpt", "legacy")),
        CheckpointError,
        "could run code",
    ),
    Row(
        "bin-bare-pickle-payload",
        lambda pack: lora_pair(pickle_payload(pack, "loras", "payload.bin", "pickle"))(pack),
        CheckpointError,
        "could run code",
    ),
]

# ------------------------------------------------------------------ keyframe encoder files


def keyframe_loader(clip_model: str = tiny.CLIP_FILE, aesthetic_head: str = "none") -> tuple:
    return node("StoryMemLoadKeyframeEncoder"), dict(
        clip_model=clip_model, open_clip_name="ViT-B-32-quickgelu", aesthetic_head=aesthetic_head
    )


def clip_weights(pack) -> dict[str, torch.Tensor]:
    return load_file(str(pack.root / "models" / "clip_vision" / tiny.CLIP_FILE))


def aesthetic_weights(embed_dim: int = tiny.CLIP["embed_dim"]) -> dict[str, torch.Tensor]:
    """A LAION-style linear aesthetic head for `embed_dim`-d embeddings (default: the tiny CLIP's)."""
    generator = torch.Generator().manual_seed(3)
    return {"weight": torch.randn(1, embed_dim, generator=generator), "bias": torch.randn(1, generator=generator)}


def clip_vision_pth(pack, name: str, tensors: dict, legacy: bool = False, cut_in_half: bool = False) -> str:
    """`tensors` saved with torch.save into the clip_vision folder (legacy: torch's pre-zip format), maybe cut in
    half."""
    path = write(pack.root / "models" / "clip_vision" / name, b"")
    torch.save(tensors, path, _use_new_zipfile_serialization=not legacy)
    if cut_in_half:
        truncate(path, path.stat().st_size // 2)
    return name


KEYFRAME_ROWS = [
    Row(
        "clip-pickle-payload-zip",
        lambda pack: keyframe_loader(pickle_payload(pack, "clip_vision", "clip_payload.pth", "zip")),
        CheckpointError,
        "could run code",
    ),
    Row(
        "clip-pickle-payload-legacy-format",
        lambda pack: keyframe_loader(pickle_payload(pack, "clip_vision", "clip_payload_legacy.pth", "legacy")),
        CheckpointError,
        "could run code",
    ),
    Row(
        "clip-truncated-pth",
        lambda pack: keyframe_loader(clip_vision_pth(pack, "clip_cut.pth", clip_weights(pack), cut_in_half=True)),
        CheckpointError,
        "not a readable PyTorch checkpoint",
    ),
    Row(
        "aesthetic-head-pickle-payload-zip",
        lambda pack: keyframe_loader(aesthetic_head=pickle_payload(pack, "clip_vision", "head_payload.pth", "zip")),
        CheckpointError,
        "could run code",
    ),
    Row(
        "aesthetic-head-pickle-payload-legacy-format",
        lambda pack: keyframe_loader(
            aesthetic_head=pickle_payload(pack, "clip_vision", "head_payload_legacy.pth", "legacy")
        ),
        CheckpointError,
        "could run code",
    ),
    Row(
        "aesthetic-head-truncated-pth",
        lambda pack: keyframe_loader(
            aesthetic_head=clip_vision_pth(pack, "head_cut.pth", aesthetic_weights(), cut_in_half=True)
        ),
        CheckpointError,
        "not a readable PyTorch checkpoint",
    ),
    Row(
        "aesthetic-head-for-another-clip",
        lambda pack: keyframe_loader(aesthetic_head=clip_vision_pth(pack, "head_768.pth", aesthetic_weights(768))),
        CheckpointError,
        "expects 768-d CLIP embeddings but the encoder gives",
    ),
]

# ------------------------------------------------------------------ saved banks


def broken_bank(pack, name: str, damage: Callable[[Path], None]) -> tuple:
    folder = save_bank(reference_bank(3), host.save_dir() / "broken" / name)
    damage(folder)
    return node("StoryMemLoadBank"), dict(bank=f"broken/{name}")


def edit_manifest(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        manifest = json.loads((folder / BANK_FILE).read_text())
        change(manifest)
        (folder / BANK_FILE).write_text(json.dumps(manifest))

    return damage


def truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


BANK_ROWS = [
    Row(
        "bank-png-missing",
        lambda pack: broken_bank(pack, "missing", lambda f: (f / "keyframe_001.png").unlink()),
        MemoryBankError,
        "keyframe_001.png is missing",
    ),
    Row(
        "bank-png-corrupt",
        lambda pack: broken_bank(pack, "corrupt", lambda f: (f / "keyframe_002.png").write_bytes(b"\x89PNG garbage")),
        MemoryBankError,
        "keyframe_002.png cannot be read",
    ),
    Row(
        "bank-png-truncated",
        lambda pack: broken_bank(pack, "truncated", lambda f: truncate(f / "keyframe_000.png", 60)),
        MemoryBankError,
        "keyframe_000.png cannot be read",
    ),
    Row(
        "bank-png-replaced-by-a-folder",
        lambda pack: broken_bank(
            pack, "folder", lambda f: ((f / "keyframe_000.png").unlink(), (f / "keyframe_000.png").mkdir())
        ),
        MemoryBankError,
        "keyframe_000.png cannot be read",
    ),
    Row(
        "bank-json-malformed",
        lambda pack: broken_bank(pack, "json", lambda f: (f / BANK_FILE).write_text('{"keyframes": [')),
        MemoryBankError,
        "bank.json is not a valid memory bank file",
    ),
    Row(
        "bank-json-keyframes-not-a-list",
        lambda pack: broken_bank(pack, "notlist", edit_manifest(lambda m: m.update(keyframes=5))),
        MemoryBankError,
        "keyframes is not a list",
    ),
    Row(
        "bank-json-entry-without-file",
        lambda pack: broken_bank(pack, "nofile", edit_manifest(lambda m: m["keyframes"][0].pop("file"))),
        MemoryBankError,
        "invalid keyframe entry",
    ),
    Row(
        "bank-json-max-size-missing",
        lambda pack: broken_bank(pack, "nomax", edit_manifest(lambda m: m.pop("max_size"))),
        MemoryBankError,
        "not a valid memory bank file",
    ),
    Row(
        "bank-json-unknown-source",
        lambda pack: broken_bank(pack, "source", edit_manifest(lambda m: m["keyframes"][0].update(source="dream"))),
        MemoryBankError,
        "source 'dream' is unknown",
    ),
    Row(
        "bank-json-missing",
        lambda pack: broken_bank(pack, "nomanifest", lambda f: (f / BANK_FILE).unlink()),
        MemoryBankError,
        "does not exist",
    ),
]

ROWS = STORY_ROWS + NODE_ROWS + PATH_ROWS + MODEL_ROWS + KEYFRAME_ROWS + BANK_ROWS


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input_gives_one_clear_error_and_changes_nothing(pack, row):
    action, inputs = row.prepare(pack)
    values_before = {name: snapshot(value) for name, value in inputs.items()}
    files_before = files_under(pack.root)
    outside_before = outside(pack).exists()
    with pytest.raises(StoryMemError) as raised:
        action(**inputs)
    error = raised.value
    assert type(error) is row.error or (row.error is StoryMemError and isinstance(error, StoryMemError)), (
        f"{type(error).__name__}: {error}"
    )
    message = str(error)
    assert row.fragment in message, message
    assert message.rstrip().endswith(".") and "\nTraceback" not in message, message  # a sentence, not a dump
    assert files_under(pack.root) == files_before, "a refused input changed files on disk"
    assert outside(pack).exists() == outside_before, "a refused input wrote outside the output folder"
    assert same(values_before, {name: snapshot(value) for name, value in inputs.items()}), (
        "a refused input changed an input value"
    )
    assert not payload_target(pack).exists(), "a checkpoint ran code while being refused"


def test_every_row_has_its_own_id():
    ids = [row.id for row in ROWS]
    assert len(ids) == len(set(ids))


def test_legacy_format_aesthetic_head_loads(pack):
    weights = aesthetic_weights()
    name = clip_vision_pth(pack, "legacy_head.pth", weights, legacy=True)
    assert not zipfile.is_zipfile(pack.root / "models" / "clip_vision" / name)  # torch's pre-zip format: no mmap
    action, inputs = keyframe_loader(aesthetic_head=name)
    (keyframes,), _ = action(**inputs)
    head = keyframes.scorer.layers[0]
    assert torch.equal(head.weight, weights["weight"]) and torch.equal(head.bias, weights["bias"])
    frames = (image_batch(2) * 255).to(torch.uint8)
    assert keyframes.scorer.score(frames, keyframes.encoder.embed(frames)).shape == (2,)
