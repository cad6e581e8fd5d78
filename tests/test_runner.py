"""The command-line story runner and the demo: artefacts, resume after a kill, --from-shot, missing files."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import cli_plan, story_script
from helpers import files_under as snapshot

from storymem_core.bank_files import load_bank
from storymem_core.commands.cli import _parser, main
from storymem_core.commands.demo import DEMO_FRAMES, DEMO_SHOTS
from storymem_core.errors import CheckpointError
from storymem_core.files import load_image
from storymem_core.model_roles import ROLES, find_model_files, required_roles
from storymem_core.sampling import SamplerSettings
from storymem_core.story_folder import StoryFolder
from storymem_core.tiny_models import AESTHETIC_FILE, write_reference_images, write_tiny_models
from storymem_core.video import read_mp4

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 5
MTIME = 1  # in a snapshot entry (bytes, mtime)
TINY = ["--size", "32x32", "--frames", str(FRAMES), "--steps", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_tiny_models(root)
    return root


def shot_files(snap: dict, shot: int) -> dict:
    tags = (f"shot_{shot:03d}", f"after_shot_{shot:03d}")
    return {name: value for name, value in snap.items() if any(tag in name for tag in tags)}


def story_bar(stderr: str) -> list[str]:
    """The shot counts the story's progress bar showed, one per redraw (tqdm redraws in place after a carriage
    return)."""
    return [part.split("|")[-1].split()[0] for part in stderr.split("\r") if part.startswith("story:")]


def test_demo_writes_every_artefact_and_a_film_of_the_summed_frames(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    folder = StoryFolder(tmp_path / "story")
    lengths = [len(read_mp4(folder.video(i))) for i in range(DEMO_SHOTS)]
    assert lengths == [
        DEMO_FRAMES,
        DEMO_FRAMES - 1,
        DEMO_FRAMES,
    ]  # shot 2 continues shot 1 (MI2V drops its given frame)
    assert len(read_mp4(folder.film)) == sum(lengths)
    banks = [load_bank(folder.bank(i)) for i in range(DEMO_SHOTS)]
    assert all(len(bank) >= 1 for bank in banks)
    assert folder.contact_sheet.is_file()
    captured = capsys.readouterr()
    assert "pixels are noise" in captured.out
    assert story_bar(captured.err)[-1] == f"{DEMO_SHOTS}/{DEMO_SHOTS}"
    loading = [part for part in re.split(r"[\r\n]", captured.err) if part.startswith("loading I2V experts")]
    assert loading and "100/100" in loading[-1]  # the experts' reading had a bar of its own, run to its end


def test_demo_memory_grows_and_the_demo_says_so(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    folder = StoryFolder(tmp_path / "story")
    banks = [load_bank(folder.bank(i)) for i in range(DEMO_SHOTS)]
    shown = re.findall(r"^shot (\d+)/(\d+): (\d+) keyframe\(s\) in memory \(\+(\d+) from this shot\)$", out, re.M)
    assert shown == [(str(i + 1), str(DEMO_SHOTS), str(len(bank)), str(sum(k.shot == i for k in bank.keyframes)))
                     for i, bank in enumerate(banks)]  # one line per shot, as its bank on disk holds
    final = re.search(r"^memory after the last shot: (\d+) keyframe\(s\) from shot\(s\) ([\d, ]+);", out, re.M)
    assert int(final[1]) == len(banks[-1]) >= 2 and len(final[2].split(", ")) >= 2  # keyframes of several shots
    assert len(banks[-1]) > len(banks[0])  # later shots added to what the first one gave


def test_story_command_mr2v_starts_from_the_reference_images(tmp_path, models_dir):
    references = write_reference_images(tmp_path / "refs", count=2, size=(64, 48))
    script = story_script(tmp_path, 2)
    argv = [
        "story",
        str(script),
        "--models-dir",
        str(models_dir),
        "--out",
        str(tmp_path / "out"),
        "--m2v-first-shot",
        "--mi2v",
        *TINY,
    ]
    for name in references:
        argv += ["--reference", str(tmp_path / "refs" / name)]
    assert main(argv) == 0
    folder = StoryFolder(tmp_path / "out")
    initial = load_bank(folder.bank(-1))
    assert [k.source for k in initial.keyframes] == ["reference", "reference"]
    after = load_bank(folder.bank(1))
    # reference images are the fixed first memory
    assert all(
        torch.equal(a.image, b.image) and a.source == b.source
        for a, b in zip(after.keyframes[:2], initial.keyframes, strict=True)
    )
    assert len(read_mp4(folder.film)) == FRAMES + FRAMES - 1  # shot 2 continues shot 1 (MI2V)


def test_from_shot_regenerates_from_the_bank_before_it(tmp_path, models_dir, capsys):
    script = story_script(tmp_path, 3)
    argv = ["story", str(script), "--models-dir", str(models_dir), "--out", str(tmp_path / "out"), *TINY]
    assert main(argv) == 0
    assert story_bar(capsys.readouterr().err)[-1] == "3/3"
    before = snapshot(tmp_path / "out")
    assert main(argv + ["--from-shot", "2", "--seed", "7"]) == 0
    shown = story_bar(capsys.readouterr().err)
    assert shown[:2] == ["0/3", "1/3"] and shown[-1] == "3/3"  # the finished shot 1 is counted done
    after = snapshot(tmp_path / "out")
    assert shot_files(after, 1) == shot_files(before, 1)
    assert after["banks/initial/bank.json"] == before["banks/initial/bank.json"]
    for shot in (2, 3):
        assert after[f"shots/shot_{shot:03d}.mp4"][MTIME] != before[f"shots/shot_{shot:03d}.mp4"][MTIME]


def mr2v_argv(tmp_path: Path, models_dir: Path, references: str, shots: int = 2) -> list[str]:
    """A story command starting from the reference images written into tmp_path/`references` (its name seeds them)."""
    names = write_reference_images(tmp_path / references, count=2, size=(32, 32), seed=len(references))
    argv = [
        "story",
        str(story_script(tmp_path, shots)),
        "--models-dir",
        str(models_dir),
        "--out",
        str(tmp_path / "out"),
        "--m2v-first-shot",
        *TINY,
    ]
    return argv + [arg for name in names for arg in ("--reference", str(tmp_path / references / name))]


def test_references_of_any_shape_give_shots_of_the_story_size(tmp_path, models_dir):
    tall = write_reference_images(tmp_path / "tall", count=1, size=(32, 64), seed=1)[0]
    wide = write_reference_images(tmp_path / "wide", count=1, size=(64, 32), seed=2)[0]
    argv = [
        "story",
        str(story_script(tmp_path, 3)),
        "--models-dir",
        str(models_dir),
        "--out",
        str(tmp_path / "out"),
        "--m2v-first-shot",
        *TINY,
        "--max-memory",
        "2",
        "--fixed-memory",
        "0",
        "--reference",
        str(tmp_path / "tall" / tall),
        "--reference",
        str(tmp_path / "wide" / wide),
    ]
    assert main(argv) == 0
    folder = StoryFolder(tmp_path / "out")
    assert [tuple(image.shape) for image in load_bank(folder.bank(-1)).image_list()] == [(32, 32, 3)] * 2
    assert all(read_mp4(folder.video(index)).shape[1:] == (32, 32, 3) for index in range(3))


def test_a_story_started_before_settings_were_recorded_resumes(tmp_path, models_dir):
    """Such a folder's initial bank holds the references as given, windowed: 3 references under max memory 2 keep 2."""
    names = write_reference_images(tmp_path / "refs", count=3, size=(32, 32), seed=4)
    references = [arg for name in names for arg in ("--reference", str(tmp_path / "refs" / name))]
    argv = [
        "story",
        str(story_script(tmp_path, 2)),
        "--models-dir",
        str(models_dir),
        "--out",
        str(tmp_path / "out"),
        "--m2v-first-shot",
        *TINY,
        "--max-memory",
        "2",
        "--fixed-memory",
        "1",
        *references,
    ]
    assert main(argv) == 0
    folder = StoryFolder(tmp_path / "out")
    folder.memory_settings.unlink()  # as the story command left folders before it recorded settings
    folder.video(1).unlink()  # stopped before its last shot
    assert len(load_bank(folder.bank(-1))) == 2
    assert main(argv) == 0 and folder.is_finished(1)


@pytest.mark.parametrize(
    "change,fragment",
    [
        (["--max-memory", "1", "--fixed-memory", "0"], "--max-memory 1 differs from the 10 the story in"),
        (["--fixed-memory", "0"], "--fixed-memory 0 differs from the 3 the story in"),
        ("other-refs", "the --reference images differ from those the story in"),
    ],
)
def test_a_plain_rerun_with_other_memory_settings_is_refused(
    tmp_path, models_dir, capsys, monkeypatch, change, fragment
):
    from storymem_core.commands import story

    argv = mr2v_argv(tmp_path, models_dir, "refs")
    assert main(argv) == 0
    before = snapshot(tmp_path / "out")
    capsys.readouterr()
    monkeypatch.setattr(story, "find_model_files", lambda *args: pytest.fail("models were looked for"))
    rerun = mr2v_argv(tmp_path, models_dir, change) if change == "other-refs" else argv + change
    assert main(rerun) == 2
    error = capsys.readouterr().err
    assert fragment in error and "--from-shot" in error and "a new --out folder" in error and error.count(". ") == 0
    assert snapshot(tmp_path / "out") == before


def test_from_shot_1_rebuilds_the_initial_bank_from_the_new_references_and_limits(tmp_path, models_dir):
    assert main(mr2v_argv(tmp_path, models_dir, "refs")) == 0
    argv = mr2v_argv(tmp_path, models_dir, "new-refs") + ["--max-memory", "1", "--fixed-memory", "0"]
    assert main(argv + ["--from-shot", "1"]) == 0
    folder = StoryFolder(tmp_path / "out")
    banks = [load_bank(folder.bank(i)) for i in (-1, 0, 1)]
    assert [(bank.max_size, bank.fixed, len(bank)) for bank in banks] == [(1, 0, 1)] * 3
    assert torch.equal(banks[0].keyframes[0].image, load_image(tmp_path / "new-refs" / "storymem_reference_2.png"))
    before = shot_files(snapshot(tmp_path / "out"), 1) | shot_files(snapshot(tmp_path / "out"), 2)
    assert main(argv) == 0  # the new settings are now the story's: a plain re-run continues (nothing left to do)
    assert shot_files(snapshot(tmp_path / "out"), 1) | shot_files(snapshot(tmp_path / "out"), 2) == before


def test_from_a_later_shot_the_bank_before_it_takes_the_new_limits(tmp_path, models_dir, capsys):
    argv = [
        "story",
        str(story_script(tmp_path, 3)),
        "--models-dir",
        str(models_dir),
        "--out",
        str(tmp_path / "out"),
        *TINY,
    ]
    assert main(argv) == 0
    folder = StoryFolder(tmp_path / "out")
    first = snapshot(tmp_path / "out")
    assert main(argv + ["--max-memory", "1", "--fixed-memory", "0", "--from-shot", "2"]) == 0
    assert shot_files(snapshot(tmp_path / "out"), 1) == shot_files(first, 1)
    assert [
        (bank.max_size, bank.fixed) for bank in map(load_bank, (folder.bank(0), folder.bank(1), folder.bank(2)))
    ] == [(10, 3), (1, 0), (1, 0)]
    assert all(len(load_bank(folder.bank(i))) == 1 for i in (1, 2))
    capsys.readouterr()
    assert main(argv) == 2 and "--max-memory 10 differs from the 1" in capsys.readouterr().err


def test_changed_references_from_a_later_shot_are_refused(tmp_path, models_dir, capsys):
    assert main(mr2v_argv(tmp_path, models_dir, "refs")) == 0
    capsys.readouterr()
    assert main(mr2v_argv(tmp_path, models_dir, "new-refs") + ["--from-shot", "2"]) == 2
    assert "--from-shot 1 to remake it from the new ones" in capsys.readouterr().err


def _start_story(script: Path, models_dir: Path, out: Path) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "storymem_core",
        "story",
        str(script),
        "--models-dir",
        str(models_dir),
        "--out",
        str(out),
        *TINY,
    ]
    # Ctrl+C must reach the story as a user's would, even when these tests run in a shell's background job (which
    # ignores SIGINT, and an ignored signal stays ignored in a child)
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the story stopped early: {process.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.02)


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT], ids=["killed", "ctrl_c"])
def test_resume_after_a_stop_regenerates_nothing_finished(tmp_path, models_dir, stop):
    shots = 6
    script, out = story_script(tmp_path, shots), tmp_path / "out"
    process = _start_story(script, models_dir, out)
    folder = StoryFolder(out)
    _wait_for(folder.bank(0), process)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=60)
    if stop == signal.SIGINT:
        assert process.returncode == 130
        assert "run the same command again to continue" in stderr
    finished = [i for i in range(shots) if folder.is_finished(i)]
    assert finished and len(finished) < shots and finished == list(range(len(finished)))
    before = snapshot(out)

    resumed = _start_story(script, models_dir, out)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-2000:]
    after = snapshot(out)
    for shot in finished:
        assert shot_files(after, shot + 1) == shot_files(before, shot + 1)
    assert all(folder.is_finished(i) for i in range(shots))
    assert len(read_mp4(folder.film)) == sum(len(read_mp4(folder.video(i))) for i in range(shots))


def test_missing_model_files_are_listed_together(tmp_path):
    (tmp_path / "diffusion_models").mkdir()
    with pytest.raises(CheckpointError) as error:
        find_model_files(tmp_path, required_roles("t2v"))
    message = str(error.value)
    for role in required_roles("t2v"):
        assert ROLES[role].usual_name.split(" ")[0].split("/")[-1] in message
    assert "aesthetic" in required_roles("t2v") and "aesthetic" not in required_roles("t2v", None)


def test_quality_filter_needs_the_aesthetic_head_unless_turned_off(tmp_path, models_dir, capsys):
    models = tmp_path / "models"
    shutil.copytree(models_dir, models)
    (models / "clip_vision" / "sa_0_4_vit_b_32_linear.pth").unlink()
    argv = ["story", str(story_script(tmp_path, 1)), "--models-dir", str(models), "--out", str(tmp_path / "out"), *TINY]
    assert main(argv) == 2
    assert "clip_vision/sa_0_4_vit_b_32_linear.pth" in capsys.readouterr().err
    assert main(argv + ["--quality", "off"]) == 0


@pytest.mark.parametrize(
    "extra,fragment",
    [
        (["--reference", "face.png"], "add --m2v-first-shot"),
        (["--m2v-first-shot"], "pass them with --reference"),
        (["--max-memory", "0"], "max memory 0 is outside 1 to 64"),
        (["--device", "foo"], "--device 'foo' is not a device: use auto, cpu, cuda or cuda:N."),
        (["--steps", "0"], "steps 0 is outside 1 to 1000"),
        (["--shift", "0"], "shift 0.0 is outside 0.1 to 100"),
        (["--guide", "-1"], "guide (CFG) -1.0 is outside 0 to 100"),
    ],
)
def test_story_options_are_refused_before_any_model_loads(tmp_path, extra, fragment, capsys, monkeypatch):
    from storymem_core.commands import story

    monkeypatch.setattr(story, "find_model_files", lambda *args: pytest.fail("models were looked for"))
    argv = [
        "story",
        str(story_script(tmp_path, 1)),
        "--models-dir",
        str(tmp_path),
        "--out",
        str(tmp_path / "out"),
        *extra,
    ]
    assert main(argv) == 2
    assert fragment in capsys.readouterr().err


def test_sampler_flags_set_to_zero_are_used_not_replaced_by_defaults(tmp_path):
    options = cli_plan(tmp_path, "--steps", "1", "--guide", "0").options
    assert [(s.steps, s.guide_low, s.guide_high) for s in (options.m2v, options.t2v)] == [(1, 0.0, 0.0), (1, 0.0, 0.0)]
    assert (options.m2v.shift, options.t2v.shift) == (4.0, 12.0)


def test_story_command_without_models_exits_2(tmp_path, capsys):
    script = story_script(tmp_path, 1)
    assert main(["story", str(script), "--models-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert "--models-dir" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_files_are_found_by_their_published_names(tmp_path, models_dir):
    files = find_model_files(models_dir, required_roles("mr2v"))
    assert files["aesthetic"].name == "sa_0_4_vit_b_32_linear.pth" and "t2v_high" not in files
    assert files["i2v_high"].name.startswith("wan2.2_i2v_high_noise")
    assert os.path.basename(files["lora_low"]) == "backbone_low_noise.pth"


def test_each_continuation_finds_its_own_storymem_lora_pair(tmp_path, models_dir):
    models = shutil.copytree(models_dir, tmp_path / "models")  # both pairs, where `download` puts them
    for continuation, variant in (("m2v", "MI2V"), ("mi2v", "MI2V"), ("mm2v", "MM2V")):
        files = find_model_files(models, required_roles("mr2v", None, continuation))
        pair = [path for role, path in files.items() if "lora" in role]
        assert [path.parent.name for path in pair] == [f"Wan2.2-{variant}-A14B"] * 2, continuation
    shutil.rmtree(models / "loras" / "StoryMem" / "Wan2.2-MM2V-A14B")
    with pytest.raises(CheckpointError, match="StoryMem/Wan2.2-MM2V-A14B/backbone_high_noise.pth"):
        find_model_files(models, required_roles("mr2v", None, "mm2v"))  # never the MI2V pair in its place


def test_an_mm2v_story_merges_the_mm2v_pair(tmp_path, models_dir, monkeypatch):
    from storymem_core import story_models

    merged, load_pair = [], story_models.load_expert_pair

    def watched(high, low, *args, **kwargs):
        merged.append([(lora.high.parent.name, lora.low.parent.name) for lora in args[6]])
        return load_pair(high, low, *args, **kwargs)

    monkeypatch.setattr(story_models, "load_expert_pair", watched)
    script = story_script(tmp_path, 1)
    argv = ["story", str(script), "--models-dir", str(models_dir), "--out", str(tmp_path / "out"), "--mm2v", *TINY]
    assert main(argv) == 0
    assert merged[0] == [("Wan2.2-MM2V-A14B", "Wan2.2-MM2V-A14B")]


def test_an_interrupted_from_shot_run_leaves_later_shots_unfinished(tmp_path, models_dir, monkeypatch):
    from storymem_core import pipeline

    script = story_script(tmp_path, 3)
    argv = ["story", str(script), "--models-dir", str(models_dir), "--out", str(tmp_path / "out"), *TINY]
    assert main(argv) == 0
    generate = pipeline._make_shot

    def stop_at_third_shot(shot, *args, **kwargs):
        if shot.index == 2:
            raise KeyboardInterrupt
        return generate(shot, *args, **kwargs)

    monkeypatch.setattr(pipeline, "_make_shot", stop_at_third_shot)
    assert main(argv + ["--from-shot", "2", "--seed", "5"]) == 130
    folder = StoryFolder(tmp_path / "out")
    assert [folder.is_finished(i) for i in range(3)] == [
        True,
        True,
        False,
    ]  # shot 3 still holds the old memory's frames
    monkeypatch.setattr(pipeline, "_make_shot", generate)
    before = snapshot(tmp_path / "out")
    assert main(argv) == 0
    after = snapshot(tmp_path / "out")
    assert after["shots/shot_003.mp4"][MTIME] != before["shots/shot_003.mp4"][MTIME]
    assert shot_files(after, 2) == shot_files(before, 2)


def test_t2v_experts_leave_the_device_after_the_first_shot(tmp_path, models_dir, monkeypatch):
    from storymem_core.sampling import ExpertPair

    parked = []
    monkeypatch.setattr(ExpertPair, "park", lambda pair: parked.append(pair.high.config.model_type))
    assert (
        main(
            [
                "story",
                str(story_script(tmp_path, 2)),
                "--models-dir",
                str(models_dir),
                "--out",
                str(tmp_path / "out"),
                *TINY,
            ]
        )
        == 0
    )
    assert parked == ["t2v"]


@pytest.mark.parametrize(
    "package,checkpoint,expected",
    [
        (True, "hpsv3/HPSv3.safetensors", "hpsv3"),
        (True, "clip_vision/HPSv3.safetensors", "hpsv3"),
        (True, None, "aesthetic"),
        (False, "hpsv3/HPSv3.safetensors", "aesthetic"),
        (True, "hpsv3/HPSv3.pth", "aesthetic"),  # a pickled file HPSv3's loader would unpickle whole is not taken
    ],
)
def test_auto_quality_takes_hpsv3_only_with_its_package_and_checkpoint(
    tmp_path, monkeypatch, package, checkpoint, expected
):
    from storymem_core import model_roles

    if checkpoint:  # hpsv3/ as the CLI's own folder, clip_vision/ where the nodes list it
        (tmp_path / checkpoint).parent.mkdir()
        (tmp_path / checkpoint).write_bytes(b"")
    find_spec = model_roles.importlib.util.find_spec
    monkeypatch.setattr(
        model_roles.importlib.util,
        "find_spec",
        lambda name: object() if name == "hpsv3" and package else find_spec(name),
    )
    assert model_roles.quality_model("auto", tmp_path) == expected
    assert model_roles.quality_model("off", tmp_path) is None


def test_an_aesthetic_head_for_another_clip_is_refused_before_any_shot(tmp_path, models_dir, capsys, monkeypatch):
    from storymem_core import pipeline

    monkeypatch.setattr(
        pipeline, "_make_shot", lambda *args, **kwargs: pytest.fail("a shot was generated before the refusal")
    )
    models = tmp_path / "models"
    shutil.copytree(models_dir, models)
    torch.save({"weight": torch.zeros(1, 768), "bias": torch.zeros(1)}, models / "clip_vision" / AESTHETIC_FILE)
    out = tmp_path / "out"
    assert main(["story", str(story_script(tmp_path, 1)), "--models-dir", str(models), "--out", str(out), *TINY]) == 2
    assert "expects 768-d CLIP embeddings but the encoder gives" in capsys.readouterr().err
    assert not list(out.rglob("*.mp4"))


def test_hpsv3_quality_without_its_package_says_how_to_install(tmp_path, models_dir, monkeypatch, capsys):
    models = tmp_path / "models"
    shutil.copytree(models_dir, models)
    (models / "hpsv3").mkdir()
    (models / "hpsv3" / "HPSv3.safetensors").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "hpsv3", None)
    argv = [
        "story",
        str(story_script(tmp_path, 1)),
        "--models-dir",
        str(models),
        "--out",
        str(tmp_path / "out"),
        "--quality",
        "hpsv3",
        *TINY,
    ]
    assert main(argv) == 2
    assert "pip install hpsv3" in capsys.readouterr().err


def test_memory_positions_flag_reaches_the_story_options(tmp_path, capsys):
    base = ["story", "story.json", "--models-dir", "models", "--out", str(tmp_path / "new")]
    assert cli_plan(tmp_path).options.memory_positions == "upstream"  # as the authors ship it
    first_release = cli_plan(tmp_path, "--memory-positions", "first-release").options
    assert first_release.memory_positions == "first-release"
    with pytest.raises(SystemExit) as refused:
        _parser().parse_args(base + ["--memory-positions", "released"])
    assert refused.value.code == 2 and "choose from 'upstream', 'first-release'" in capsys.readouterr().err


def test_a_story_begun_with_the_first_release_numbering_continues_with_it(tmp_path, models_dir, capsys):
    """A folder from before placements were recorded was made with the first release's numbering: a plain re-run goes
    on with it (the remade shot is the one it made), a later shot with the authors' placement is refused, and only
    --from-shot 1 remakes the story their way."""
    argv = mr2v_argv(tmp_path, models_dir, "refs", shots=3)
    assert main(argv + ["--memory-positions", "first-release"]) == 0
    folder = StoryFolder(tmp_path / "out")
    made = read_mp4(folder.video(2))
    record = json.loads(folder.record.read_text())
    assert record.pop("memory_positions") == "first-release"
    folder.record.write_text(json.dumps(record))  # as stories were recorded before placements were
    folder.video(2).unlink()
    capsys.readouterr()
    assert main(argv) == 0
    assert "continuing the story" in capsys.readouterr().out and torch.equal(read_mp4(folder.video(2)), made)
    before = snapshot(tmp_path / "out")
    assert main(argv + ["--memory-positions", "upstream", "--from-shot", "2"]) == 2
    error = capsys.readouterr().err
    assert "never mixes placements" in error and "--memory-positions first-release" in error
    assert snapshot(tmp_path / "out") == before
    assert main(argv + ["--memory-positions", "upstream", "--from-shot", "1"]) == 0
    assert json.loads(folder.record.read_text())["memory_positions"] == "upstream"
    assert not torch.equal(read_mp4(folder.video(2)), made)


def test_memory_shots_default_to_storymem_m2v_sampling(tmp_path):
    """StoryMem's wan_m2v_A14B.py samples 40 steps, shift 4, boundary 0.9, guide 3.5 for both experts; the story
    command without sampler flags and a bare SamplerSettings() (generate_memory_shot's default) both do."""
    reference = SamplerSettings(steps=40, shift=4.0, solver="unipc", boundary=0.9, guide_low=3.5, guide_high=3.5)
    assert cli_plan(tmp_path).options.m2v == SamplerSettings() == reference


def test_a_pair_in_a_deeper_variant_folder_is_never_the_other_pair(tmp_path, models_dir):
    models = shutil.copytree(models_dir, tmp_path / "models")
    mm2v = models / "loras" / "StoryMem" / "Wan2.2-MM2V-A14B"
    shutil.copytree(mm2v, mm2v / "v1")  # a user's versions below the variant's folder
    shutil.rmtree(models / "loras" / "StoryMem" / "Wan2.2-MI2V-A14B")
    for path in mm2v.glob("*.pth"):
        path.unlink()
    files = find_model_files(models, required_roles("mr2v", None, "mm2v"))
    assert files["mm2v_lora_low"].parent.name == "v1"
    with pytest.raises(CheckpointError, match="Wan2.2-MI2V-A14B/backbone_high_noise.pth"):
        find_model_files(models, required_roles("mr2v", None, "mi2v"))


def test_a_pair_whose_path_says_no_variant_serves_either_and_mm2v_says_so(tmp_path, models_dir, caplog):
    models = shutil.copytree(models_dir, tmp_path / "models")
    storymem = models / "loras" / "StoryMem"
    for path in (storymem / "Wan2.2-MI2V-A14B").glob("*.pth"):
        path.rename(storymem / path.name)  # the flat layout of a pair downloaded by hand
    for folder in ("Wan2.2-MI2V-A14B", "Wan2.2-MM2V-A14B"):
        shutil.rmtree(storymem / folder)
    assert find_model_files(models, required_roles("mr2v", None, "mi2v"))["lora_high"].parent == storymem
    assert "MM2V" not in caplog.text
    assert find_model_files(models, required_roles("mr2v", None, "mm2v"))["mm2v_lora_high"].parent == storymem
    assert "neither its name nor its folder says MM2V" in caplog.text


def test_the_kept_script_is_the_one_the_whole_story_was_made_from(tmp_path):
    """A story finished with a trimmed script keeps the trimmed one (evaluate reads it), and an unchanged one is not
    written again."""
    from storymem_core.story import loads_story, story_json
    from storymem_core.story_folder import keep_script

    five = loads_story(story_script(tmp_path, 5).read_text())
    shots = story_json(five)["scenes"][0]
    four = loads_story(json.dumps({**story_json(five), "scenes": [
        {**shots, "video_prompts": shots["video_prompts"][:4], "cut": shots["cut"][:4]}]}))
    folder = StoryFolder(tmp_path / "out")
    keep_script(folder, five)
    keep_script(folder, four)
    assert loads_story(folder.script.read_text()) == four and len(four.shots) == 4
    written = folder.script.stat().st_mtime_ns
    keep_script(folder, four)
    assert folder.script.stat().st_mtime_ns == written


def test_a_folder_holding_only_a_writers_lock_and_its_probe_is_free_for_a_story(tmp_path):
    """Under torchrun another rank lists the folder while rank 0 probes it for writing (that race failed a run)."""
    from storymem_core.files import WRITE_CHECK_PREFIX
    from storymem_core.folder_lock import LOCK_FILE

    (tmp_path / LOCK_FILE).write_text("{}")
    (tmp_path / f"{WRITE_CHECK_PREFIX}x1y2").mkdir()
    assert StoryFolder(tmp_path).is_ours()
    (tmp_path / "notes.txt").write_text("mine")
    assert not StoryFolder(tmp_path).is_ours()
