"""Story evaluation: known answers on synthetic frames, bad folders, the CLI on the demo's story and the node."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import call
from PIL import Image
from safetensors.torch import load_file, save_file

from nodes import host
from storymem_core import tiny_models as tiny
from storymem_core.choices import EvaluationMode
from storymem_core.commands.cli import main
from storymem_core.commands.demo import run_demo
from storymem_core.errors import CheckpointError, GenerationInterrupted, StoryMemError
from storymem_core.evaluation import Scorers, evaluate_story, sample_indices, smoothness
from storymem_core.evaluation_report import QUICK_ROLES, untrained_note
from storymem_core.model_roles import find_model_files
from storymem_core.paper_evaluation import PAPER_COLUMNS, PAPER_STORYMEM_ROW, PaperEvaluation, PaperShot
from storymem_core.story import loads_story
from storymem_core.weights.scorer_files import load_clip_text_encoder, load_keyframe_encoder

GRID = 4
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}


class GridCLIP:
    """A tiny CLIP built so that images and prompts agree: an image is its 4 x 4 grid of mean colours (centred),
    a prompt is the image of a plain field in the colour it names. Nearby pixels give nearby embeddings."""

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        grid = F.adaptive_avg_pool2d(frames.permute(0, 3, 1, 2).float() / 255, GRID) - 0.5  # [T, 3, 4, 4]
        return F.normalize(grid.flatten(1), dim=-1)

    def embed_text(self, prompts) -> torch.Tensor:
        fields = [next(colour for name, colour in COLOURS.items() if name in prompt) for prompt in prompts]
        return self.embed(torch.tensor(fields, dtype=torch.uint8)[:, None, None, :].expand(-1, 32, 32, 3).contiguous())


def story_of(prompts: list[str], cuts: list[bool] | None = None, scenes: list[int] | None = None):
    scenes = scenes or [1] * len(prompts)
    cuts = cuts or [True] * len(prompts)
    grouped = {}
    for prompt, cut, scene in zip(prompts, cuts, scenes):
        grouped.setdefault(scene, ([], []))
        grouped[scene][0].append(prompt)
        grouped[scene][1].append(cut)
    scenes = [{"scene_num": n, "video_prompts": p, "cut": c} for n, (p, c) in grouped.items()]
    script = {"story_overview": "test", "scenes": scenes}
    return loads_story(json.dumps(script))


def smooth_image(seed: int, size: int = 48) -> torch.Tensor:
    """uint8 [size, size, 3]: a few random colours blended smoothly, so a shift of a pixel or two changes little."""
    colours = torch.rand(1, 3, 3, 3, generator=torch.Generator().manual_seed(seed))
    image = F.interpolate(colours, size=(size, size), mode="bilinear", align_corners=True)[0]
    return (image.permute(1, 2, 0) * 255).round().to(torch.uint8)


def moving_shot(image: torch.Tensor, frames: int = 6) -> torch.Tensor:
    """The image panned one pixel per frame: a shot whose frames differ a little."""
    return torch.stack([torch.roll(image, shifts=t, dims=1) for t in range(frames)])


def plain_shot(colour: tuple[int, int, int], frames: int = 4) -> torch.Tensor:
    return torch.tensor(colour, dtype=torch.uint8).expand(frames, 32, 32, 3).contiguous()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo's finished story and its tiny models (one run for the module)."""
    out = tmp_path_factory.mktemp("demo")
    run_demo(out)
    return out


# ------------------------------------------------------------------ known answers


def test_evaluate_identical_shots_have_consistency_one():
    clip = GridCLIP()
    shot = moving_shot(smooth_image(0))
    evaluation = evaluate_story(story_of(["a red door", "a red door"]), [shot, shot.clone()], Scorers(clip, clip))
    assert evaluation.summary()["consistency"] == pytest.approx(1.0, abs=1e-6)
    assert evaluation.shot_consistency(0) == pytest.approx(1.0, abs=1e-6)


def test_evaluate_identical_shots_have_consistency_one_on_the_tiny_open_clip(demo):
    clip_file = demo / "models-seed0" / "clip_vision" / tiny.CLIP_FILE
    scorers = Scorers(load_keyframe_encoder(clip_file, "unused", torch.device("cpu")),
                      load_clip_text_encoder(clip_file, "unused", torch.device("cpu")))
    shot = moving_shot(smooth_image(3))
    evaluation = evaluate_story(story_of(["a fox", "a fox"]), [shot, shot.clone()], scorers)
    assert evaluation.similarity[0, 1].item() == pytest.approx(1.0, abs=1e-5)


def test_evaluate_unrelated_shots_score_lower_than_the_same_image_shifted():
    clip = GridCLIP()
    base = smooth_image(1)
    shots = [moving_shot(base), moving_shot(torch.roll(base, shifts=(2, 2), dims=(0, 1))), moving_shot(smooth_image(2))]
    evaluation = evaluate_story(story_of(["a red room"] * 3), shots, Scorers(clip, clip))
    shifted, unrelated = evaluation.similarity[0, 1].item(), evaluation.similarity[0, 2].item()
    assert shifted > 0.9 and unrelated < shifted - 0.5


def test_evaluate_frames_matching_their_prompt_score_higher():
    clip = GridCLIP()
    shots = [plain_shot(COLOURS["red"]), plain_shot(COLOURS["blue"])]
    matching = evaluate_story(story_of(["a red barn at dusk", "a blue lake"]), shots, Scorers(clip, clip))
    swapped = evaluate_story(story_of(["a blue lake", "a red barn at dusk"]), shots, Scorers(clip, clip))
    for index in range(2):
        assert matching.shots[index].prompt_following > swapped.shots[index].prompt_following
    assert matching.shots[0].prompt_following == pytest.approx(1.0, abs=1e-6)
    assert matching.summary()["prompt_following"] > swapped.summary()["prompt_following"]


def test_evaluate_consistency_within_scenes_and_to_references():
    clip = GridCLIP()
    red, blue = plain_shot(COLOURS["red"]), plain_shot(COLOURS["blue"])
    story = story_of(["red", "red", "blue"], cuts=[True, False, True], scenes=[1, 1, 2])
    evaluation = evaluate_story(story, [red, red, blue], Scorers(clip, clip), references=[red[0]])
    summary = evaluation.summary()
    assert summary["consistency_in_scene"] == pytest.approx(1.0, abs=1e-6)  # scene 1 is two red shots
    assert summary["consistency"] < summary["consistency_in_scene"]  # red against blue across scenes
    assert evaluation.shot_consistency(2, in_scene=True) is None  # alone in scene 2
    assert evaluation.shot_reference_consistency(0) == pytest.approx(1.0, abs=1e-6)
    assert evaluation.shot_reference_consistency(2) < 0


def test_evaluate_smoothness_is_one_for_a_still_shot_and_zero_for_full_flicker():
    still = plain_shot((90, 120, 30), frames=5)
    flicker = torch.stack([torch.full((8, 8, 3), 255 * (t % 2), dtype=torch.uint8) for t in range(5)])
    assert smoothness(still) == 1.0
    assert smoothness(flicker) == 0.0
    assert smoothness(still[:1]) is None
    assert 0.9 < smoothness(moving_shot(smooth_image(4))) < 1.0


def test_evaluate_samples_frames_evenly_from_first_to_last():
    assert sample_indices(81, 5) == [0, 20, 40, 60, 80]
    assert sample_indices(3, 8) == [0, 1, 2]
    with pytest.raises(StoryMemError, match="frames per shot = 0 samples nothing"):
        sample_indices(10, 0)


def test_evaluate_embeds_each_sampled_frame_once():
    calls = []

    class CountingCLIP(GridCLIP):
        def embed(self, frames):
            calls.append(len(frames))
            return super().embed(frames)

    shots = [plain_shot(COLOURS["red"], 20), plain_shot(COLOURS["blue"], 20)]
    evaluation = evaluate_story(story_of(["red", "blue"]), shots, Scorers(CountingCLIP(), GridCLIP()),
                                frames_per_shot=4)
    assert calls == [4, 4]
    assert [shot.frame_indices for shot in evaluation.shots] == [(0, 6, 13, 19)] * 2


# ------------------------------------------------------------------ CLIP text tower


def test_evaluate_text_tower_loads_from_the_clip_file_and_a_vision_only_file_is_refused(demo, tmp_path):
    clip_file = demo / "models-seed0" / "clip_vision" / tiny.CLIP_FILE
    text = load_clip_text_encoder(clip_file, "unused", torch.device("cpu"))
    embeddings = text.embed_text(["a blue kite", "an old man"])
    assert embeddings.shape == (2, tiny.CLIP["embed_dim"])
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(2))
    assert not torch.allclose(embeddings[0], embeddings[1])
    vision_only = tmp_path / "open_clip_vision.safetensors"
    save_file({k: v for k, v in load_file(str(clip_file)).items() if k.startswith("visual.")}, str(vision_only))
    with pytest.raises(CheckpointError, match="holds only CLIP's image tower, but prompt following needs its text"):
        load_clip_text_encoder(vision_only, "ViT-B-32-quickgelu")


# ------------------------------------------------------------------ CLI


def evaluate_cli(*args: str) -> int:
    return main(["evaluate", *map(str, args)])


def test_evaluate_cli_on_the_demo_story_writes_json_and_pictures(demo, capsys):
    folder = demo / "story"
    assert evaluate_cli(folder, "--models-dir", demo / "models-seed0") == 0
    result = json.loads((folder / "evaluation.json").read_text())
    assert result["story"] == "The Blue Kite" and [shot["shot"] for shot in result["shots"]] == [1, 2, 3]
    assert [shot["cut"] for shot in result["shots"]] == [True, False, True]
    assert [shot["scene"] for shot in result["shots"]] == [1, 1, 2]
    assert all(shot["frames"][0] == 0 and shot["aesthetic"] is not None for shot in result["shots"])
    assert [round(result["similarity"][i][i], 5) for i in range(3)] == [1.0, 1.0, 1.0]
    assert set(result["summary"]) == {"aesthetic", "prompt_following", "consistency", "consistency_in_scene",
                                      "consistency_to_references", "smoothness"}
    assert result["summary"]["consistency_to_references"] is None  # a T2V story has no references
    for name in ("evaluation_heatmap.png", "evaluation_scores.png", "evaluation_frames.png"):
        with Image.open(folder / name) as picture:
            assert picture.width > 100 and picture.height > 100
    printed = capsys.readouterr().out
    assert "consistency, all shot pairs" in printed and "written: evaluation.json" in printed
    # the demo's scorers are random: said before the table and again under it
    assert printed.count("tiny random test models") == 2 and "mean nothing" in printed.splitlines()[-1]


def test_evaluate_says_nothing_of_test_models_for_published_files(demo, tmp_path):
    """A CLIP file without the tiny models' stored config (as every published one) draws no note."""
    models = tmp_path / "models"
    (models / "clip_vision").mkdir(parents=True)
    tensors = load_file(demo / "models-seed0" / "clip_vision" / tiny.CLIP_FILE)
    save_file(tensors, str(models / "clip_vision" / tiny.CLIP_FILE))
    shutil.copy(demo / "models-seed0" / "clip_vision" / tiny.AESTHETIC_FILE, models / "clip_vision")
    assert untrained_note(find_model_files(models, list(QUICK_ROLES)), models) is None
    demo_models = demo / "models-seed0"
    assert "tiny random test models" in untrained_note(find_model_files(demo_models, list(QUICK_ROLES)), demo_models)


def test_evaluate_cli_compares_folders_side_by_side(demo, tmp_path, capsys):
    other = tmp_path / "second_setting"
    shutil.copytree(demo / "story", other)
    shutil.copy(demo / "story.json", other / "story.json")
    out = tmp_path / "comparison"
    assert evaluate_cli(demo / "story", other, "--models-dir", demo / "models-seed0", "--out", out) == 0
    header = [line for line in capsys.readouterr().out.splitlines() if "second_setting" in line and "story" in line]
    assert header, "the side-by-side table names both folders"
    table = json.loads((out / "comparison.json").read_text())["stories"]
    assert set(table) == {"story", "second_setting"} and table["story"] == table["second_setting"]
    with Image.open(out / "comparison_heatmap.png") as both, Image.open(other / "evaluation_heatmap.png") as one:
        assert both.width > one.width * 1.5  # two heatmaps side by side
    assert (out / "comparison_scores.png").is_file()


def broken_copy(demo: Path, tmp_path: Path, damage: str) -> Path:
    folder = tmp_path / damage.replace(" ", "_")
    shutil.copytree(demo / "story", folder, ignore=shutil.ignore_patterns("evaluation*"))
    shutil.copy(demo / "story.json", folder / "story.json")
    if damage == "missing shot":
        (folder / "shots" / "shot_002.mp4").unlink()
        shutil.rmtree(folder / "banks" / "after_shot_002")
    elif damage == "unfinished story":
        shutil.rmtree(folder / "banks" / "after_shot_003")
    elif damage == "extra shot":
        shutil.copy(folder / "shots" / "shot_003.mp4", folder / "shots" / "shot_004.mp4")
    elif damage == "not a story folder":
        shutil.rmtree(folder / "shots")
    elif damage == "no script":  # a folder made before runs kept their script
        (folder / "story.json").unlink()
        (folder / "script.json").unlink()
        folder = tmp_path / "deeper" / "story"
        folder.parent.mkdir()
        shutil.move(tmp_path / damage.replace(" ", "_"), folder)
    return folder


def test_a_story_folder_keeps_its_script_and_evaluate_refuses_another(demo, tmp_path, capsys):
    folder = tmp_path / "story"
    shutil.copytree(demo / "story", folder, ignore=shutil.ignore_patterns("evaluation*"))
    kept = loads_story((folder / "script.json").read_text())
    assert kept == loads_story((demo / "story.json").read_text())  # the run's own script, every field
    assert evaluate_cli(folder, "--models-dir", demo / "models-seed0") == 0  # found without --script
    other = json.loads((demo / "story.json").read_text())
    other["scenes"][0]["video_prompts"][1] = "Another shot entirely."
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert evaluate_cli(folder, "--models-dir", demo / "models-seed0", "--script", tmp_path / "other.json") == 2
    assert re.search(r"other.json is not the one the story in .* was made from \(shot 2 differs\): leave --script "
                     "out to use the copy the folder keeps", capsys.readouterr().err)


@pytest.mark.parametrize("damage,expected", [
    ("missing shot", "shot 2 of .* is missing .* regenerate it with the story command's --from-shot 2"),
    ("unfinished story", r"is unfinished \(2 of 3 shots done\): run the story command again with the same --out"),
    ("extra shot", "holds shot_004.mp4 but the script .* has only 3 shot"),
    ("not a story folder", "is not a story folder .* no shots/ folder"),
    ("no script", "has no script.json or story.json in it, nor story.json beside it: pass the script .* with --script"),
])
def test_evaluate_cli_refuses_bad_folders_in_one_sentence(demo, tmp_path, capsys, damage, expected):
    folder = broken_copy(demo, tmp_path, damage)
    assert evaluate_cli(folder, "--models-dir", demo / "models-seed0") == 2
    stderr = capsys.readouterr().err.strip()
    assert len(stderr.splitlines()) == 1 and stderr.startswith("error: ") and "Traceback" not in stderr
    assert re.search(expected, stderr), stderr
    assert not (folder / "evaluation.json").exists()


def test_evaluate_cli_refuses_a_missing_folder_and_zero_frames_before_loading_models(demo, tmp_path, capsys):
    assert evaluate_cli(tmp_path / "nowhere", "--models-dir", tmp_path / "no_models") == 2
    assert f"story folder {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
    assert evaluate_cli(demo / "story", "--models-dir", demo / "models-seed0", "--frames-per-shot", "0") == 2
    assert "frames per shot = 0 samples nothing" in capsys.readouterr().err


# ------------------------------------------------------------------ node


@pytest.fixture
def comfy(demo, tmp_path):
    previous = host.use(host.StandaloneHost(demo / "models-seed0", tmp_path / "output"))
    yield tmp_path / "output"
    host.use(previous)


def node_inputs(**overrides):
    inputs = dict(clip_model=tiny.CLIP_FILE, open_clip_name="unused", aesthetic_head=tiny.AESTHETIC_FILE,
                  frames_per_shot=4)
    return inputs | overrides


def test_evaluate_node_scores_connected_shots_and_shows_the_heatmap(comfy):
    clip_story = story_of(["a red barn", "a red barn", "a blue lake"])
    shots = {f"shot_{i + 1}": frames.float() / 255 for i, frames in
             enumerate([plain_shot(COLOURS["red"]), plain_shot(COLOURS["red"]), plain_shot(COLOURS["blue"])])}
    (summary, heatmap_image, scores_image), ui = call("StoryMemEvaluateStory", story=clip_story, **node_inputs(),
                                                      **shots)
    assert "consistency, all shot pairs" in summary and ui["text"] == [summary]
    assert heatmap_image.dim() == 4 and heatmap_image.shape[-1] == 3 and scores_image.shape[0] == 1
    for entry in ui["images"]:
        assert (host.temp_dir() / entry["subfolder"] / entry["filename"]).is_file() and entry["type"] == "temp"


def test_evaluate_node_reads_a_story_folder_in_the_output_folder(comfy, demo):
    folder = comfy / "storymem" / "stories" / "blue_kite"
    shutil.copytree(demo / "story", folder)
    story = loads_story((demo / "story.json").read_text())
    inputs = node_inputs(story_folder=str(folder / "film.mp4"))  # Story Runner's video_path
    (summary, _, _), _ = call("StoryMemEvaluateStory", story=story, **inputs)
    assert json.loads((folder / "evaluation.json").read_text())["story"] == "The Blue Kite"
    assert (folder / "evaluation_heatmap.png").is_file() and "aesthetic" in summary


def test_evaluate_node_stops_when_cancelled(comfy):
    host.current().interrupt()
    with pytest.raises(GenerationInterrupted):
        call("StoryMemEvaluateStory", story=story_of(["red"]), **node_inputs(shot_1=torch.zeros(2, 32, 32, 3)))


@pytest.mark.parametrize("inputs,expected", [
    ({"shot_2": torch.zeros(2, 32, 32, 3)}, "shot_1 is not connected but later shots are"),
    ({"shot_1": torch.zeros(2, 32, 32, 3)}, "1 shot\\(s\\) are connected but 'story' has 2"),
    ({}, "has no shots: connect shot_1"),
    ({"story_folder": "../elsewhere"}, "is outside the output folder"),
])
def test_evaluate_node_refuses_shots_that_do_not_fit_the_story(comfy, inputs, expected):
    with pytest.raises(StoryMemError, match=expected):
        call("StoryMemEvaluateStory", story=story_of(["red", "blue"]), **node_inputs(**inputs))


# ------------------------------------------------------------------ the paper's mode


def test_evaluate_paper_cli_on_the_demo_story_fills_the_five_columns_beside_the_paper_row(demo, capsys):
    folder = demo / "story"
    assert evaluate_cli(folder, "--models-dir", demo / "models-seed0", "--paper") == 0
    result = json.loads((folder / "evaluation_paper.json").read_text())
    assert set(result["summary"]) == set(PAPER_COLUMNS) and all(v is not None for v in result["summary"].values())
    assert 0 < result["summary"]["aesthetic"] < 1  # the head's ~5 over 10
    assert result["paper_storymem"] == PAPER_STORYMEM_ROW and [s["shot"] for s in result["shots"]] == [1, 2, 3]
    assert all(len(shot["frames"]) == 8 for shot in result["shots"])  # ViCLIP's 8 frames, padded when fewer
    assert (folder / "evaluation_paper_heatmap.png").is_file()
    printed = capsys.readouterr().out
    assert "paper: StoryMem (Table 1)" in printed and "0.6133" in printed and "0.5337" in printed
    assert "the paper does not say" in printed  # where a definition is ours
    assert "tiny random test models" in printed


def test_evaluate_paper_names_each_missing_scorer_file_and_where_to_get_it(demo, tmp_path, capsys):
    models = tmp_path / "models"
    shutil.copytree(demo / "models-seed0", models)
    (models / "clip_vision" / tiny.VICLIP_FILE).unlink()
    assert evaluate_cli(demo / "story", "--models-dir", models, "--paper") == 2
    error = capsys.readouterr().err
    assert "ViClip-InternVid-10M-FLT.pth" in error and "OpenGVLab/VBench_Used_Models" in error


def test_evaluate_paper_top10_pairs_follow_the_prompts_and_consistency_reads_the_videos():
    similarity = torch.tensor([[1.0, 0.2, 0.9], [0.2, 1.0, 0.4], [0.9, 0.4, 1.0]])
    prompts = torch.tensor([[1.0, 0.1, 0.3], [0.1, 1.0, 0.8], [0.3, 0.8, 1.0]])
    shots = tuple(PaperShot(shot, (0,), 0.5, 0.2, 0.1) for shot in story_of(["a", "b", "c"]).shots)
    evaluation = PaperEvaluation("s", shots, similarity, prompts)
    assert evaluation.top_pairs() == [(1, 2), (0, 2), (0, 1)]  # all three pairs, most alike prompts first
    summary = evaluation.summary()
    assert summary["consistency_all"] == pytest.approx(0.5) and summary["consistency_top10"] == pytest.approx(0.5)


def test_evaluate_node_paper_mode_shows_the_paper_table(comfy, demo):
    folder = comfy / "storymem" / "stories" / "paper_kite"
    shutil.copytree(demo / "story", folder)
    story = loads_story((demo / "story.json").read_text())
    (summary, heatmap_image, _), ui = call("StoryMemEvaluateStory", story=story,
                                           **node_inputs(mode=EvaluationMode.PAPER, story_folder=str(folder)))
    assert "paper: StoryMem (Table 1)" in summary and ui["text"] == [summary] and heatmap_image.dim() == 4
    assert json.loads((folder / "evaluation_paper.json").read_text())["story"] == "The Blue Kite"
