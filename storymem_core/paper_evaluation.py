"""A story scored the way the StoryMem paper scores ST-Bench (its Table 1), on VBench's scales, so our numbers stand
beside its published row. The models: ViCLIP-L/14 (`viclip`) for text-video and video-video similarity, the LAION
aesthetic head on OpenAI CLIP ViT-L/14 (`scorers.VBenchClipEncoder`), each fed as VBench feeds it (frame sampling,
preprocessing, normalisation; proven by the `viclip` / `aesthetic` golden cases). The five columns:

- aesthetic: the head on every frame's L2-normalised CLIP features, divided by 10, averaged over the shot's frames,
  then over shots (VBench's aesthetic quality per shot);
- prompt following, single shot: ViCLIP cosine of each shot (8 frames, VBench's 'middle' sampling) with its prompt;
- prompt following, global: ViCLIP cosine of each shot with the story's overview, averaged (our definition);
- consistency, all pairs: ViCLIP cosine between the shots' video embeddings, over every pair of shots;
- consistency, top-10: the same over the 10 pairs whose prompts are most alike by ViCLIP text cosine (our rule).

The paper leaves the last two definitions open; docs/evaluation.md says what we chose and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

from .evaluation import mean_of_present
from .files import check_frames
from .scorers import AestheticHead, VBenchClipEncoder, vbench_frame_indices, vbench_pixels
from .story import Shot, Story
from .viclip import ViCLIPScorer

TOP_PAIRS = 10
PAPER_RESULT_FILE = "evaluation_paper.json"
# the paper's five columns, in its order, with the name a reader sees
PAPER_COLUMNS = {
    "aesthetic": "aesthetic quality",
    "prompt_following_global": "prompt following, global",
    "prompt_following_shot": "prompt following, single shot",
    "consistency_all": "cross-shot consistency, all pairs",
    "consistency_top10": "cross-shot consistency, top-10 pairs",
}
# StoryMem's row of the paper's Table 1 (ST-Bench)
PAPER_STORYMEM_ROW = {"aesthetic": 0.6133, "prompt_following_global": 0.2289, "prompt_following_shot": 0.2313,
                      "consistency_all": 0.5065, "consistency_top10": 0.5337}
OUR_DEFINITIONS = {
    "prompt_following_global": "the paper does not say what 'global' compares; ours: each shot's video with the "
                               "story's overview (story_overview), averaged over shots",
    "consistency_top10": "the paper does not say how the 10 pairs are chosen; ours: the 10 shot pairs whose prompts "
                         "are most alike (ViCLIP text cosine), so the choice does not look at the videos it scores",
}


@dataclass(frozen=True)
class PaperScorers:
    """ViCLIP, and OpenAI CLIP ViT-L/14 with the LAION head made for it."""

    viclip: ViCLIPScorer
    image: VBenchClipEncoder
    aesthetic: AestheticHead


def shot_aesthetic(frames: torch.Tensor, image: VBenchClipEncoder, head: AestheticHead) -> float:
    """VBench's aesthetic quality of one video (uint8 [T, H, W, 3]): every frame, head score / 10, averaged."""
    return (head.score(frames, image.embed(frames)) / 10).mean().item()


def shot_video_embedding(frames: torch.Tensor, viclip: ViCLIPScorer) -> torch.Tensor:
    """ViCLIP's normalised embedding [D] of one video from the frames VBench samples (8, 'middle' rule)."""
    indices = vbench_frame_indices(len(frames), viclip.num_frames)
    return viclip.embed_video(vbench_pixels(frames[indices], viclip.image_size))


@dataclass(frozen=True)
class PaperShot:
    shot: Shot
    frame_indices: tuple[int, ...]  # the frames ViCLIP read
    aesthetic: float
    prompt_following: float
    story_following: float  # with the story's overview


@dataclass(frozen=True)
class PaperEvaluation:
    """Per-shot scores, the shot x shot video similarity [N, N] and prompt similarity [N, N] of one story (drawn by
    `evaluation_pictures.heatmap` as the quick evaluation is)."""

    name: str
    shots: tuple[PaperShot, ...]
    similarity: torch.Tensor
    prompt_similarity: torch.Tensor

    def top_pairs(self) -> list[tuple[int, int]]:
        """The TOP_PAIRS shot pairs whose prompts are most alike (all pairs when there are fewer)."""
        count = len(self.shots)
        pairs = [(i, j) for i in range(count) for j in range(i + 1, count)]
        return sorted(pairs, key=lambda pair: -self.prompt_similarity[pair].item())[:TOP_PAIRS]

    def summary(self) -> dict[str, float | None]:
        count = len(self.shots)
        pairs = [(i, j) for i in range(count) for j in range(i + 1, count)]
        return {
            "aesthetic": mean_of_present(s.aesthetic for s in self.shots),
            "prompt_following_global": mean_of_present(s.story_following for s in self.shots),
            "prompt_following_shot": mean_of_present(s.prompt_following for s in self.shots),
            "consistency_all": mean_of_present(self.similarity[pair].item() for pair in pairs),
            "consistency_top10": mean_of_present(self.similarity[pair].item() for pair in self.top_pairs()),
        }

    def to_json(self) -> dict:
        return {
            "story": self.name, "summary": self.summary(), "paper_storymem": PAPER_STORYMEM_ROW,
            "our_definitions": OUR_DEFINITIONS,
            "shots": [{"shot": s.shot.index + 1, "frames": list(s.frame_indices), "aesthetic": s.aesthetic,
                       "prompt_following": s.prompt_following, "story_following": s.story_following}
                      for s in self.shots],
            "top_pairs": [[i + 1, j + 1] for i, j in self.top_pairs()],
            "similarity": self.similarity.tolist(), "prompt_similarity": self.prompt_similarity.tolist(),
        }


def evaluate_story_paper(story: Story, shot_frames: Iterable[torch.Tensor], scorers: PaperScorers,
                         on_shot: Callable[[int, int], None] | None = None) -> PaperEvaluation:
    """Score every shot of `story` from its frames (uint8 [T, H, W, 3] each, read lazily, in story order), then
    compare the shots' videos pair by pair."""
    prompts = [shot.prompt for shot in story.shots]
    texts = scorers.viclip.embed_text([*prompts, story.overview or " ".join(prompts)])  # [N + 1, D]
    shots, embeddings = [], []
    for shot, frames in zip(story.shots, shot_frames, strict=True):
        check_frames(frames, f"the frames of shot {shot.index + 1}", min_count=1)
        embedding = shot_video_embedding(frames, scorers.viclip)
        embeddings.append(embedding)
        shots.append(PaperShot(
            shot, tuple(vbench_frame_indices(len(frames), scorers.viclip.num_frames)),
            shot_aesthetic(frames, scorers.image, scorers.aesthetic), (embedding @ texts[shot.index]).item(),
            (embedding @ texts[-1]).item()))
        if on_shot is not None:
            on_shot(len(shots), len(story.shots))
    videos = torch.stack(embeddings)  # [N, D]
    return PaperEvaluation(story.name, tuple(shots), videos @ videos.T, texts[:-1] @ texts[:-1].T)


def set_summary(evaluations: Sequence[PaperEvaluation]) -> dict[str, float | None]:
    """The five columns over a set of stories: each story's value, averaged with every story weighing the same."""
    summaries = [e.summary() for e in evaluations]
    return {key: mean_of_present(s[key] for s in summaries) for key in PAPER_COLUMNS}

