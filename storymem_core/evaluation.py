"""Story evaluation: aesthetic quality, prompt following, cross-shot consistency and smoothness of a finished story.

StoryMem's paper scores stories on these axes (ST-Bench) but publishes no evaluation code; the definitions
here follow common practice (VBench's aesthetic quality, CLIP score, CLIP image-image similarity) and are
written out in docs/evaluation.md. Per shot, `frames_per_shot` evenly spaced frames are sampled and each is
embedded once by the CLIP image encoder; every CLIP score is read from those embeddings:

- aesthetic: the LAION aesthetic head on each sampled frame's embedding, averaged (about 1..10);
- prompt following: cosine of the shot prompt's CLIP text embedding with each sampled frame's, averaged;
- consistency: cosine between shot embeddings (the normalised mean of a shot's frame embeddings), so two
  shots of the same frames score exactly 1; summarised over all shot pairs, over pairs within a scene,
  and against the MR2V reference images when the story has any;
- smoothness: 1 - mean absolute difference of consecutive frames (all frames, pixels in 0..1), as VBench's
  temporal flickering score; 1 is a still picture.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from .bank_files import load_bank
from .errors import SettingsError, StoryFolderError
from .files import check_frames, thumbnail
from .memory import MemoryBankError
from .pipeline import StoryFolder
from .scorers import AestheticScorer, ImageEncoder, embed_images
from .story import Shot, Story, load_story
from .story_folder import first_shot_made_otherwise
from .video import read_mp4

FRAMES_PER_SHOT = 8
THUMB_HEIGHT = 72
SCRIPT_NAME = "story.json"
RESULT_FILE = "evaluation.json"
# the story-level numbers, in the order tables list them, with the name a reader sees
SUMMARY_LABELS = {
    "aesthetic": "aesthetic (LAION head, 1-10)",
    "prompt_following": "prompt following (CLIP text-image)",
    "consistency": "consistency, all shot pairs",
    "consistency_in_scene": "consistency, within scenes",
    "consistency_to_references": "consistency to references",
    "smoothness": "smoothness (1 - frame change)",
}


class TextEncoder(Protocol):
    def embed_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> L2-normalised float32 embeddings [N, D] on the CPU, in the image encoder's space."""
        ...


@dataclass(frozen=True)
class Scorers:
    """The models evaluation reads: a CLIP image encoder and text encoder of one embedding space, and a quality head."""

    image: ImageEncoder
    text: TextEncoder
    aesthetic: AestheticScorer | None = None  # None: no aesthetic score


@dataclass(frozen=True)
class ShotScores:
    """One shot's numbers; `embedding` (normalised mean of its frame embeddings) feeds the cross-shot matrix."""

    shot: Shot
    frame_indices: tuple[int, ...]
    embedding: torch.Tensor
    aesthetic: float | None
    prompt_following: float
    smoothness: float | None  # None for a one-frame shot
    thumbnails: tuple[Image.Image, ...]


@dataclass(frozen=True)
class StoryEvaluation:
    """Every shot's scores, the shot x shot similarity [N, N] and the shot x reference similarity [N, R] (or None)."""

    name: str
    shots: tuple[ShotScores, ...]
    similarity: torch.Tensor
    reference_similarity: torch.Tensor | None = None

    def shot_consistency(self, index: int, in_scene: bool = False) -> float | None:
        """Mean similarity of shot `index` to every other shot (of its scene only, with `in_scene`); None if none."""
        scene = self.shots[index].shot.scene_num
        others = [j for j, s in enumerate(self.shots) if j != index and (not in_scene or s.shot.scene_num == scene)]
        return mean_of_present(self.similarity[index, others].tolist()) if others else None

    def shot_reference_consistency(self, index: int) -> float | None:
        return None if self.reference_similarity is None else _mean_of(self.reference_similarity[index])

    def summary(self) -> dict[str, float | None]:
        """Story-level numbers: per-shot scores averaged over shots, consistency averaged over shot pairs."""
        count = len(self.shots)
        pairs = [(i, j) for i in range(count) for j in range(i + 1, count)]
        in_scene = [(i, j) for i, j in pairs if self.shots[i].shot.scene_num == self.shots[j].shot.scene_num]
        return {
            "aesthetic": mean_of_present([s.aesthetic for s in self.shots]),
            "prompt_following": mean_of_present([s.prompt_following for s in self.shots]),
            "consistency": mean_of_present([self.similarity[i, j].item() for i, j in pairs]),
            "consistency_in_scene": mean_of_present([self.similarity[i, j].item() for i, j in in_scene]),
            "consistency_to_references": _mean_of(self.reference_similarity),
            "smoothness": mean_of_present([s.smoothness for s in self.shots]),
        }

    def to_json(self) -> dict:
        shots = []
        for index, scores in enumerate(self.shots):
            shots.append({
                "shot": scores.shot.index + 1, "scene": scores.shot.scene_num, "cut": scores.shot.cut,
                "prompt": scores.shot.prompt, "frames": list(scores.frame_indices), "aesthetic": scores.aesthetic,
                "prompt_following": scores.prompt_following, "consistency": self.shot_consistency(index),
                "consistency_in_scene": self.shot_consistency(index, in_scene=True),
                "consistency_to_references": self.shot_reference_consistency(index), "smoothness": scores.smoothness,
            })
        return {
            "story": self.name, "summary": self.summary(), "shots": shots,
            "similarity": self.similarity.tolist(),
            "reference_similarity": None if self.reference_similarity is None else self.reference_similarity.tolist(),
        }


def _mean_of(similarity: torch.Tensor | None) -> float | None:
    return None if similarity is None else similarity.mean().item()


def mean_of_present(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are not None; None when there are none."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def check_frames_per_shot(per_shot: int) -> None:
    if per_shot < 1:
        raise SettingsError(
            f"frames per shot = {per_shot} samples nothing: use at least 1 (default {FRAMES_PER_SHOT})."
        )


def sample_indices(count: int, per_shot: int) -> list[int]:
    """`per_shot` frame indices spread evenly from the first to the last of `count` frames (all when fewer)."""
    check_frames_per_shot(per_shot)
    if count <= per_shot:
        return list(range(count))
    if per_shot == 1:
        return [count // 2]
    return sorted({round(i * (count - 1) / (per_shot - 1)) for i in range(per_shot)})


def smoothness(frames: torch.Tensor) -> float | None:
    """1 - the mean absolute change between consecutive frames (pixels in 0..1); None for a single frame."""
    if len(frames) < 2:
        return None
    change = sum((frames[t + 1].int() - frames[t].int()).abs().float().mean().item() for t in range(len(frames) - 1))
    return 1 - change / (len(frames) - 1) / 255


def score_shot(shot: Shot, frames: torch.Tensor, scorers: Scorers, frames_per_shot: int = FRAMES_PER_SHOT,
               prompt_embedding: torch.Tensor | None = None) -> ShotScores:
    """The scores of one shot's frames (uint8 [T, H, W, 3]); its sampled frames are embedded once."""
    check_frames(frames, f"the frames of shot {shot.index + 1}", min_count=1)
    indices = sample_indices(len(frames), frames_per_shot)
    sampled = frames[indices]
    embeddings = scorers.image.embed(sampled).float().cpu()  # [K, D], normalised
    if prompt_embedding is None:
        prompt_embedding = scorers.text.embed_text([shot.prompt])[0]
    aesthetic = None
    if scorers.aesthetic is not None:
        aesthetic = scorers.aesthetic.score(sampled, embeddings).float().mean().item()
    return ShotScores(
        shot=shot, frame_indices=tuple(indices), embedding=F.normalize(embeddings.mean(0), dim=0), aesthetic=aesthetic,
        prompt_following=(embeddings @ prompt_embedding.float()).mean().item(), smoothness=smoothness(frames),
        thumbnails=tuple(thumbnail(frame, THUMB_HEIGHT) for frame in sampled),
    )


def evaluate_story(
    story: Story,
    shot_frames: Iterable[torch.Tensor],
    scorers: Scorers,
    references: Sequence[torch.Tensor] = (),
    frames_per_shot: int = FRAMES_PER_SHOT,
    on_shot: Callable[[int, int], None] | None = None,
) -> StoryEvaluation:
    """Score every shot of `story` from its frames (one uint8 [T, H, W, 3] per shot, read lazily, in story order),
    then compare shots with each other and with the reference images (uint8 [H, W, 3] each).
    `on_shot(done, total)` is called after each shot (progress; it may raise to stop)."""
    shots = story.shots
    prompts = scorers.text.embed_text([shot.prompt for shot in shots])  # [N, D], one batch
    scores = []
    for shot, frames in zip(shots, shot_frames, strict=True):
        scores.append(score_shot(shot, frames, scorers, frames_per_shot, prompts[shot.index]))
        if on_shot is not None:
            on_shot(len(scores), len(shots))
    embeddings = torch.stack([s.embedding for s in scores])  # [N, D]
    reference_similarity = None
    if references:
        reference_embeddings = embed_images(scorers.image, list(references)).float().cpu()  # [R, D]
        reference_similarity = embeddings @ reference_embeddings.T
    return StoryEvaluation(story.name, tuple(scores), embeddings @ embeddings.T, reference_similarity)


# --- story folders -----------------------------------------------------------------------------------------------


def find_script(folder: str | os.PathLike, script: str | os.PathLike | None = None) -> Path:
    """A story folder's script: `script` when given, else the copy a run keeps in the folder (`StoryFolder.script`),
    else story.json in the folder or beside it (the demo's, or a folder made before runs kept a copy)."""
    if script is not None:
        return Path(script)
    folder = Path(folder)
    kept = StoryFolder(folder).script
    for candidate in (kept, folder / SCRIPT_NAME, folder.parent / SCRIPT_NAME):
        if candidate.is_file():
            return candidate
    raise StoryFolderError(
        f"{folder} has no {kept.name} or {SCRIPT_NAME} in it, nor {SCRIPT_NAME} beside it: pass the script the story "
        "was made from with --script."
    )


def _check_is_story_folder(root: Path) -> None:
    if not root.is_dir():
        raise StoryFolderError(f"story folder {root} does not exist: give the story command's --out folder.")
    if not (root / "shots").is_dir():
        raise StoryFolderError(
            f"{root} is not a story folder (it has no shots/ folder): give the folder passed as --out to the story "
            "command (or the one Story Runner wrote)."
        )


def check_finished(
    folder: str | os.PathLike, story: Story, source: str = "the story", fix: str = "use the story it was made from"
) -> None:
    """Refuse in one sentence a folder that is no story folder, misses a shot of `story`, is unfinished or has extra."""
    root = Path(folder)
    _check_is_story_folder(root)
    layout = StoryFolder(root)
    shots = story.shots
    extra = layout.video(len(shots))
    if extra.is_file():
        raise StoryFolderError(f"{root} holds {extra.name} but {source} has only {len(shots)} shot(s): {fix}.")
    unfinished = [shot.index for shot in shots if not layout.is_finished(shot.index)]
    if not unfinished:
        return
    first = unfinished[0]
    if any(layout.is_finished(index) for index in range(first + 1, len(shots))):
        raise StoryFolderError(
            f"shot {first + 1} of {root} is missing ({layout.video(first).relative_to(root)} or its bank) while later "
            f"shots are there: regenerate it with the story command's --from-shot {first + 1}, then evaluate."
        )
    raise StoryFolderError(
        f"the story in {root} is unfinished ({first} of {len(shots)} shots done): run the story command again with "
        "the same --out to finish it, then evaluate."
    )


def finished_story(folder: str | os.PathLike, script: str | os.PathLike | None = None) -> Story:
    """The story of a finished story folder, read from its script (see `find_script`)."""
    _check_is_story_folder(Path(folder))
    script_path = find_script(folder, script)
    story = load_story(script_path)
    check_finished(folder, story, f"the script {script_path}", "pass the script this story was made from with --script")
    layout = StoryFolder(Path(folder))
    changed = first_shot_made_otherwise(layout, story)
    if changed is not None:
        fix = "leave --script out to use the copy the folder keeps" if layout.script.is_file() else \
            "pass the script it was made from with --script"
        raise StoryFolderError(f"the script {script_path} is not the one the story in {folder} was made from (shot "
                               f"{changed + 1} differs): {fix}.")
    return story


def folder_shot_frames(folder: str | os.PathLike, story: Story) -> Iterator[torch.Tensor]:
    """Each shot's frames read from its mp4, one shot at a time."""
    layout = StoryFolder(Path(folder))
    for shot in story.shots:
        yield read_mp4(layout.video(shot.index))


def folder_references(folder: str | os.PathLike) -> list[torch.Tensor]:
    """The images the story's memory started from (MR2V references, as fitted to the shot size); none for T2V."""
    initial = StoryFolder(Path(folder)).bank(-1)
    if not initial.is_dir():
        return []
    try:
        return load_bank(initial).image_list()
    except MemoryBankError as error:
        raise MemoryBankError(
            f"the initial memory of {folder} cannot be read ({error}): regenerate the story with --from-shot 1."
        ) from None




