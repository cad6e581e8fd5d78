"""A story evaluation's report: the scorers found in a models folder, evaluation.json and pictures per folder, the
tables `evaluate` prints, the comparison of several folders (the command itself: `commands/evaluate.py`).

Each folder gets evaluation.json, evaluation_heatmap.png, evaluation_scores.png and evaluation_frames.png; several
folders (one story made with several settings, say) also get comparison.json and two comparison pictures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import torch

from .choices import Quality
from .evaluation import (
    RESULT_FILE,
    SUMMARY_LABELS,
    Scorers,
    StoryEvaluation,
)
from .evaluation_pictures import contact_sheet, heatmap, score_chart
from .files import save_picture, write_json
from .paper_evaluation import (
    OUR_DEFINITIONS,
    PAPER_COLUMNS,
    PAPER_RESULT_FILE,
    PAPER_STORYMEM_ROW,
    PaperEvaluation,
    PaperScorers,
    set_summary,
)
from .weights.loading import is_test_model
from .weights.scorer_files import (
    load_aesthetic_head,
    load_clip_text_encoder,
    load_keyframe_encoder,
    load_paper_image_encoder,
    load_viclip,
)

PICTURES = {"heatmap": "evaluation_heatmap.png", "scores": "evaluation_scores.png", "frames": "evaluation_frames.png"}


QUICK_ROLES = ("clip", Quality.AESTHETIC)


def untrained_note(files: Mapping[str, Path], models_dir: str | Path) -> str | None:
    """A sentence when the scorer `files` (found in `models_dir`) are the pack's tiny random test models (the demo's):
    their numbers say nothing about a story, and a reader must not take them for scores."""
    tiny = [path.name for path in files.values() if is_test_model(path)]
    if not tiny:
        return None
    return (f"note: the scorers in {models_dir} are tiny random test models, as the demo writes them "
            f"({', '.join(tiny)}), so these numbers mean nothing about the story; score with the published files "
            "(README: Model files).")


def load_scorers(files: Mapping[str, Path], open_clip_name: str, device: torch.device) -> Scorers:
    """The CLIP towers and the LAION aesthetic head from their files (by role: clip, the aesthetic head)."""
    image = load_keyframe_encoder(files["clip"], open_clip_name, device)
    head = load_aesthetic_head(files[Quality.AESTHETIC])
    head.check_fits(image)
    return Scorers(image, load_clip_text_encoder(files["clip"], open_clip_name, device), head)


def write_report(evaluation: StoryEvaluation, folder: str | Path) -> list[Path]:
    """evaluation.json and the three pictures into `folder`, each written atomically."""
    folder = Path(folder)
    title = f"{evaluation.name} ({folder.name})"
    return [
        write_json(evaluation.to_json(), folder / RESULT_FILE),
        save_picture(heatmap([evaluation], [title]), folder / PICTURES["heatmap"]),
        save_picture(score_chart([evaluation], [title]), folder / PICTURES["scores"]),
        save_picture(contact_sheet(evaluation, title), folder / PICTURES["frames"]),
    ]


def write_comparison(evaluations: Sequence[StoryEvaluation], names: Sequence[str], out: str | Path) -> list[Path]:
    out = Path(out)
    table = {name: evaluation.summary() for name, evaluation in zip(names, evaluations)}
    return [
        write_json({"stories": table}, out / "comparison.json"),
        save_picture(heatmap(evaluations, names), out / "comparison_heatmap.png"),
        save_picture(score_chart(evaluations, names), out / "comparison_scores.png"),
    ]


def _cell(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary_table(evaluations: Sequence[StoryEvaluation], names: Sequence[str]) -> str:
    """Story-level scores, a column per story."""
    label_width = max(len(label) for label in SUMMARY_LABELS.values())
    widths = [max(8, len(name)) for name in names]
    lines = [" " * label_width + "  " + "  ".join(name.rjust(w) for name, w in zip(names, widths))]
    summaries = [e.summary() for e in evaluations]
    for key, label in SUMMARY_LABELS.items():
        cells = "  ".join(_cell(summary[key]).rjust(width) for summary, width in zip(summaries, widths))
        lines.append(f"{label.ljust(label_width)}  {cells}")
    return "\n".join(lines)


SHOT_COLUMNS = (("aesthetic", 9), ("prompt_following", 6), ("consistency", 11), ("consistency_in_scene", 8),
                ("smoothness", 10))


def shot_table(evaluation: StoryEvaluation) -> str:
    """Per-shot scores of one story."""
    lines = ["shot  scene  cut   aesthetic  prompt  consistency  in scene  smoothness"]
    for row in evaluation.to_json()["shots"]:
        scores = [_cell(row[key]).rjust(width) for key, width in SHOT_COLUMNS]
        lines.append(f"{row['shot']:4d}  {row['scene']:5d}  {'yes' if row['cut'] else 'no':4s}  {'  '.join(scores)}")
    return "\n".join(lines)


# --- the paper's mode ---------------------------------------------------------------------------------------------

PAPER_ROLES = ("viclip", "clip_l14", "aesthetic_l14")
PAPER_HEATMAP = "evaluation_paper_heatmap.png"


def load_paper_scorers(files: Mapping[str, Path], device: torch.device) -> PaperScorers:
    """ViCLIP, CLIP ViT-L/14 and its LAION head from their files (by role: viclip, clip_l14, aesthetic_l14)."""
    image = load_paper_image_encoder(files["clip_l14"], device)
    head = load_aesthetic_head(files["aesthetic_l14"], published="sa_0_4_vit_l_14_linear.pth")
    head.check_fits(image)
    return PaperScorers(load_viclip(files["viclip"], device), image, head)


def write_paper_report(evaluation: PaperEvaluation, folder: str | Path) -> list[Path]:
    """evaluation_paper.json and the ViCLIP shot x shot heatmap into `folder`."""
    folder = Path(folder)
    return [write_json(evaluation.to_json(), folder / PAPER_RESULT_FILE),
            save_picture(heatmap([evaluation], [f"{evaluation.name} (ViCLIP)"]), folder / PAPER_HEATMAP)]


def paper_table(evaluations: Sequence[PaperEvaluation], names: Sequence[str]) -> str:
    """The paper's five columns: a row per story, their mean over the set when there are several, the paper's
    StoryMem row, and the definitions that are ours."""
    rows = [(name, evaluation.summary()) for name, evaluation in zip(names, evaluations)]
    if len(evaluations) > 1:
        rows.append((f"mean of {len(evaluations)} stories", set_summary(evaluations)))
    rows.append(("paper: StoryMem (Table 1)", PAPER_STORYMEM_ROW))
    label_width = max(len(name) for name, _ in rows)
    headers = ["aesthetic", "PF global*", "PF shot", "cons. all", "cons. top-10*"]
    lines = [" " * label_width + "  " + "  ".join(headers)]
    for name, summary in rows:
        cells = [_cell(summary[key], 4).rjust(len(header)) for key, header in zip(PAPER_COLUMNS, headers)]
        lines.append(f"{name.ljust(label_width)}  {'  '.join(cells)}")
    lines.append("PF: prompt following (ViCLIP text-video); cons.: cross-shot consistency (ViCLIP video-video); "
                 "aesthetic: LAION ViT-L/14 head / 10.")
    lines += [f"* {PAPER_COLUMNS[key]}: {text}." for key, text in OUR_DEFINITIONS.items()]
    return "\n".join(lines)
