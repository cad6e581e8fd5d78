"""Hostile files through the command line: a story script, image or model path that is a named pipe, a device, a
symbolic-link loop or larger than any real file of its kind; an image header declaring a decompression bomb; a `.pth`
that is no checkpoint; model files whose stored config or tensor shapes describe a model that cannot be built.

Each row: exit 2 within a time limit (a read that never ends fails the test instead of hanging it), one or two
lines naming the input and the fix, no traceback, and the output and models folders byte-identical (mtimes too).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import threading
import zlib
from pathlib import Path
from typing import Callable

import pytest
import torch
from helpers import files_under as snapshot
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from safetensors.torch import save as safetensors_bytes

from nodes.host import StandaloneHost
from storymem_core import tiny_models as tiny
from storymem_core.commands import story as story_command
from storymem_core.commands.cli import main
from storymem_core.errors import StoryMemError
from storymem_core.model_roles import find_model_files, required_roles
from storymem_core.pipeline import StoryFolder
from storymem_core.story import load_story
from storymem_core.story_folder import StoryRecord
from storymem_core.wan.tokenizer import UMT5Tokenizer
from storymem_core.weights.configs import CONFIG_KEY
from storymem_core.weights.readers import read_pth

TIMEOUT_S = 120
PROGRESS_BAR = re.compile(r"\|\s*\d+/\d+ \[")  # tqdm: "story:   0%|          | 0/2 [00:00<?, ?shot/s]"
TINY = ["--size", "32x32", "--frames", "5", "--steps", "1", "--device", "cpu", "--quality", "off"]
SCRIPT = {"story_name": "Lantern", "story_overview": "A keeper lights the lamp.",
          "scenes": [{"scene_num": 1, "video_prompts": ["A keeper climbs the stairs.", "The lamp is lit."],
                      "cut": [True, True]}]}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return tiny.write_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def finished_story(tmp_path_factory, models) -> tuple[Path, Path]:
    """(script, out): a 2-shot story run to the end."""
    root = tmp_path_factory.mktemp("finished")
    script = root / "story.json"
    script.write_text(json.dumps(SCRIPT))
    assert main(["story", str(script), "--models-dir", str(models), "--out", str(root / "out"), *TINY]) == 0
    return script, root / "out"


def cli(argv: list[str], capsys, release: list[Path] = ()) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the command; a run still going after TIMEOUT_S fails the test (its named
    pipes in `release` are opened for writing, so a reader blocked on one returns)."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["code"] = main(argv)
        except BaseException as error:  # noqa: BLE001 (any escape is a traceback the user would see)
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(TIMEOUT_S)
    if thread.is_alive():
        for fifo in release:
            os.close(os.open(fifo, os.O_RDWR))
        pytest.fail(f"{argv} did not end within {TIMEOUT_S} s: a read that never ends")
    captured = capsys.readouterr()
    assert "error" not in outcome, f"escaped as {outcome.get('error')!r}"
    return outcome["code"], captured.out, captured.err


def assert_refused(code: int, err: str, named: str, fix: str) -> None:
    """Exit 2 with one or two lines (besides progress-bar redraws) naming the input and the fix, no traceback."""
    lines = [line for line in re.split(r"[\r\n]", err)
             if line.strip() and not PROGRESS_BAR.search(line) and not line.startswith("\x1b")]
    assert code == 2, err
    assert "Traceback" not in err
    assert 1 <= len(lines) <= 2, err
    assert named in err and fix in err, err


# ------------------------------------------------------------------ the hostile things a path can be


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def device(path: Path) -> Path:
    path.symlink_to("/dev/zero")  # a character device that never ends
    return path


def link_loop(path: Path) -> Path:
    path.symlink_to(path.name)  # relative: the link points at itself
    return path


def sparse(size: int) -> Callable[[Path], Path]:
    def make(path: Path) -> Path:
        with open(path, "wb") as handle:
            handle.truncate(size)  # takes no disk space
        return path
    return make


KINDS = {  # how the thing is made, a fragment of the sentence that refuses it
    "fifo": (fifo, "is a named pipe, not a regular file: give the path of the file itself"),
    "device": (device, "is a character device, not a regular file"),
    "link-loop": (link_loop, "is a symbolic link that loops back on itself: point the link at the real file"),
}
OVERSIZE = {"story script": 17 << 20, "image": 3 << 30, "model file": 300 << 30}
TOO_LARGE = "check that this is the right file"


def hostile_rows(kind: str) -> list:
    rows = [pytest.param(make, fragment, id=name) for name, (make, fragment) in KINDS.items()]
    return rows + [pytest.param(sparse(OVERSIZE[kind]), f"larger than any real {kind}", id="oversize")]


def skip_without_fifo():
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes on this system")


# ------------------------------------------------------------------ story scripts


@pytest.mark.parametrize("command", ["validate", "story"])
@pytest.mark.parametrize("make,fragment", hostile_rows("story script"))
def test_hostile_story_script_is_refused(tmp_path, capsys, models, command, make, fragment):
    skip_without_fifo()
    script = make(tmp_path / "story.json")
    out = tmp_path / "out"
    story = ["story", str(script), "--models-dir", str(models), "--out", str(out), *TINY]
    argv = ["validate", str(script)] if command == "validate" else story
    before = snapshot(models)
    code, _, err = cli(argv, capsys, release=[script] if make is fifo else [])
    assert_refused(code, err, str(script), TOO_LARGE if "larger" in fragment else fragment)
    assert fragment in err
    assert not out.exists() and snapshot(models) == before


# ------------------------------------------------------------------ reference images


def bomb_png(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A valid 1x1 PNG whose header (IHDR, CRC fixed) declares `width` x `height` pixels."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


IMAGE_ROWS = hostile_rows("image") + [
    pytest.param(
        bomb_png, "a decompression bomb or a damaged header): use a smaller PNG or JPEG", id="bomb-100000x100000"
    ),
    pytest.param(lambda path: bomb_png(path, 20_000, 10_000), "decompression bomb", id="bomb-200-megapixels"),
]


@pytest.mark.parametrize("make,fragment", IMAGE_ROWS)
def test_hostile_reference_image_is_refused_before_models_load(tmp_path, capsys, models, make, fragment):
    skip_without_fifo()
    script = tmp_path / "story.json"
    script.write_text(json.dumps(SCRIPT))
    image = make(tmp_path / "face.png")
    out = tmp_path / "out"
    argv = [
        "story",
        str(script),
        "--models-dir",
        str(tmp_path / "no-models"),
        "--out",
        str(out),
        "--m2v-first-shot",
        "--reference",
        str(image),
        *TINY,
    ]
    code, _, err = cli(argv, capsys, release=[image] if make is fifo else [])
    assert_refused(code, err, str(image), TOO_LARGE if "larger" in fragment else fragment)
    assert fragment in err and "--models-dir" not in err  # refused before models were looked for
    assert not out.exists()


# ------------------------------------------------------------------ saved banks in a story folder


BANK_ROWS = [
    pytest.param("bank.json", fifo, "is a named pipe", id="bank-json-fifo"),
    pytest.param("bank.json", link_loop, "loops back on itself", id="bank-json-link-loop"),
    pytest.param("bank.json", sparse(20 << 20), "larger than any real memory bank file", id="bank-json-oversize"),
    pytest.param("keyframe", fifo, "is a named pipe", id="keyframe-fifo"),
    pytest.param("keyframe", device, "is a character device", id="keyframe-device"),
    pytest.param("keyframe", bomb_png, "decompression bomb", id="keyframe-bomb"),
]


@pytest.mark.parametrize("target,make,fragment", BANK_ROWS)
def test_hostile_bank_file_in_a_story_folder_is_refused_before_models_load(
    tmp_path, capsys, monkeypatch, models, finished_story, target, make, fragment
):
    """Shot 2 left to do, so the run reads the bank saved after shot 1; a hostile file there is refused."""
    skip_without_fifo()
    monkeypatch.setattr(
        story_command, "find_model_files", lambda *args: pytest.fail("models were looked for before the bank was read")
    )
    script, finished = finished_story
    out = tmp_path / "out"
    shutil.copytree(finished, out, symlinks=True)
    folder = StoryFolder(out)
    folder.video(1).unlink()
    bank = folder.bank(0)
    keyframe = json.loads((bank / "bank.json").read_text())["keyframes"][0]["file"]
    victim = bank / ("bank.json" if target == "bank.json" else keyframe)
    victim.unlink()
    make(victim)
    before, models_before = snapshot(out), snapshot(models)
    code, _, err = cli(
        ["story", str(script), "--models-dir", str(models), "--out", str(out), *TINY], capsys, release=[victim]
    )
    assert_refused(code, err, str(victim), fragment)
    assert snapshot(out) == before and snapshot(models) == models_before


# ------------------------------------------------------------------ model paths through inspect and the story command


@pytest.mark.parametrize("make,fragment", hostile_rows("model file"))
def test_hostile_model_path_is_refused_by_inspect(tmp_path, capsys, make, fragment):
    skip_without_fifo()
    path = make(tmp_path / "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors")
    code, out, err = cli(["inspect", str(path)], capsys, release=[path] if make is fifo else [])
    assert code == 2 and "Traceback" not in out + err
    assert fragment in out and "NOT usable" in out


def modify(path: Path, change: Callable[[dict, dict], None]) -> None:
    """Rewrite a tiny safetensors file after `change(tensors, metadata)`."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
    tensors = load_file(str(path))
    change(tensors, metadata)
    path.unlink()
    save_file(tensors, str(path), metadata=metadata)


def with_config(**sizes) -> Callable:
    def change(tensors: dict, metadata: dict) -> None:
        config = json.loads(metadata[CONFIG_KEY])
        for name, value in sizes.items():
            target = config["vision_cfg"] if name in ("width", "layers") and "vision_cfg" in config else config
            target[name] = value
        metadata[CONFIG_KEY] = json.dumps(config)

    return change


def replaced(name: str, tensor: torch.Tensor) -> Callable:
    return lambda tensors, metadata: tensors.__setitem__(name, tensor)


def write_pth(data: bytes | Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        path.write_bytes(data(path.read_bytes()) if callable(data) else data)

    return make


def with_alpha(alpha: torch.Tensor) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        state = torch.load(path, weights_only=True)
        torch.save({**state, "base_model.model.blocks.0.self_attn.q.alpha": alpha}, path)

    return write


DIT = f"diffusion_models/{tiny.I2V_HIGH}"
LORA = "loras/" + tiny.STORYMEM_LORA_HIGH
DOCTORED = [  # (file under the models folder, how it is changed, a fragment of the reason inspect and the story give)
    pytest.param(
        DIT, with_config(num_layers=1_000_000), "num_layers = 1000000 is outside 1 to 256", id="dit-million-layers"
    ),
    pytest.param(DIT, with_config(dim=1 << 40), "dim = 1099511627776 is outside 1 to 65,536", id="dit-huge-width"),
    pytest.param(DIT, with_config(dim=0), "dim = 0 is outside", id="dit-zero-width"),
    pytest.param(DIT, with_config(num_heads=3), "not a whole number of num_heads", id="dit-heads-not-dividing"),
    pytest.param(DIT, with_config(patch_size="big"), "patch_size = big is not a list", id="dit-config-wrong-type"),
    pytest.param(
        DIT, lambda t, m: m.__setitem__(CONFIG_KEY, "[1, 2]"), "not a JSON object", id="dit-config-not-object"
    ),
    pytest.param(
        DIT, replaced("head.modulation", torch.tensor(1.0)), "'head.modulation' of shape []", id="dit-anchor-scalar"
    ),
    pytest.param(f"vae/{tiny.VAE_FILE}", with_config(dim_mult=[1] * 1000), "dim_mult", id="vae-config-absurd"),
    pytest.param(
        f"text_encoders/{tiny.TEXT_ENCODER}",
        replaced("token_embedding.weight", torch.zeros(128)),
        "'token_embedding.weight' of shape [128]",
        id="umt5-anchor-rank",
    ),
    pytest.param(LORA, with_alpha(torch.ones(3)), "not one number", id="lora-alpha-not-scalar"),
    pytest.param(
        LORA, with_alpha(torch.tensor(float("nan"))), "where a LoRA stores a single finite alpha", id="lora-alpha-nan"
    ),
    pytest.param(
        LORA, write_pth(b"this is not a checkpoint\n"), "not a PyTorch checkpoint (it holds text", id="pth-text"
    ),
    pytest.param(LORA, write_pth(bytes(4096)), "not a PyTorch checkpoint (it starts with zero bytes", id="pth-zeros"),
    pytest.param(
        LORA, write_pth(lambda data: data[: len(data) // 2]), "cut-off or damaged zip archive", id="pth-truncated-zip"
    ),
    pytest.param(
        f"clip_vision/{tiny.CLIP_FILE}",
        with_config(width=10**9),
        "vision_cfg.width = 1000000000 is outside",
        id="clip-config-huge-width",
    ),
    pytest.param(
        f"clip_vision/{tiny.CLIP_FILE}",
        with_config(layers=0),
        "vision_cfg.layers = 0 is outside",
        id="clip-config-no-layers",
    ),
]


def doctor(models: Path, relative: str, change: Callable) -> Path:
    path = models / relative
    if relative.endswith(".safetensors"):
        modify(path, change)
    else:
        change(path)
    return path


@pytest.mark.parametrize("relative,change,fragment", DOCTORED)
def test_doctored_model_file_is_reported_unusable_by_inspect(tmp_path, capsys, models, relative, change, fragment):
    copy = tmp_path / "models"
    shutil.copytree(models, copy)
    path = doctor(copy, relative, change)
    code, out, err = cli(["inspect", str(path)], capsys)
    assert code == 2 and "Traceback" not in out + err, out + err
    assert "NOT usable" in out and fragment in out, out


@pytest.mark.parametrize("relative,change,fragment", DOCTORED)
def test_doctored_model_file_is_refused_by_the_story_command(tmp_path, capsys, models, relative, change, fragment):
    copy = tmp_path / "models"
    shutil.copytree(models, copy)
    path = doctor(copy, relative, change)
    script = tmp_path / "story.json"
    script.write_text(json.dumps(SCRIPT))
    out = tmp_path / "out"
    before = snapshot(copy)
    code, _, err = cli(["story", str(script), "--models-dir", str(copy), "--out", str(out), *TINY], capsys)
    assert_refused(code, err, path.name, "download it again")
    assert fragment in err
    assert snapshot(copy) == before and not any(out.rglob("*.mp4"))


def zero_width_head(path: Path) -> None:
    torch.save(
        {
            "layers.0.weight": torch.zeros(0, tiny.CLIP["embed_dim"]),
            "layers.0.bias": torch.zeros(0),
            "layers.2.weight": torch.zeros(1, 0),
            "layers.2.bias": torch.zeros(1),
        },
        path,
    )


def no_layer_encoder(path: Path) -> None:
    modify(path, lambda tensors, metadata: [tensors.pop(name) for name in list(tensors) if ".resblocks." in name])


@pytest.mark.parametrize(
    "relative,make,fragment",
    [
        pytest.param(
            f"clip_vision/{tiny.AESTHETIC_FILE}",
            zero_width_head,
            "aesthetic head cannot work: layer 'layers.0.weight' has width 0",
            id="aesthetic-zero-width",
        ),
        pytest.param(
            f"clip_vision/{tiny.CLIP_FILE}",
            no_layer_encoder,
            "image encoder cannot work: its layers is 0",
            id="clip-no-layers",
        ),
    ],
)
def test_keyframe_models_whose_sizes_cannot_work_are_unusable(tmp_path, capsys, models, relative, make, fragment):
    copy = tmp_path / "models"
    shutil.copytree(models, copy)
    make(copy / relative)
    code, out, err = cli(["inspect", str(copy / relative)], capsys)
    assert code == 2 and "Traceback" not in out + err
    assert "NOT usable" in out and fragment in out, out


# ------------------------------------------------------------------ models in symlinked subfolders


def test_models_in_symlinked_subfolders_are_found_as_comfyui_finds_them(tmp_path, models):
    """Big files kept on another disk and linked into the models folder; a link loop there ends the walk."""
    other_disk = tmp_path / "other_disk"
    shutil.copytree(models / "diffusion_models", other_disk / "wan")
    linked = tmp_path / "models"
    shutil.copytree(models, linked, ignore=shutil.ignore_patterns("wan2.2_*"))
    (linked / "diffusion_models" / "wan").symlink_to(other_disk / "wan", target_is_directory=True)
    (linked / "diffusion_models" / "loop").symlink_to(linked / "diffusion_models", target_is_directory=True)
    files = find_model_files(linked, required_roles("t2v"))
    assert files["i2v_high"] == linked / "diffusion_models" / "wan" / tiny.I2V_HIGH
    assert files["t2v_low"].read_bytes() == (models / "diffusion_models" / tiny.T2V_LOW).read_bytes()
    listed = StandaloneHost(linked).filenames("diffusion_models")
    assert f"wan/{tiny.I2V_HIGH}" in listed and len(listed) == len(set(listed)) == 4


def _refuse_opening(monkeypatch, target: Path) -> None:
    """Opening `target` fails as a file without read permission does (tests may run as root, which ignores modes)."""
    real_os_open, real_open = os.open, io.open

    def refuse(path):
        if Path(path) == target:
            raise PermissionError(13, "Permission denied", str(path))

    def os_open(path, *args, **kwargs):
        refuse(path)
        return real_os_open(path, *args, **kwargs)

    def builtin_open(path, *args, **kwargs):
        refuse(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(io, "open", builtin_open)
    monkeypatch.setattr("builtins.open", builtin_open)


def _record_of(folder: Path) -> Path:
    StoryFolder(folder).record.write_text("{}")
    return StoryFolder(folder).record


@pytest.mark.parametrize("make, read, fragment", [
    (lambda d: d / "story.json", lambda p: load_story(p), "story script"),
    (lambda d: d / "lora.pth", lambda p: read_pth(p), "model file"),
    (lambda d: d / "spiece.model", lambda p: UMT5Tokenizer.from_path(p), "tokenizer"),
    (_record_of, lambda p: StoryRecord.load(StoryFolder(p.parent)), "record file"),
], ids=["story", "pth", "tokenizer", "record"])
def test_a_file_that_cannot_be_opened_is_named_with_the_fix(tmp_path, monkeypatch, make, read, fragment):
    path = make(tmp_path)
    if not path.exists():
        path.write_bytes(b"PK\x03\x04 unread")
    _refuse_opening(monkeypatch, path)
    with pytest.raises(StoryMemError) as raised:
        read(path)
    assert str(raised.value).startswith(f"{fragment} {path} cannot be opened")
    assert str(raised.value).endswith("check its permissions.")


def test_a_safetensors_file_under_a_pth_name_is_named_for_what_it_is(tmp_path, capsys):
    path = tmp_path / "backbone_high_noise.pth"
    path.write_bytes(safetensors_bytes({"x": torch.zeros(2)}))
    code, out, err = cli(["inspect", str(path)], capsys)
    assert code == 2 and "is a safetensors file under a PyTorch name: rename it backbone_high_noise.safetensors" in out
