"""The only module that touches ComfyUI: model folders, progress, interruption, devices.

Inside ComfyUI it speaks to `folder_paths`, `comfy.utils.ProgressBar` and `comfy.model_management`.
Outside (tests, scripts) a `StandaloneHost` gives the same answers from a models folder laid out like
ComfyUI's (`--models-dir` / STORYMEM_MODELS_DIR), tqdm progress and an interrupt flag nobody sets
unless asked. Nodes call the module functions; `use()` swaps the host (tests use a temporary one).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from storymem_core.errors import CheckpointError, GenerationInterrupted, StoryMemError
from storymem_core.safe_files import files_under
from storymem_core.weights.kinds import LEGACY_FOLDERS
from storymem_core.weights.readers import MODEL_SUFFIXES

try:  # inside ComfyUI these are importable from its root
    import comfy.latent_formats as comfy_latent_formats
    import comfy.model_management as comfy_model_management
    import comfy.samplers as comfy_samplers
    import comfy.utils as comfy_utils
    import folder_paths
    import latent_preview
except ImportError:
    folder_paths = None

STORYMEM_FOLDER = "storymem"  # saved memory banks and story scripts
MODELS_DIR_ENV = "STORYMEM_MODELS_DIR"
OUTPUT_DIR_ENV = "STORYMEM_OUTPUT_DIR"


class Progress(Protocol):
    def update(self, value: int, total: int, preview: torch.Tensor | None = None) -> None:
        """Move the bar; `preview` is a latent [16, 1, h, w] the host may show (ComfyUI's live preview)."""


class _TqdmProgress:
    def __init__(self, total: int, description: str):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=description, leave=False)

    def update(self, value: int, total: int, preview: torch.Tensor | None = None) -> None:
        self.bar.total = total
        self.bar.update(value - self.bar.n)
        if value >= total:
            self.bar.close()


class StandaloneHost:
    """Folders under `models_dir` with ComfyUI's names; outputs under `output_dir`; CUDA when present."""

    def __init__(self, models_dir: str | os.PathLike | None = None, output_dir: str | os.PathLike | None = None):
        self.models_dir = Path(models_dir or os.environ.get(MODELS_DIR_ENV) or "models")
        self.output = Path(output_dir or os.environ.get(OUTPUT_DIR_ENV) or "output")
        self._interrupt = False

    def folders(self, folder: str) -> list[Path]:
        if folder == STORYMEM_FOLDER:
            return [self.output / STORYMEM_FOLDER, self.models_dir / STORYMEM_FOLDER]
        return [self.models_dir / name for name in (folder, *LEGACY_FOLDERS.get(folder, ()))]

    def filenames(self, folder: str) -> list[str]:
        names = set()
        for root in self.folders(folder):
            if root.is_dir():
                names.update(p.relative_to(root).as_posix() for p in files_under(root) if p.is_file()
                             and ".git" not in p.parts)
        return sorted(names)

    def output_dir(self) -> Path:
        return self.output

    def temp_dir(self) -> Path:
        return self.output / "temp"

    def progress(self, total: int, description: str) -> Progress:
        return _TqdmProgress(total, description)

    def interrupt(self) -> None:
        """Ask the running node to stop at its next step (what ComfyUI's Cancel button does)."""
        self._interrupt = True

    def throw_if_interrupted(self) -> None:
        if self._interrupt:
            self._interrupt = False
            raise GenerationInterrupted("generation was stopped; finished shots and banks are unchanged.")

    def device(self) -> torch.device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def offload_device(self) -> torch.device:
        return torch.device("cpu")

    def free_memory(self, device: torch.device) -> int:
        if device.type == "cuda":
            return torch.cuda.mem_get_info(device)[0]
        return 1 << 62  # host memory: the OS pages, nothing to plan

    def make_room(self, device: torch.device, nbytes: int) -> None:
        """Nothing else holds models here."""


class ComfyHost:
    """ComfyUI's folders (extra_model_paths.yaml included), progress bar, Cancel button and model manager."""

    def __init__(self):
        for path in (Path(folder_paths.get_output_directory()) / STORYMEM_FOLDER,
                     Path(folder_paths.models_dir) / STORYMEM_FOLDER):
            folder_paths.add_model_folder_path(STORYMEM_FOLDER, str(path))

    def folders(self, folder: str) -> list[Path]:
        return [Path(p) for p in folder_paths.get_folder_paths(folder)]

    def filenames(self, folder: str) -> list[str]:
        return [name.replace(os.sep, "/") for name in folder_paths.get_filename_list(folder)]

    def output_dir(self) -> Path:
        return Path(folder_paths.get_output_directory())

    def temp_dir(self) -> Path:
        return Path(folder_paths.get_temp_directory())

    def progress(self, total: int, description: str) -> Progress:
        bar = comfy_utils.ProgressBar(total)
        return _ComfyProgress(bar)

    def interrupt(self) -> None:
        comfy_model_management.interrupt_current_processing(True)

    def throw_if_interrupted(self) -> None:
        comfy_model_management.throw_exception_if_processing_interrupted()

    def device(self) -> torch.device:
        return comfy_model_management.get_torch_device()

    def offload_device(self) -> torch.device:
        return comfy_model_management.unet_offload_device()

    def free_memory(self, device: torch.device) -> int:
        return int(comfy_model_management.get_free_memory(device))

    def make_room(self, device: torch.device, nbytes: int) -> None:
        """Let ComfyUI unload its own models until `nbytes` are free on `device`."""
        comfy_model_management.free_memory(nbytes, device)


class _ComfyProgress:
    """ComfyUI's progress bar; a preview latent is drawn by the previewer the user chose (--preview-method,
    the frontend's live preview setting), as ComfyUI's own samplers do. With previews off (ComfyUI's default) it is
    drawn by ComfyUI's cheap latent-to-RGB previewer, so a shot is seen forming without any setting changed."""

    def __init__(self, bar):
        self.bar = bar
        self.previewer = None

    def update(self, value: int, total: int, preview: torch.Tensor | None = None) -> None:
        image = None
        if preview is not None:
            if self.previewer is None:
                latent_format = comfy_latent_formats.Wan21()
                self.previewer = latent_preview.get_previewer(preview.device, latent_format) or \
                    latent_preview.Latent2RGBPreviewer(latent_format.latent_rgb_factors,
                                                       latent_format.latent_rgb_factors_bias)
            image = self.previewer.decode_latent_to_preview_image("JPEG", preview[None].float())
        self.bar.update_absolute(value, total, image)


_host: StandaloneHost | ComfyHost = ComfyHost() if folder_paths is not None else StandaloneHost()


def use(host: StandaloneHost | ComfyHost) -> StandaloneHost | ComfyHost:
    """Make `host` the one nodes talk to; returns the previous one (tests restore it)."""
    global _host
    previous, _host = _host, host
    return previous


def current() -> StandaloneHost | ComfyHost:
    return _host


def add_json_route(method: str, path: str, handler: Callable[[dict], dict]) -> None:
    """Serve `handler` (the request's JSON in, JSON out, run off the event loop) at `path` on ComfyUI's server, for
    the pack's frontend; a StoryMemError answers 400 with its sentence. Without a ComfyUI server, nothing."""
    # ComfyUI imports its server before it loads packs; a script that loads the nodes without it gets no routes
    server = getattr(getattr(sys.modules.get("server"), "PromptServer", None), "instance", None)
    if folder_paths is None or server is None:
        return
    from aiohttp import web

    async def route(request):
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return web.json_response({"error": "the request body is no JSON object: send {\"name\": ...}."},
                                     status=400)
        try:
            return web.json_response(await asyncio.get_running_loop().run_in_executor(None, handler, body))
        except StoryMemError as error:
            return web.json_response({"error": str(error)}, status=400)

    server.routes.route(method, path)(route)


def model_names(folder: str) -> list[str]:
    """Model files in a ComfyUI model folder, as COMBO choices (paths relative to the folder, '/'-separated)."""
    return [name for name in _host.filenames(folder) if name.lower().endswith(MODEL_SUFFIXES)]


def model_path(folder: str, name: str) -> Path:
    """The file behind a COMBO choice; a missing one names the folders searched."""
    relative = _inside(name, CheckpointError, f"model name '{name}' must be a file inside the {folder} folder, not a "
                       "path: pick one from the list.")
    if (found := _first_in(_host.folders(folder), relative, Path.is_file)) is not None:
        return found
    searched = ", ".join(str(root) for root in _host.folders(folder)) or "no folder"
    raise CheckpointError(f"'{name}' is not in the {folder} folder ({searched}): put the file there or pick another.")


def _inside(name: str, error: type[StoryMemError], refusal: str) -> Path:
    """`name` as a path relative to a folder; an absolute one, or one climbing out with '..', raises `refusal`."""
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise error(refusal)
    return relative


def _first_in(roots: list[Path], relative: Path, there: Callable[[Path], bool]) -> Path | None:
    """`relative` under the first of `roots` where `there` holds for it."""
    return next((root / relative for root in roots if there(root / relative)), None)


def model_folders(folder: str) -> list[Path]:
    """The folders of a ComfyUI model folder name, the one new files go to first."""
    return _host.folders(folder)


def storymem_names() -> list[str]:
    """Every file under the storymem folders, relative and '/'-separated."""
    return _host.filenames(STORYMEM_FOLDER)


def storymem_path(relative: str, error: type[StoryMemError]) -> Path:
    """An existing file or folder under one of the storymem folders; one that is not there raises `error`."""
    inside = _inside(relative, error, f"'{relative}' must be a name inside the storymem folders, not a path: pick "
                     "one from the list.")
    if (found := _first_in(_host.folders(STORYMEM_FOLDER), inside, Path.exists)) is not None:
        return found
    searched = ", ".join(str(root) for root in _host.folders(STORYMEM_FOLDER))
    raise error(f"'{relative}' is not in the storymem folders ({searched}): save it there first or pick another.")


def input_dir() -> Path | None:
    """ComfyUI's input folder (where LoadImage finds images); None outside ComfyUI."""
    return Path(folder_paths.get_input_directory()) if folder_paths is not None else None


def save_dir() -> Path:
    """Where nodes write banks: the output folder's storymem subfolder."""
    return _host.output_dir() / STORYMEM_FOLDER


def output_dir() -> Path:
    return _host.output_dir()


def output_name(name: str, input_name: str, example: str, error: type[StoryMemError] = StoryMemError) -> Path:
    """A save node's path input as a relative path; one that would leave the output folder (absolute, '..') raises
    `error`."""
    return _inside(name.strip(), error, f"{input_name} '{name}' must be a relative folder name inside the output "
                   f"folder, such as {example}.")


def temp_dir() -> Path:
    return _host.temp_dir()


def device() -> torch.device:
    return _host.device()


def sampler_names() -> list[str]:
    """ComfyUI's sampler names (the native nodes' COMBO); outside ComfyUI only the default one, for declarations."""
    return list(comfy_samplers.KSampler.SAMPLERS) if folder_paths is not None else ["uni_pc"]


def scheduler_names() -> list[str]:
    """ComfyUI's scheduler names; outside ComfyUI only the default one."""
    return list(comfy_samplers.KSampler.SCHEDULERS) if folder_paths is not None else ["simple"]


def offload_device() -> torch.device:
    return _host.offload_device()


def free_memory(on: torch.device) -> int:
    return _host.free_memory(on)


def make_room(on: torch.device, nbytes: int) -> None:
    _host.make_room(on, nbytes)


def throw_if_interrupted() -> None:
    _host.throw_if_interrupted()


class ProgressSteps:
    """The engine's `on_step(step, steps)` for one or more shots on one host progress bar.

    Each call checks for Cancel (raising the host's interrupt exception) and advances the bar; a shot's
    last step moves the base on, so a story's shots add up on the same bar.
    """

    def __init__(self, total: int, description: str):
        self.total = max(1, total)
        self.done = 0
        self.bar = _host.progress(self.total, description)

    def __call__(self, step: int, steps: int) -> None:
        throw_if_interrupted()
        self.bar.update(min(self.done + step, self.total), self.total)
        if step == steps:
            self.done += steps


class ShotProgress:
    """One host progress bar for one shot, from start to finish: prompt and memory encoding (1), each
    sampling step (`steps`), decoding (1), keyframe selection (1).

    Use it as the engine's `on_step` (checks for Cancel) and `on_preview` (the newest denoised latent goes
    out with the next step's update, as a live preview of the shot's last frame).
    """

    def __init__(self, steps: int, description: str):
        self.steps = steps
        self.total = steps + 3
        self.latest: torch.Tensor | None = None
        self.bar = _host.progress(self.total, description)
        self.bar.update(0, self.total)

    def preview(self, denoised: torch.Tensor) -> None:
        self.latest = denoised[:, -1:]

    def __call__(self, step: int, steps: int) -> None:
        throw_if_interrupted()
        self.bar.update(1 + step, self.total, self.latest)
        self.latest = None

    def decoded(self) -> None:
        self.bar.update(self.steps + 2, self.total)

    def finished(self) -> None:
        self.bar.update(self.total, self.total)
