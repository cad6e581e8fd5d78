"""Model files fetched by the pack (storymem_core/downloads.py, the `download` command): from a local server that
answers as the hub does, resumed after a cut, checked, and put under their name only when whole and right."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import pytest
import torch
from local_hub import LocalHub, saved

from nodes import host, model_files
from storymem_core import tiny_models as tiny
from storymem_core.commands.cli import main
from storymem_core.downloads import KNOWN_FILES, download, known_file, partial_path
from storymem_core.errors import DownloadError

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
LORA = known_file("StoryMem/Wan2.2-MI2V-A14B/backbone_high_noise.pth")
HEAD = known_file("sa_0_4_vit_b_32_linear.pth")


LORA_BYTES = saved(tiny._peft_lora(0))
HEAD_BYTES = saved({"weight": torch.randn(1, 512), "bias": torch.tensor([5.0])})


@pytest.fixture
def hub(monkeypatch):
    """The local hub, with the StoryMem LoRA where Hugging Face publishes it (reached through HF_ENDPOINT)."""
    with LocalHub() as server:
        server.files[LORA.url.removeprefix("https://huggingface.co")] = LORA_BYTES
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def _served_head(hub: LocalHub, content: bytes = HEAD_BYTES, sha256: str | None = None):
    """The aesthetic head's entry pointed at the local hub, with the size and sha256 of `content` as published."""
    hub.files["/head.pth"] = content
    return dataclasses.replace(HEAD, url=hub.url + "/head.pth", size=len(HEAD_BYTES),
                               sha256=sha256 or hashlib.sha256(HEAD_BYTES).hexdigest())


def test_every_file_the_comfyui_dialog_cannot_fetch_is_known_with_the_workflows_address():
    refused = set()
    for path in WORKFLOWS.rglob("*.json"):
        for node in json.loads(path.read_text())["nodes"]:
            for model in node.get("properties", {}).get("models", []):
                # ComfyUI's dialog fetches .safetensors / .sft from Hugging Face; GGUF entries carry no url
                if not model["name"].endswith((".safetensors", ".sft")) or not model.get("url", "").startswith(
                        "https://huggingface.co/"):
                    refused.add((model["name"], model["directory"], model.get("url")))
    known = {(file.name, file.folder, url) for file in KNOWN_FILES for url in (file.url, None)}
    assert refused and refused <= known
    assert all(file.license and file.page and file.size > 0 for file in KNOWN_FILES)
    assert LORA.license.startswith("CC BY-NC 4.0")


def test_download_follows_the_hub_redirect_and_puts_the_checked_file_under_its_name(hub, tmp_path):
    seen = []
    path = download(LORA, tmp_path / "loras", lambda done, total: seen.append((done, total)))
    assert path == tmp_path / "loras" / LORA.name and path.read_bytes() == LORA_BYTES
    assert seen[-1] == (len(LORA_BYTES), len(LORA_BYTES)) and not partial_path(path).exists()


def test_a_cut_download_is_never_taken_for_a_model_and_resumes_where_it_stopped(hub, tmp_path):
    destination = tmp_path / "loras" / LORA.name
    hub.cut_after = 1000
    with pytest.raises(DownloadError, match="run the download again to continue"):
        download(LORA, tmp_path / "loras")
    assert not destination.exists() and partial_path(destination).stat().st_size == 1000
    previous = host.use(host.StandaloneHost(tmp_path))
    try:
        assert host.model_names("loras") == []  # the partial file is no choice of a loader
    finally:
        host.use(previous)

    def never_under_its_name(done: int, total: int) -> None:
        assert not destination.exists()

    download(LORA, tmp_path / "loras", never_under_its_name)
    assert hub.ranges[-1] == "bytes=1000-" and destination.read_bytes() == LORA_BYTES


def test_a_download_stopped_by_its_caller_keeps_what_arrived(hub, tmp_path):
    def stop(done: int, total: int) -> None:
        if done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        download(LORA, tmp_path, stop)
    assert partial_path(tmp_path / LORA.name).stat().st_size > 0 and not (tmp_path / LORA.name).exists()
    assert download(LORA, tmp_path).read_bytes() == LORA_BYTES


def test_a_server_that_ignores_the_range_gives_the_whole_file_again(hub, tmp_path):
    hub.cut_after = 500
    with pytest.raises(DownloadError):
        download(LORA, tmp_path)
    hub.ignore_range = True
    assert download(LORA, tmp_path).read_bytes() == LORA_BYTES


def test_a_partial_file_already_whole_is_checked_and_renamed(hub, tmp_path):
    partial_path(tmp_path / LORA.name).parent.mkdir(parents=True)
    partial_path(tmp_path / LORA.name).write_bytes(LORA_BYTES)
    assert download(LORA, tmp_path).read_bytes() == LORA_BYTES and hub.ranges == [f"bytes={len(LORA_BYTES)}-"]


def test_the_aesthetic_head_is_checked_against_its_published_sha256(hub, tmp_path):
    assert download(_served_head(hub), tmp_path).read_bytes() == HEAD_BYTES
    altered = HEAD_BYTES[:-1] + bytes([HEAD_BYTES[-1] ^ 1])
    with pytest.raises(DownloadError, match="does not have the published sha256, so it was deleted"):
        download(_served_head(hub, altered), tmp_path / "other")
    assert list((tmp_path / "other").rglob("*")) == []


def test_a_file_of_the_wrong_size_is_refused_before_it_is_written(hub, tmp_path):
    with pytest.raises(DownloadError, match="offers 4 bytes but sa_0_4_vit_b_32_linear.pth is"):
        download(_served_head(hub, b"oops"), tmp_path)
    assert list(tmp_path.rglob("*.pth*")) == []


def test_a_page_that_is_not_the_lora_is_deleted_not_renamed(hub, tmp_path):
    hub.files[LORA.url.removeprefix("https://huggingface.co")] = b"<html>rate limited</html>"
    with pytest.raises(DownloadError, match="is not readable as the file expected"):
        download(LORA, tmp_path)
    assert list(tmp_path.rglob("*")) == [tmp_path / "StoryMem", tmp_path / "StoryMem" / "Wan2.2-MI2V-A14B"]


def test_a_missing_file_on_the_server_says_where_to_look(hub, tmp_path):
    hub.files.clear()
    with pytest.raises(DownloadError, match=r"HTTP 404 .*huggingface.co/Kevin-thu/StoryMem"):
        download(LORA, tmp_path)


def test_download_command_lists_size_and_license_then_fetches(hub, tmp_path, capsys):
    assert main(["download", "--list", "--models-dir", str(tmp_path)]) == 0
    listed = capsys.readouterr().out
    assert f"missing  loras/{LORA.name}  about 1.2 GB, license CC BY-NC 4.0" in listed
    assert "clip_vision/sa_0_4_vit_b_32_linear.pth  3.0 KB, license MIT" in listed
    assert main(["download", "--models-dir", str(tmp_path), "Wan2.2-MI2V-A14B/backbone_high_noise.pth"]) == 0
    assert (tmp_path / "loras" / LORA.name).read_bytes() == LORA_BYTES
    assert main(["download", "--models-dir", str(tmp_path), "backbone.pth"]) == 2
    assert "'backbone.pth' is not a file this pack downloads" in capsys.readouterr().err
    listed_name = f"loras/{known_file('Wan2.2-MM2V-A14B/backbone_low_noise.pth').name}"
    assert known_file(listed_name).name.endswith("Wan2.2-MM2V-A14B/backbone_low_noise.pth")  # as --list shows it


def test_listing_a_models_folder_not_made_yet_says_a_download_makes_it(tmp_path, capsys):
    assert main(["download", "--list", "--models-dir", str(tmp_path / "models")]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0] == f"{tmp_path / 'models'} does not exist yet: a download creates it."
    assert listed[1].split() == ["state", "folder/name", "(give", "it", "to", "download", "as", "shown)", "size,",
                                 "license,", "page"]


def test_the_panels_download_runs_in_the_background_and_names_the_raw_lora_it_brought(hub, tmp_path):
    previous = host.use(host.StandaloneHost(tmp_path))
    try:
        entry = model_files.start({"name": LORA.name})
        assert entry["license"] == LORA.license and not entry["exact_size"] and entry["job"]["state"] == "running"
        assert _finished_job()["state"] == "done"
        shown = model_files.listing()
        assert shown["files"][0]["present"]
        assert shown["raw_storymem_loras"] == [LORA.name]  # a core LoRA loader would apply nothing from it
        with pytest.raises(DownloadError, match="not a file this pack downloads"):
            model_files.start({"name": "../../etc/passwd"})
    finally:
        host.use(previous)


def test_a_gguf_expert_is_put_in_place_only_when_it_reads_as_gguf(hub, tmp_path):
    """The GGUF experts (refused by ComfyUI's dialog for their suffix) are checked by their header: a hub error page
    or any other file is deleted, never taken for a model."""
    expert = known_file("Wan2.2-I2V-A14B-HighNoise-Q4_K_M.gguf")
    assert expert.folder == "diffusion_models" and expert.license == "Apache-2.0"
    path = expert.url.removeprefix("https://huggingface.co")
    hub.files[path] = b"<html>not a model</html>"
    with pytest.raises(DownloadError, match="is not a GGUF file"):
        download(expert, tmp_path / "diffusion_models")
    assert not (tmp_path / "diffusion_models" / expert.name).exists()
    hub.files[path] = b"GGUF" + bytes(60)
    assert download(expert, tmp_path / "diffusion_models").read_bytes()[:4] == b"GGUF"


def test_a_folder_in_the_way_of_the_file_is_named_before_anything_is_fetched(hub, tmp_path):
    (tmp_path / "loras" / LORA.name).mkdir(parents=True)
    with pytest.raises(DownloadError, match="exists but is not a file: move it away"):
        download(LORA, tmp_path / "loras")
    assert not partial_path(tmp_path / "loras" / LORA.name).exists()


def test_a_file_that_cannot_be_put_in_place_is_kept_for_the_next_try(hub, tmp_path, monkeypatch):
    def read_only(*args):
        raise PermissionError("read-only file system")

    monkeypatch.setattr("storymem_core.downloads.os.replace", read_only)
    with pytest.raises(DownloadError, match="could not be checked and put in place"):
        download(LORA, tmp_path / "loras")
    assert partial_path(tmp_path / "loras" / LORA.name).read_bytes() == LORA_BYTES


def test_the_panel_shows_a_download_that_broke_unexpectedly_as_failed_and_it_can_start_again(hub, tmp_path,
                                                                                             monkeypatch):
    def broken(*args):
        raise RuntimeError("something no one foresaw")

    previous = host.use(host.StandaloneHost(tmp_path))
    try:
        with monkeypatch.context() as patch:
            patch.setattr(model_files, "download", broken)
            model_files.start({"name": LORA.name})
            job = _finished_job()
        assert job["state"] == "failed" and "something no one foresaw" in job["error"]
        assert model_files.start({"name": LORA.name})["job"]["state"] == "running"  # not refused as still running
        assert _finished_job()["state"] == "done"
    finally:
        host.use(previous)


def _finished_job() -> dict:
    """The panel's first file's job once it is no longer running (30 s at most)."""
    deadline = time.monotonic() + 30
    while model_files.listing()["files"][0]["job"]["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    return model_files.listing()["files"][0]["job"]
