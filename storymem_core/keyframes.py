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
search costs no encoder forward. Quality comes from an `AestheticScorer` (storymem_core.scorers), once per frame:
the `AestheticHead` reads the same CLIP embeddings, `HPSv3Scorer` (the reference's model) the frames. With no
scorer the quality filter is off (a warning is logged once). This module keeps only the rule.

Dedup compares against the bank it is given (the windowed bank), not, as the reference's folder
glob does, every keyframe ever saved: a frame like an evicted keyframe may come back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache
from typing import Sequence

import torch

from .choices import Ablation
from .errors import ConditioningError
from .files import check_frames
from .memory import Keyframe, MemoryBank
from .scorers import HPSV3_THRESHOLD, AestheticScorer, ImageEncoder, embed_images

log = logging.getLogger(__name__)

SIMILARITY_THRESHOLD = 0.9
THRESHOLD_STEP = 0.01
MAX_KEYFRAMES = 3
DEDUP_THRESHOLD = 0.9


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


def spaced_indices(quality: torch.Tensor | Sequence[float] | None, count: int, frames: int,
                   quality_threshold: float = HPSV3_THRESHOLD) -> tuple[int, ...]:
    """The paper's ablation without semantic selection: `count` frames evenly spaced from the first to the last of
    those of acceptable quality (all frames with no quality)."""
    quality = quality.tolist() if isinstance(quality, torch.Tensor) else quality
    candidates = [i for i in range(frames) if quality is None or quality[i] >= quality_threshold]
    if len(candidates) <= count:
        return tuple(candidates)
    if count == 1:
        return (candidates[0],)
    return tuple(candidates[round(k * (len(candidates) - 1) / (count - 1))] for k in range(count))


def dedup_against_bank(similarity: torch.Tensor | Sequence[Sequence[float]],
                       threshold: float = DEDUP_THRESHOLD) -> list[int]:
    """Rows (new keyframes) of a [K, M] similarity to the bank whose every entry is at most `threshold`."""
    rows = similarity.tolist() if isinstance(similarity, torch.Tensor) else similarity
    return [i for i, row in enumerate(rows) if not any(s > threshold for s in row)]


@cache
def _warn_quality_filter_off() -> None:
    log.warning("no aesthetic scorer given: keyframes are chosen without the quality filter (load an aesthetic head to "
                "enable it).")


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
    ablations: Sequence[str] = (),
) -> list[Keyframe]:
    """The keyframes of one shot (uint8 frames [T, H, W, 3]) to add to `bank`, at full resolution.

    Each frame is embedded exactly once; the bank's images once more when there is something to
    dedup. `quality_threshold` None means the scorer's own threshold. `ablations` (choices.Ablation) switch off the
    semantic rule (evenly spaced frames instead) or the quality filter, as the paper's Table 2 does.
    """
    check_frames(frames, "the frames for keyframe selection", min_count=1)
    if Ablation.NO_AESTHETIC_FILTER in ablations:
        scorer = None
    embeddings = encoder.embed(frames).float().cpu()  # [T, D]
    similarity = embeddings @ embeddings.T  # [T, T]
    if scorer is None and Ablation.NO_AESTHETIC_FILTER not in ablations:
        _warn_quality_filter_off()
    quality = None if scorer is None else scorer.score(frames, embeddings).float().cpu()  # [T]
    # cut is unused without a scorer
    cut = quality_threshold if quality_threshold is not None else getattr(scorer, "threshold", HPSV3_THRESHOLD)
    search = select_indices(similarity, quality, threshold, step, max_keyframes, cut)
    if Ablation.NO_SEMANTIC_SELECTION in ablations:
        search = KeyframeSearch(spaced_indices(quality, max_keyframes, len(frames), cut), threshold, ())
    chosen = list(search.indices)
    bank_similarity = None
    if bank is not None and len(bank) and chosen:
        bank_similarity = embeddings[chosen] @ embed_images(encoder, bank.image_list()).float().cpu().T  # [K, M]
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
