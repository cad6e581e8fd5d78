"""Keyframe selection on CPU: embeddings once per frame vs. the reference's way, on 81-frame fast pans.

Run from the repo root:  python -m benchmarks.keyframe_selection [--markdown out.md]

`naive` re-implements the reference's algorithm as it runs (extract_keyframe_indices inside the
save_keyframes threshold loop): each similarity encodes both frames, each quality check scores its
frame, every threshold step re-runs the whole pass, and each new keyframe is compared with every bank
image by encoding both. `ours` is `storymem_core.keyframes`: one encoder forward per frame, the rule
on the similarity matrix. Two cases:
- golden fast_pan: the reference's own similarity/quality data (tests/golden/keyframes.json); counts
  only, the encoder and quality model being stand-ins that look the numbers up;
- synthetic fast pan: a real (tiny) open_clip vision tower with ViT-B/32 geometry (224 px, 32 px
  patches; width 64, 2 layers, random seeded weights) and a CLIP aesthetic head (random linear, its
  cut near the 10th percentile), timed. Both sides must pick the same frames.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from typing import Callable

import open_clip
import torch
import torch.nn.functional as F

from benchmarks.results import save_text
from storymem_core.keyframes import (
    DEDUP_THRESHOLD,
    MAX_KEYFRAMES,
    SIMILARITY_THRESHOLD,
    THRESHOLD_STEP,
    select_indices,
    select_keyframes,
)
from storymem_core.memory import MemoryBank
from storymem_core.scorers import AestheticHead, OpenClipEncoder
from tests.golden_data import golden_dir

VISION = {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32, "head_width": 32}
EMBED_DIM = 64


@dataclass
class Counts:
    encoder: int = 0  # images through the CLIP encoder
    quality: int = 0  # images through the quality model


@dataclass
class NaiveResult:
    chosen: list[int]
    kept: list[int]
    threshold: float
    steps: int


def naive_reference(
    frames: int, bank: int, similarity: Callable[[int, int], float], bank_similarity: Callable[[int, int], float],
    low_quality: Callable[[int], bool]
) -> NaiveResult:
    """The reference's loops over frame indices; the callables do (and count) the encoding."""

    def one_pass(threshold: float) -> list[int]:
        first = 0
        while low_quality(first):
            first += 1
            if first >= frames:
                return []
        chosen, last = [first], first
        for i in range(2, frames):
            if similarity(last, i) < threshold and not low_quality(i):
                chosen.append(i)
                last = i
        return chosen

    threshold, steps = SIMILARITY_THRESHOLD, 1
    while len(chosen := one_pass(threshold)) > MAX_KEYFRAMES:
        threshold -= THRESHOLD_STEP
        steps += 1
    kept = [i for i in chosen if not any(bank_similarity(i, j) > DEDUP_THRESHOLD for j in range(bank))]
    return NaiveResult(chosen, kept, threshold, steps)


def golden_fast_pan() -> list[str]:
    """Forward counts on the reference's fast_pan data: the acceptance check (>= 20x)."""
    case = json.loads((golden_dir() / "keyframes.json").read_text())["cases"]["fast_pan"]
    sim, quality, counts = case["sim"], case["quality"], Counts()

    def similarity(i: int, j: int) -> float:
        counts.encoder += 2
        return sim[i][j]

    def low_quality(i: int) -> bool:
        counts.quality += 1
        return quality[i] < case["quality_threshold"]

    naive = naive_reference(len(sim), 0, similarity, similarity, low_quality)
    ours = select_indices(sim, quality, case["start_threshold"], case["step"], case["max_keyframes"],
                          case["quality_threshold"])
    assert list(ours.indices) == naive.chosen == case["final_indices"]
    frames = len(sim)
    ratio = counts.encoder / frames
    assert ratio >= 20, f"naive takes only {ratio:.1f}x the forwards"
    return [
        f"Golden `fast_pan` ({frames} frames, reference data): {naive.steps} threshold steps (0.90 -> "
        f"{naive.threshold:.2f}), keyframes {naive.chosen}.",
        "",
        "| method | CLIP encoder forwards | quality-model calls |",
        "|---|---:|---:|",
        f"| naive reference | {counts.encoder} | {counts.quality} (HPSv3, 7B) |",
        f"| ours | {frames} | {frames} (CLIP head on the embeddings, no extra forward; or {frames} HPSv3 calls) |",
        f"| ratio | {ratio:.0f}x | {counts.quality / frames:.0f}x |",
    ]


class CountingEncoder:
    def __init__(self, encoder: OpenClipEncoder, counts: Counts):
        self.encoder, self.counts = encoder, counts

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        self.counts.encoder += len(frames)
        return self.encoder.embed(frames)


def fast_pan(frames: int, height: int, width: int, shift: int, seed: int) -> torch.Tensor:
    """uint8 [T, H, W, 3]: a camera sweeping `shift` px per frame over a panorama of changing colours."""
    generator = torch.Generator().manual_seed(seed)
    colours = torch.rand(1, 3, 3, 41, generator=generator) * 255
    panorama = F.interpolate(colours, size=(height, width + (frames - 1) * shift), mode="bilinear",
                             align_corners=True)[0]
    panorama = panorama + torch.rand(panorama.shape, generator=generator) * 40 - 20
    views = torch.stack([panorama[:, :, i * shift : i * shift + width] for i in range(frames)])
    return views.permute(0, 2, 3, 1).round().clamp(0, 255).to(torch.uint8)


def best_of(repeats: int, run: Callable[[], object]) -> tuple[object, float]:
    """The last result and the shortest wall time of `repeats` runs (the CPU may be shared)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return result, best


def synthetic_fast_pan(args: argparse.Namespace) -> list[str]:
    """Our selection vs. the naive reference with a real tiny encoder: forwards and time."""
    torch.manual_seed(0)
    visual = open_clip.model._build_vision_tower(EMBED_DIM, VISION, quick_gelu=True)
    encoder = OpenClipEncoder(visual, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
    shot = fast_pan(args.frames, args.height, args.width, args.shift, args.seed)
    # an earlier shot, and the frame this shot continues from (dedup drops its twin)
    bank_images = list(fast_pan(args.bank - 1, args.height, args.width, args.shift, args.bank_seed)) + [shot[0]]
    head = AestheticHead([torch.nn.Linear(EMBED_DIM, 1)]).eval().requires_grad_(False)
    quality = head.score(None, encoder.embed(shot)).sort().values
    tenth = len(quality) // 10
    head.threshold = ((quality[tenth] + quality[tenth + 1]) / 2).item()  # between two frames: no ties

    bank = MemoryBank.from_images(bank_images)

    def run_ours() -> tuple[list, Counts]:
        counts = Counts()
        return select_keyframes(shot, CountingEncoder(encoder, counts), bank=bank, scorer=head), counts

    def run_naive() -> tuple[NaiveResult, Counts]:
        counts = Counts()
        naive_encoder = CountingEncoder(encoder, counts)

        def pair(a: torch.Tensor, b: torch.Tensor) -> float:
            return (naive_encoder.embed(a[None]) @ naive_encoder.embed(b[None]).T).item()

        def low_quality(i: int) -> bool:
            counts.quality += 1
            return head.score(None, naive_encoder.embed(shot[i][None])).item() < head.threshold

        def similarity(i: int, j: int) -> float:
            return pair(shot[i], shot[j])

        def bank_similarity(i: int, j: int) -> float:
            return pair(shot[i], bank_images[j])

        return naive_reference(len(shot), len(bank_images), similarity, bank_similarity, low_quality), counts

    (ours, ours_counts), ours_time = best_of(args.repeats, run_ours)
    (naive, naive_counts), naive_time = best_of(args.repeats, run_naive)
    picked = [k.frame_index for k in ours]
    assert picked == naive.kept, f"selections differ: ours {picked}, naive {naive.kept}"
    return [
        f"Synthetic fast pan: {args.frames} frames {args.width}x{args.height}, {args.shift} px/frame, seed "
        f"{args.seed}, bank of {args.bank} (seed {args.bank_seed}); {naive.steps} threshold steps (0.90 -> "
        f"{naive.threshold:.2f}), keyframes {naive.chosen}, {picked} after dedup; tiny encoder, torch "
        f"{torch.__version__}, {torch.get_num_threads()} CPU threads, best of {args.repeats}.",
        "",
        "| method | encoder forwards (images, incl. quality checks) | time (s) |",
        "|---|---:|---:|",
        f"| naive reference | {naive_counts.encoder} | {naive_time:.2f} |",
        f"| ours | {ours_counts.encoder} ({args.frames} frames + {args.bank} bank images) | {ours_time:.3f} |",
        f"| ratio | {naive_counts.encoder / ours_counts.encoder:.0f}x | {naive_time / ours_time:.0f}x |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=416)
    parser.add_argument("--shift", type=int, default=120, help="pan speed, px per frame")
    parser.add_argument("--seed", type=int, default=3,
                        help="panorama seed (3: a search about as long as golden fast_pan's)")
    parser.add_argument("--bank-seed", type=int, default=6,
                        help="seed of the earlier shot in the bank (6: unlike this pan for the tiny encoder)")
    parser.add_argument("--bank", type=int, default=6,
                        help="bank images to dedup against (the last is the shot's first frame)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method; the fastest counts")
    parser.add_argument("--markdown", help="also write the result tables to this file")
    args = parser.parse_args()
    text = "\n".join(golden_fast_pan() + [""] + synthetic_fast_pan(args))
    print(text)
    if args.markdown:
        save_text(text, args.markdown)


if __name__ == "__main__":
    main()
