"""Evaluate Story: a story's aesthetic, prompt-following, consistency and smoothness scores, shown on the node.

The shots come either as IMAGE inputs (from shot nodes) or from a story folder Story Runner wrote; the
numbers and their definitions are the engine's (storymem_core/evaluation.py, docs/evaluation.md).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from storymem_core.choices import EvaluationMode
from storymem_core.errors import SettingsError, StoryFolderError
from storymem_core.evaluation import (
    FRAMES_PER_SHOT,
    Scorers,
    StoryEvaluation,
    check_finished,
    evaluate_story,
    folder_references,
    folder_shot_frames,
)
from storymem_core.evaluation_pictures import heatmap, score_chart
from storymem_core.evaluation_report import (
    PAPER_ROLES,
    load_paper_scorers,
    paper_table,
    summary_table,
    write_paper_report,
    write_report,
)
from storymem_core.files import save_picture
from storymem_core.model_roles import role_file
from storymem_core.paper_evaluation import PaperEvaluation, evaluate_story_paper
from storymem_core.story import Story
from storymem_core.video import image_batch_to_frames
from storymem_core.weights.scorer_files import load_aesthetic_head, load_clip_text_encoder, load_keyframe_encoder

from . import host
from .inputs import model_file
from .loaders import AESTHETIC_HEAD, NO_AESTHETIC_HEAD
from .output_nodes import OPTIONAL_SHOTS
from .previews import SUBFOLDER
from .types import STORY

CATEGORY = "StoryMem/output"
SHOT_INPUTS = OPTIONAL_SHOTS + 1  # shot_1 .. shot_8, as Combine Shots takes them


def _picture_entry(picture: Image.Image, kind: str) -> dict:
    """A picture in the host's temp folder, named by its pixels, as a `ui.images` entry."""
    name = f"evaluation_{kind}_{hashlib.sha1(picture.tobytes() + str(picture.size).encode()).hexdigest()[:20]}.png"
    path = host.temp_dir() / SUBFOLDER / name
    if not path.exists():
        save_picture(picture, path)
    return {"filename": name, "subfolder": SUBFOLDER, "type": "temp"}


def _as_image_batch(picture: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(picture.convert("RGB")).copy()).float().div(255)[None]


def resolve_story_folder(text: str) -> Path:
    """A story folder inside the output folder: a relative path, or Story Runner's video_path (its film) or folder."""
    given = Path(text.strip())
    output = host.output_dir().resolve()
    path = (given if given.is_absolute() else output / given).resolve()
    if not path.is_relative_to(output):
        raise StoryFolderError(
            f"story_folder '{text}' is outside the output folder {output}: give a folder inside it, such as "
            "storymem/stories/<story>, or connect Story Runner's video_path."
        )
    return path.parent if path.is_file() else path


def _check_connected(story: Story, numbers: list[int]) -> None:
    """Shot inputs are shot_1 .. shot_N, N the story's shot count: a gap or another count would misplace prompts."""
    count = len(story.shots)
    if numbers != list(range(1, len(numbers) + 1)):
        missing = min(set(range(1, max(numbers) + 1)) - set(numbers))
        raise SettingsError(
            f"shot_{missing} is not connected but later shots are: connect the shots in story order from shot_1."
        )
    if len(numbers) != count:
        more = " or give story_folder" if count > SHOT_INPUTS else ""
        raise SettingsError(
            f"{len(numbers)} shot(s) are connected but '{story.name}' has {count}: connect one per shot{more}."
        )


class EvaluateStory:
    DESCRIPTION = (
        "Scores a finished story as StoryMem's paper does: aesthetic quality (LAION head on CLIP), prompt following "
        "(CLIP text-image), cross-shot consistency (CLIP image-image, shown as a heatmap) and within-shot smoothness."
    )

    @classmethod
    def INPUT_TYPES(cls):
        heads = [NO_AESTHETIC_HEAD, *host.model_names("clip_vision")]
        shot_tip = "Shot {}'s frames (connect shots in story order, or give story_folder)."
        shots = {f"shot_{i}": ("IMAGE", {"tooltip": shot_tip.format(i)}) for i in range(1, SHOT_INPUTS + 1)}
        return {
            "required": {
                "story": (STORY, {"tooltip": "The story the shots were made from (its prompts, scenes and cuts)."}),
                "clip_model": model_file(
                    "clip_vision",
                    "open_clip CLIP weights with both towers, e.g. open_clip_model.safetensors of "
                    "timm/vit_base_patch32_clip_224.openai",
                ),
                "open_clip_name": ("STRING", {"default": "ViT-B-32-quickgelu",
                                              "tooltip": "open_clip model name the weights belong to."}),
                "aesthetic_head": (heads, {
                    "default": AESTHETIC_HEAD if AESTHETIC_HEAD in heads else NO_AESTHETIC_HEAD,
                    "tooltip": f"LAION aesthetic head for the aesthetic score ({AESTHETIC_HEAD}); none leaves it out.",
                }),
                "frames_per_shot": ("INT", {"default": FRAMES_PER_SHOT, "min": 1, "max": 200,
                                            "tooltip": "Frames sampled evenly from each shot for the CLIP scores."}),
            },
            "optional": {
                "story_folder": ("STRING", {"default": "", "tooltip": (
                    "Instead of shot inputs: a story folder under the output folder (or Story Runner's video_path); "
                    "evaluation.json and pictures are saved in it.")}),
                **shots,
                "reference_images": ("IMAGE", {"tooltip": "MR2V reference images to score consistency against "
                                                          "(with shot inputs)."}),
                "mode": (EvaluationMode.names(), {"default": EvaluationMode.QUICK, "tooltip": (
                    "quick: the CLIP model and head above. paper: as the StoryMem paper scores ST-Bench (ViCLIP-L/14, "
                    "LAION ViT-L/14 aesthetic, VBench's scales), its StoryMem row beside ours; reads "
                    "ViClip-InternVid-10M-FLT.pth, vit_large_patch14_clip_224.openai.safetensors and "
                    "sa_0_4_vit_l_14_linear.pth from models/clip_vision (the inputs above are then unused).")}),
            },
        }

    RETURN_TYPES = ("STRING", "IMAGE", "IMAGE")
    RETURN_NAMES = ("summary", "heatmap", "scores")
    OUTPUT_TOOLTIPS = ("The story's scores as a table.", "Shot x shot consistency heatmap.",
                       "Per-shot score chart (paper mode: the ViCLIP heatmap again).")
    FUNCTION = "evaluate"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True

    def evaluate(self, story: Story, clip_model: str, open_clip_name: str, aesthetic_head: str, frames_per_shot: int,
                 mode: str = EvaluationMode.QUICK, story_folder: str = "", reference_images: torch.Tensor | None = None,
                 **shots: torch.Tensor) -> dict:
        connected = sorted((int(name.split("_")[1]), frames) for name, frames in shots.items() if frames is not None)
        folder = resolve_story_folder(story_folder) if story_folder.strip() else None
        if folder is not None:
            check_finished(folder, story, "the connected story", "connect the story this folder was made from")
        elif not connected:
            raise SettingsError("Evaluate Story has no shots: connect shot_1 ... in story order, or give story_folder.")
        else:
            _check_connected(story, [number for number, _ in connected])
        progress = host.ProgressSteps(len(story.shots), f"evaluate '{story.name}'")
        if folder is not None:
            frames, references = folder_shot_frames(folder, story), folder_references(folder)
        else:
            frames = (image_batch_to_frames(batch) for _, batch in connected)
            references = [] if reference_images is None else list(image_batch_to_frames(reference_images))
        if mode == EvaluationMode.PAPER:
            names = host.model_names("clip_vision")
            files = {role: host.model_path("clip_vision", role_file(names, role)) for role in PAPER_ROLES}
            paper = evaluate_story_paper(story, frames, load_paper_scorers(files, host.device()), on_shot=progress)
            if folder is not None:
                write_paper_report(paper, folder)
            return self._paper_result(paper)
        scorers = self._scorers(clip_model, open_clip_name, aesthetic_head)
        evaluation = evaluate_story(story, frames, scorers, references, frames_per_shot, on_shot=progress)
        if folder is not None:
            write_report(evaluation, folder)
        return self._result(evaluation)

    @staticmethod
    def _scorers(clip_model: str, open_clip_name: str, aesthetic_head: str) -> Scorers:
        path = host.model_path("clip_vision", clip_model)
        image = load_keyframe_encoder(path, open_clip_name, host.device())
        head = None
        if aesthetic_head != NO_AESTHETIC_HEAD:
            head = load_aesthetic_head(host.model_path("clip_vision", aesthetic_head))
            head.check_fits(image)
        return Scorers(image, load_clip_text_encoder(path, open_clip_name, host.device()), head)

    @staticmethod
    def _result(evaluation: StoryEvaluation) -> dict:
        title = [evaluation.name]
        pictures = {"heatmap": heatmap([evaluation], title), "scores": score_chart([evaluation], title)}
        summary = summary_table([evaluation], title)
        ui = {"images": [_picture_entry(picture, kind) for kind, picture in pictures.items()], "text": [summary]}
        images = (_as_image_batch(pictures["heatmap"]), _as_image_batch(pictures["scores"]))
        return {"ui": ui, "result": (summary, *images)}

    @staticmethod
    def _paper_result(evaluation: PaperEvaluation) -> dict:
        picture = heatmap([evaluation], [f"{evaluation.name} (ViCLIP)"])
        summary = paper_table([evaluation], [evaluation.name])
        image = _as_image_batch(picture)
        return {"ui": {"images": [_picture_entry(picture, "paper_heatmap")], "text": [summary]},
                "result": (summary, image, image)}


NODE_CLASS_MAPPINGS = {"StoryMemEvaluateStory": EvaluateStory}
NODE_DISPLAY_NAME_MAPPINGS = {"StoryMemEvaluateStory": "Evaluate Story"}
