"""Files of the frame scorers (storymem_core.scorers): open_clip CLIP files (the vision tower for keyframe selection,
the text tower for story evaluation), LAION aesthetic heads and the HPSv3 checkpoint, read safely and checked
against the model they are for before any memory is taken. open_clip builds models by registered config name, so a
file storing its own config (tiny test models) has that config registered once. See docs/architecture.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..errors import CheckpointError
from ..files import scratch_folder
from ..safe_files import check_file
from ..scorers import (
    AESTHETIC_THRESHOLD,
    HPSV3_THRESHOLD,
    OPENAI_MEAN,
    OPENAI_STD,
    AestheticHead,
    HPSv3Scorer,
    OpenClipEncoder,
    OpenClipTextEncoder,
    VBenchClipEncoder,
    text_tower,
    vision_tower,
)
from ..viclip import ViCLIP, ViCLIPConfig, ViCLIPScorer
from .kinds import CLIP_VISION, KINDS, VICLIP
from .loading import stored_config
from .readers import SAFETENSORS_SUFFIXES, read_pth
from .shapes import fit_faults, linear_chain, model_shapes

DEFAULT_CLIP = "ViT-B-32-quickgelu"
PAPER_CLIP = "ViT-L-14-quickgelu"  # OpenAI CLIP ViT-L/14, under the LAION aesthetic head VBench uses
PAPER_CLIP_HINT = ("open_clip_model.safetensors of huggingface.co/timm/vit_large_patch14_clip_224.openai (OpenAI CLIP "
                   "ViT-L/14), saved as vit_large_patch14_clip_224.openai.safetensors")
VICLIP_HINT = "ViClip-InternVid-10M-FLT.pth from huggingface.co/OpenGVLab/VBench_Used_Models"
CLIP_FOLDER_HINT = "ComfyUI's models/clip_vision folder (or models/clip_vision under --models-dir)"
CLIP_DOWNLOAD_HINT = ("open_clip_model.safetensors from huggingface.co/timm/vit_base_patch32_clip_224.openai (OpenAI "
                      "CLIP ViT-B/32, as the reference uses)")

_registered_clip_configs: dict[str, str] = {}


def load_keyframe_encoder(path: str | os.PathLike, model_name: str = DEFAULT_CLIP, device: torch.device | str = "cpu",
                          batch_size: int = 32) -> OpenClipEncoder:
    """The vision tower of an open_clip CLIP file as an image encoder; a file storing an open_clip config (tiny test
    models) is built from that config, any other from `model_name`."""
    import open_clip

    config, state, path, model_name = _open_clip_weights(path, model_name)
    if any(k.startswith("visual.") for k in state):
        state = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
    visual = _loaded_tower(lambda device: vision_tower(config, device), state, path, model_name)
    preprocess = config.get("preprocess_cfg", {})
    mean = preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN)
    std = preprocess.get("std", open_clip.OPENAI_DATASET_STD)
    return OpenClipEncoder(visual.to(device), mean, std, batch_size)


def load_paper_image_encoder(path: str | os.PathLike, device: torch.device | str = "cpu",
                              batch_size: int = 32) -> VBenchClipEncoder:
    """OpenAI CLIP ViT-L/14's vision tower (an open_clip file), fed as VBench feeds it, for the paper's aesthetic."""
    config, state, path, model_name = _open_clip_weights(path, PAPER_CLIP, PAPER_CLIP_HINT)
    state = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")} or state
    visual = _loaded_tower(lambda device: vision_tower(config, device), state, path, model_name)
    return VBenchClipEncoder(visual.to(device), OPENAI_MEAN, OPENAI_STD, batch_size)


def load_viclip(path: str | os.PathLike, device: torch.device | str = "cpu") -> ViCLIPScorer:
    """ViCLIP from its published file (`{'model': state dict}` .pth, or a safetensors copy); sizes from a stored config
    (tiny test models) or from the shapes, compared on the meta device before memory is taken."""
    path = _require_file(path, "ViCLIP file", f"download {VICLIP_HINT} and put it in {CLIP_FOLDER_HINT}")
    state = _read_state_dict(path)
    shapes = {name: tuple(t.shape) for name, t in state.items()}
    if KINDS[VICLIP].anchors[0] not in shapes:
        raise CheckpointError(f"{path} is no ViCLIP file (it lacks {KINDS[VICLIP].anchors[0]}): use {VICLIP_HINT}.")
    stored = stored_config(path, VICLIP)
    try:
        config = ViCLIPConfig.from_dict(stored) if stored is not None else ViCLIPConfig.from_shapes(shapes)
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"{path} lacks or misshapes ViCLIP's {error}: download {VICLIP_HINT} again.") from None
    with torch.device("meta"):
        faults = fit_faults(model_shapes(ViCLIP(config)), shapes)
    if faults:
        raise CheckpointError(f"{path} does not fit ViCLIP ({'; '.join(faults)}): use {VICLIP_HINT}.")
    model = ViCLIP(config)
    model.load_state_dict(state)
    return ViCLIPScorer(model.to(device))


def load_clip_text_encoder(path: str | os.PathLike, model_name: str = DEFAULT_CLIP,
                           device: torch.device | str = "cpu") -> OpenClipTextEncoder:
    """The text tower of the same CLIP file (prompt following in story evaluation), built as the vision tower is."""
    import open_clip

    config, state, path, model_name = _open_clip_weights(path, model_name)
    text_state = {k: v for k, v in state.items() if not k.startswith("visual.") and k != "logit_scale"}
    if "token_embedding.weight" not in text_state:
        raise CheckpointError(f"{path} holds only CLIP's image tower, but prompt following needs its text tower too: "
                              f"use {CLIP_DOWNLOAD_HINT}.")
    text = _loaded_tower(lambda device: text_tower(config, device), text_state, path, model_name)
    return OpenClipTextEncoder(text.to(device), open_clip.get_tokenizer(model_name))


def load_aesthetic_head(path: str | os.PathLike, threshold: float = AESTHETIC_THRESHOLD,
                        published: str = "sa_0_4_vit_b_32_linear.pth") -> AestheticHead:
    """A LAION aesthetic predictor file, either published layout (a linear head or the improved predictor's MLP);
    `published`: the file to name when it is missing."""
    path = _require_file(path, "aesthetic head",
                         f"download {published} (github.com/LAION-AI/aesthetic-predictor) and put it in "
                         f"{CLIP_FOLDER_HINT}")
    state = _read_state_dict(path)
    prefixes, problem = linear_chain({name: tuple(tensor.shape) for name, tensor in state.items()})
    if problem is not None:
        raise CheckpointError(f"{path} {problem}: use a LAION aesthetic predictor file.")
    layers = []
    for prefix in prefixes:
        weight, bias = state[prefix + "weight"], state.get(prefix + "bias")
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        layer.load_state_dict({"weight": weight} | ({"bias": bias} if bias is not None else {}))
        layers.append(layer)
    return AestheticHead(layers, threshold).eval().requires_grad_(False)


def load_hpsv3(path: str | os.PathLike, device: torch.device | str = "cuda", threshold: float = HPSV3_THRESHOLD,
               batch_size: int = 8) -> HPSv3Scorer:
    """The HPSv3 reward model from a local checkpoint, through the `hpsv3` package (a .safetensors file only: the
    package unpickles any other file whole, code included, which the pack never lets a model file do)."""
    path = _require_file(path, "HPSv3 checkpoint",
                         "download HPSv3.safetensors (huggingface.co/MizzenAI/HPSv3) into a models folder and pass its "
                         "path")
    if not path.name.lower().endswith(SAFETENSORS_SUFFIXES):
        raise CheckpointError(f"{path.name} is not a .safetensors file, and HPSv3's own loader would run any code a "
                              "pickled file holds: use HPSv3.safetensors (huggingface.co/MizzenAI/HPSv3).")
    try:
        from hpsv3 import HPSv3RewardInferencer
    except ImportError:
        raise CheckpointError("HPSv3 scoring needs the hpsv3 package: pip install hpsv3, or use the CLIP aesthetic "
                              "head.") from None
    return HPSv3Scorer(HPSv3RewardInferencer(checkpoint_path=str(path), device=str(device)), threshold, batch_size)


def _read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    if not path.name.lower().endswith(SAFETENSORS_SUFFIXES):
        return read_pth(path)  # the checkpoint loader's reader: pickled code is refused, legacy .pth files load
    try:
        return load_file(str(path))
    except (OSError, RuntimeError, ValueError, SafetensorError) as error:
        raise CheckpointError(f"{path} cannot be read as a weights file ({error}): download it again (.safetensors or "
                              ".pth).") from None


def _require_file(path: str | os.PathLike, what: str, fix: str) -> Path:
    path = check_file(path, "model file", CheckpointError, what)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist: {fix}.")
    return path


def _open_clip_weights(path: str | os.PathLike, model_name: str,
                       hint: str = CLIP_DOWNLOAD_HINT) -> tuple[dict, Mapping[str, torch.Tensor], Path, str]:
    """The open_clip config, the state dict and the model name of an open_clip CLIP file (Hugging Face's refused): the
    config the file stores (tiny test models), else `model_name`'s."""
    import open_clip

    path = _require_file(path, "CLIP image encoder", f"download {hint} and put it in {CLIP_FOLDER_HINT}")
    model_name = _clip_model_name(path, model_name)
    config = open_clip.get_model_config(model_name)
    if config is None:
        raise CheckpointError(f"open_clip has no model config '{model_name}': use e.g. ViT-B-32-quickgelu for OpenAI "
                              "CLIP weights.")
    state = _read_state_dict(path)
    if any(k.startswith("vision_model.") for k in state):
        raise CheckpointError(f"{path} is a Hugging Face CLIP vision file, but this encoder reads open_clip files: use "
                              f"{CLIP_DOWNLOAD_HINT}.")
    return config, state, path, model_name


def _loaded_tower(build: Callable[[str], nn.Module], state: Mapping[str, torch.Tensor], path: Path,
                  model_name: str) -> nn.Module:
    """`build(device)`'s tower with the file's weights; sizes are compared on the meta device first, so a config larger
    than the file is refused before memory is taken."""
    if faults := fit_faults(model_shapes(build("meta")), {name: tuple(t.shape) for name, t in state.items()}):
        raise CheckpointError(f"{path} does not fit open_clip '{model_name}' ({'; '.join(faults)}): pick the model "
                              "name its weights were made for.")
    tower = build("cpu")
    tower.load_state_dict(state)
    return tower


def _clip_model_name(path: str | os.PathLike, model_name: str) -> str:
    """`model_name`, or the registered name of the open_clip config the file stores (tiny test models)."""
    stored = stored_config(path, CLIP_VISION)
    return model_name if stored is None else _register_clip_config(stored)


def _register_clip_config(config: dict) -> str:
    """open_clip builds models by registered config name: register a stored config once, under a name of its content."""
    import open_clip

    text = json.dumps(config, sort_keys=True)
    if text not in _registered_clip_configs:
        name = f"storymem-stored-{len(_registered_clip_configs)}"
        config_file = scratch_folder("clip") / f"{name}.json"  # open_clip re-reads it on each registration
        config_file.write_text(text)
        open_clip.add_model_config(config_file)
        _registered_clip_configs[text] = name
    return _registered_clip_configs[text]
