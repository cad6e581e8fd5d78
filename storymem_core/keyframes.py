"""Semantic keyframe selection: which frames of a finished shot enter the memory bank.

The rule is the reference's (StoryMem `extract_keyframe_indices` + `save_keyframes`):
- the first keyframe is the first frame of acceptable quality;
- from frame 2 on, a frame becomes a keyframe when its similarity to the last keyframe is below the
  threshold and its quality is acceptable;
- while more than `max_keyframes` are chosen, the threshold drops by `step` (0.9, 0.89, ...);
- a chosen keyframe whose similarity to any bank image exceeds 0.9 is skipped (dedup).

The reference re-encodes both frames for every comparison and re-runs the whole pass for every
threshold step. Here every frame is embedded once, in batches; the rule then runs on the
similarity matrix (`select_indices`, pure, checked against the golden data), so the threshold
search costs no encoder forward. Quality comes from an `AestheticScorer`, once per frame: the
`AestheticHead` reads the same CLIP embeddings, `HPSv3Scorer` (the reference's model) the frames.
With no scorer the quality filter is off (a warning is logged once).

Dedup compares against the bank it is given (the windowed bank), not, as the reference's folder
glob does, every keyframe ever saved: a frame like an evicted keyframe may come back.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .errors import CheckpointError, ConditioningError
from .files import check_frames
from .memory import Keyframe, MemoryBank
from .safe_files import check_file
from .weights.readers import SAFETENSORS_SUFFIXES, read_pth
from .weights.shapes import fit_faults, linear_chain, model_shapes

log = logging.getLogger(__name__)

SIMILARITY_THRESHOLD = 0.9
THRESHOLD_STEP = 0.01
MAX_KEYFRAMES = 3
DEDUP_THRESHOLD = 0.9
HPSV3_THRESHOLD = 3.0
# LAION aesthetic scores run about 1..10 (most photos 4..6); a chosen cut, not calibrated against HPSv3
AESTHETIC_THRESHOLD = 4.0
CLIP_FOLDER_HINT = "ComfyUI's models/clip_vision folder (or models/clip_vision under --models-dir)"
CLIP_DOWNLOAD_HINT = ("open_clip_model.safetensors from huggingface.co/timm/vit_base_patch32_clip_224.openai (OpenAI "
                      "CLIP ViT-B/32, as the reference uses)")


class ImageEncoder(Protocol):
    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames [T, H, W, 3] -> L2-normalised float32 embeddings [T, D] on the CPU."""
        ...


class AestheticScorer(Protocol):
    threshold: float  # frames scoring below it are not taken as keyframes

    def score(self, frames: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """Quality per frame [T] from the frames (uint8 [T, H, W, 3]) or their embeddings [T, D]."""
        ...


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


def _open_clip_weights(path: str | os.PathLike, model_name: str) -> tuple[dict, Mapping[str, torch.Tensor], Path]:
    """The open_clip config of `model_name` and the state dict of an open_clip CLIP file (Hugging Face's refused)."""
    import open_clip

    path = _require_file(path, "CLIP image encoder", f"download {CLIP_DOWNLOAD_HINT} and put it in {CLIP_FOLDER_HINT}")
    config = open_clip.get_model_config(model_name)
    if config is None:
        raise CheckpointError(f"open_clip has no model config '{model_name}': use e.g. ViT-B-32-quickgelu for OpenAI "
                              "CLIP weights.")
    state = _read_state_dict(path)
    if any(k.startswith("vision_model.") for k in state):
        raise CheckpointError(f"{path} is a Hugging Face CLIP vision file, but this encoder reads open_clip files: use "
                              f"{CLIP_DOWNLOAD_HINT}.")
    return config, state, path


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


class OpenClipEncoder:
    """An open_clip vision tower as an ImageEncoder: frames squashed to its input size, batched.

    The reference shrinks frames (antialiased) to at most 256 x 28^2 pixels, then squashes them to 224
    without antialiasing; here one antialiased resize goes straight to the input size.
    """

    def __init__(self, visual: nn.Module, mean: Sequence[float], std: Sequence[float], batch_size: int = 32):
        self.visual = visual.eval().requires_grad_(False)
        self.image_size = tuple(visual.image_size)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.batch_size = batch_size

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, model_name: str = "ViT-B-32-quickgelu", device: torch.device | str = "cpu",
        batch_size: int = 32
    ) -> OpenClipEncoder:
        """Build `model_name` (an open_clip config name) and load its vision weights from a local file only."""
        import open_clip

        config, state, path = _open_clip_weights(path, model_name)
        if any(k.startswith("visual.") for k in state):
            state = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
        visual = _loaded_tower(lambda device: vision_tower(config, device), state, path, model_name)
        preprocess = config.get("preprocess_cfg", {})
        mean = preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN)
        std = preprocess.get("std", open_clip.OPENAI_DATASET_STD)
        return cls(visual.to(device), mean, std, batch_size)

    @torch.inference_mode()
    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        parameter = next(self.visual.parameters())
        chunks = []
        for start in range(0, len(frames), self.batch_size):
            batch = frames[start : start + self.batch_size].to(parameter.device).permute(0, 3, 1, 2).float() / 255
            # squashed like the reference (no crop): the whole frame counts
            batch = F.interpolate(batch, size=self.image_size, mode="bilinear", antialias=True, align_corners=False)
            batch = (batch - self.mean.to(batch.device)) / self.std.to(batch.device)
            chunks.append(F.normalize(self.visual(batch.to(parameter.dtype)).float(), dim=-1).cpu())
        return torch.cat(chunks)


def vision_tower(config: Mapping, device: torch.device | str) -> nn.Module:
    """The image tower of an open_clip model config (the text tower is never used here)."""
    import open_clip

    with torch.device(device):
        return open_clip.model._build_vision_tower(config["embed_dim"], config["vision_cfg"],
                                                   config.get("quick_gelu", False))


def _text_tower(config: Mapping, device: torch.device | str) -> nn.Module:
    import open_clip

    with torch.device(device):
        return open_clip.model._build_text_tower(config["embed_dim"], config["text_cfg"],
                                                 config.get("quick_gelu", False))


class OpenClipTextEncoder:
    """The text tower of the same open_clip CLIP file, for prompt-image similarity (story evaluation).

    Prompts longer than the context (77 tokens for OpenAI CLIP) are cut there by open_clip's tokenizer.
    """

    def __init__(self, text: nn.Module, tokenizer):
        self.text = text.eval().requires_grad_(False)
        self.tokenizer = tokenizer

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, model_name: str = "ViT-B-32-quickgelu", device: torch.device | str = "cpu"
    ) -> OpenClipTextEncoder:
        """Build the text tower of `model_name` and load its weights (the file's keys outside `visual.`)."""
        import open_clip

        config, state, path = _open_clip_weights(path, model_name)
        text_state = {k: v for k, v in state.items() if not k.startswith("visual.") and k != "logit_scale"}
        if "token_embedding.weight" not in text_state:
            raise CheckpointError(
                f"{path} holds only CLIP's image tower, but prompt following needs its text tower too: "
                f"use {CLIP_DOWNLOAD_HINT}."
            )
        text = _loaded_tower(lambda device: _text_tower(config, device), text_state, path, model_name)
        return cls(text.to(device), open_clip.get_tokenizer(model_name))

    @torch.inference_mode()
    def embed_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> L2-normalised float32 embeddings [N, D] on the CPU."""
        parameter = next(self.text.parameters())
        tokens = self.tokenizer(list(prompts)).to(parameter.device)
        return F.normalize(self.text(tokens).float(), dim=-1).cpu()


class AestheticHead(nn.Module):
    """LAION-style aesthetic predictor on CLIP embeddings: a chain of linear layers, nothing in between.

    Reads both published layouts: the ViT-B/32 linear head (`weight`, `bias`) and the MLP of the
    improved predictor (`layers.0`, `layers.2`, ... whose dropouts hold no weights and no activations).
    """

    def __init__(self, layers: Sequence[nn.Linear], threshold: float = AESTHETIC_THRESHOLD):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.threshold = threshold

    @classmethod
    def from_file(cls, path: str | os.PathLike, threshold: float = AESTHETIC_THRESHOLD) -> AestheticHead:
        path = _require_file(
            path, "aesthetic head",
            "download sa_0_4_vit_b_32_linear.pth (github.com/LAION-AI/aesthetic-predictor) and put it in "
            f"{CLIP_FOLDER_HINT}"
        )
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
        return cls(layers, threshold).eval().requires_grad_(False)

    def check_fits(self, encoder: ImageEncoder) -> None:
        """Refuse an encoder of another embedding size at load time, not after a shot has been generated."""
        self._check_dim(encoder.embed(torch.zeros(1, 32, 32, 3, dtype=torch.uint8)).shape[-1])

    def _check_dim(self, dim: int) -> None:
        if dim != self.layers[0].in_features:
            raise CheckpointError(
                f"the aesthetic head expects {self.layers[0].in_features}-d CLIP embeddings but the encoder gives "
                f"{dim}-d: use the head made for your CLIP model."
            )

    @torch.inference_mode()
    def score(self, frames: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        self._check_dim(embeddings.shape[-1])
        x = embeddings.to(self.layers[0].weight)
        for layer in self.layers:
            x = layer(x)
        return x[:, 0].float().cpu()


class HPSv3Scorer:
    """The reference's quality model (HPSv3, a 7B VLM reward); needs the `hpsv3` package and a local checkpoint."""

    def __init__(self, checkpoint_path: str | os.PathLike, device: torch.device | str = "cuda",
                 threshold: float = HPSV3_THRESHOLD, batch_size: int = 8):
        path = _require_file(checkpoint_path, "HPSv3 checkpoint",
                             "download HPSv3.safetensors (huggingface.co/MizzenAI/HPSv3) into a models folder and pass "
                             "its path")
        try:
            from hpsv3 import HPSv3RewardInferencer
        except ImportError:
            raise CheckpointError("HPSv3 scoring needs the hpsv3 package: pip install hpsv3, or use the CLIP aesthetic "
                                  "head.") from None
        self._inferencer = HPSv3RewardInferencer(checkpoint_path=str(path), device=str(device))
        self.threshold = threshold
        self.batch_size = batch_size

    @torch.inference_mode()
    def score(self, frames: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        scores = []
        for start in range(0, len(frames), self.batch_size):
            images = [Image.fromarray(frame.numpy()) for frame in frames[start : start + self.batch_size].cpu()]
            rewards = self._inferencer.reward(image_paths=images, prompts=[""] * len(images))
            scores.append(torch.as_tensor(rewards)[:, 0].float().cpu())  # column 0: the reward mean
        return torch.cat(scores)


@dataclass(frozen=True)
class KeyframeSearch:
    """The adaptive-threshold search: the final choice and every threshold tried, in order."""

    indices: tuple[int, ...]
    threshold: float
    trace: tuple[tuple[float, tuple[int, ...]], ...]


def _select_at(sim: list[list[float]], acceptable: list[bool], threshold: float) -> tuple[int, ...]:
    """One pass of the rule at one threshold."""
    first = next((i for i, ok in enumerate(acceptable) if ok), None)
    if first is None:
        return ()
    chosen, last = [first], first
    for i in range(2, len(acceptable)):  # the reference starts comparing at frame 2, whatever the first keyframe
        if sim[last][i] < threshold and acceptable[i]:
            chosen.append(i)
            last = i
    return tuple(chosen)


def select_indices(
    sim: torch.Tensor | Sequence[Sequence[float]],
    quality: torch.Tensor | Sequence[float] | None = None,
    threshold: float = SIMILARITY_THRESHOLD,
    step: float = THRESHOLD_STEP,
    max_keyframes: int = MAX_KEYFRAMES,
    quality_threshold: float = HPSV3_THRESHOLD,
) -> KeyframeSearch:
    """The reference's keyframe rule on a frame-similarity matrix [T, T] and per-frame quality [T] (None: all
    acceptable)."""
    if max_keyframes < 1 or step <= 0:
        raise ConditioningError(f"max_keyframes = {max_keyframes} and step = {step} must be positive: use e.g. 3 and "
                                "0.01.")
    sim = sim.tolist() if isinstance(sim, torch.Tensor) else [list(row) for row in sim]
    quality = quality.tolist() if isinstance(quality, torch.Tensor) else quality
    acceptable = [True] * len(sim) if quality is None else [q >= quality_threshold for q in quality]
    trace = []
    while True:
        chosen = _select_at(sim, acceptable, threshold)
        trace.append((threshold, chosen))
        if len(chosen) <= max_keyframes:  # ends: below the smallest similarity only the first is chosen
            return KeyframeSearch(chosen, threshold, tuple(trace))
        threshold -= step  # repeated subtraction, as the reference does (its float drift included)


def dedup_against_bank(similarity: torch.Tensor | Sequence[Sequence[float]],
                       threshold: float = DEDUP_THRESHOLD) -> list[int]:
    """Rows (new keyframes) of a [K, M] similarity to the bank whose every entry is at most `threshold`."""
    rows = similarity.tolist() if isinstance(similarity, torch.Tensor) else similarity
    return [i for i, row in enumerate(rows) if not any(s > threshold for s in row)]


@cache
def _warn_quality_filter_off() -> None:
    log.warning("no aesthetic scorer given: keyframes are chosen without the quality filter (load an aesthetic head to "
                "enable it).")


def _embed_bank(encoder: ImageEncoder, images: list[torch.Tensor]) -> torch.Tensor:
    """Bank embeddings [M, D]: one batch when the images share a size, else one call per image."""
    if len({tuple(image.shape) for image in images}) == 1:
        return encoder.embed(torch.stack(images))
    return torch.cat([encoder.embed(image[None]) for image in images])


def select_keyframes(
    frames: torch.Tensor,
    encoder: ImageEncoder,
    bank: MemoryBank | None = None,
    scorer: AestheticScorer | None = None,
    threshold: float = SIMILARITY_THRESHOLD,
    step: float = THRESHOLD_STEP,
    max_keyframes: int = MAX_KEYFRAMES,
    quality_threshold: float | None = None,
    shot: int = -1,
    dedup_threshold: float = DEDUP_THRESHOLD,
) -> list[Keyframe]:
    """The keyframes of one shot (uint8 frames [T, H, W, 3]) to add to `bank`, at full resolution.

    Each frame is embedded exactly once; the bank's images once more when there is something to
    dedup. `quality_threshold` None means the scorer's own threshold.
    """
    check_frames(frames, "the frames for keyframe selection", min_count=1)
    embeddings = encoder.embed(frames).float().cpu()  # [T, D]
    similarity = embeddings @ embeddings.T  # [T, T]
    if scorer is None:
        _warn_quality_filter_off()
    quality = None if scorer is None else scorer.score(frames, embeddings).float().cpu()  # [T]
    # cut is unused without a scorer
    cut = quality_threshold if quality_threshold is not None else getattr(scorer, "threshold", HPSV3_THRESHOLD)
    search = select_indices(similarity, quality, threshold, step, max_keyframes, cut)
    chosen = list(search.indices)
    bank_similarity = None
    if bank is not None and len(bank) and chosen:
        bank_similarity = embeddings[chosen] @ _embed_bank(encoder, bank.image_list()).float().cpu().T  # [K, M]
        kept = set(dedup_against_bank(bank_similarity, dedup_threshold))
    else:
        kept = set(range(len(chosen)))
    keyframes = []
    for k, index in enumerate(chosen):
        if k not in kept:
            continue
        scores = {"threshold": search.threshold}
        if k > 0:
            scores["similarity"] = similarity[chosen[k - 1], index].item()
        if quality is not None:
            scores["quality"] = quality[index].item()
        if bank_similarity is not None:
            scores["bank_similarity"] = bank_similarity[k].max().item()
        keyframes.append(Keyframe(frames[index], shot=shot, frame_index=index, scores=scores, source="generated"))
    return keyframes
