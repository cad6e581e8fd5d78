"""`python -m storymem_core evaluate STORY_FOLDER...`: score finished stories, write evaluation.json and pictures.

With several folders a side-by-side table is printed and the comparison goes to --out. Every folder is checked before
a model loads.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from ..evaluation import check_frames_per_shot, evaluate_story, finished_story, folder_references, folder_shot_frames
from ..evaluation_report import (
    PAPER_ROLES,
    QUICK_ROLES,
    load_paper_scorers,
    load_scorers,
    paper_table,
    shot_table,
    summary_table,
    untrained_note,
    write_comparison,
    write_paper_report,
    write_report,
)
from ..files import write_json
from ..model_roles import find_model_files, parse_device
from ..paper_evaluation import evaluate_story_paper, set_summary
from ..story import Story


def _names(folders: Sequence[Path]) -> list[str]:
    """Short, distinct column names: the folder names, or their paths where two share a name."""
    names = [folder.name for folder in folders]
    return names if len(set(names)) == len(names) else [str(folder) for folder in folders]


def evaluate_command(args: argparse.Namespace) -> int:
    check_frames_per_shot(args.frames_per_shot)
    folders = [Path(folder) for folder in args.folders]
    stories = [finished_story(folder, args.script) for folder in folders]  # every folder checked before a model loads
    files = find_model_files(args.models_dir, list(PAPER_ROLES if args.paper else QUICK_ROLES))
    note = untrained_note(files, args.models_dir)
    if note is not None:
        print(note)  # first, and again under the table
    code = _paper(args, files, folders, stories) if args.paper else _quick(args, files, folders, stories)
    if note is not None:
        print(f"\n{note}")
    return code


def _quick(args: argparse.Namespace, files: dict[str, Path], folders: list[Path], stories: list[Story]) -> int:
    """CLIP ViT-B/32 and its aesthetic head: quick scores for choosing between takes."""
    scorers = load_scorers(files, args.open_clip_name, parse_device(args.device))
    evaluations = []
    for folder, story in zip(folders, stories):
        with tqdm(total=len(story.shots), desc=f"evaluate {folder.name}", unit="shot") as bar:
            evaluation = evaluate_story(story, folder_shot_frames(folder, story), scorers, folder_references(folder),
                                        args.frames_per_shot, on_shot=lambda done, total: bar.update(done - bar.n))
        evaluations.append(evaluation)
        written = write_report(evaluation, folder)
        print(f"{folder}: '{story.name}', {len(story.shots)} shot(s)\n{shot_table(evaluation)}")
        print(f"written: {', '.join(path.name for path in written)} in {folder}\n")
    names = _names(folders)
    print(summary_table(evaluations, names))
    if len(evaluations) > 1:
        written = write_comparison(evaluations, names, args.out)
        print(f"\ncomparison: {', '.join(str(path) for path in written)}")
    return 0


def _paper(args: argparse.Namespace, files: dict[str, Path], folders: list[Path], stories: list[Story]) -> int:
    """The paper's mode: ViCLIP and the ViT-L/14 aesthetic head, its five columns beside its StoryMem row."""
    scorers = load_paper_scorers(files, parse_device(args.device))
    evaluations = []
    for folder, story in zip(folders, stories):
        with tqdm(total=len(story.shots), desc=f"evaluate {folder.name} (paper)", unit="shot") as bar:
            evaluations.append(evaluate_story_paper(story, folder_shot_frames(folder, story), scorers,
                                                    on_shot=lambda done, total: bar.update(done - bar.n)))
        written = write_paper_report(evaluations[-1], folder)
        print(f"written: {', '.join(path.name for path in written)} in {folder}")
    names = _names(folders)
    print("\n" + paper_table(evaluations, names))
    if len(evaluations) > 1:
        table = {name: evaluation.summary() for name, evaluation in zip(names, evaluations)}
        path = write_json({"stories": table, "mean": set_summary(evaluations)},
                          Path(args.out) / "comparison_paper.json")
        print(f"\ncomparison: {path}")
    return 0
