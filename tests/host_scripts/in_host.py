"""Start ComfyUI in this process as its main.py does (CPU), and load the pack the way ComfyUI loads custom nodes.

Run only as a subprocess of the host tests (tests/comfy_host.py): ComfyUI's top-level `nodes` module and the
pack's `nodes` package must never meet in one sys.path, so ComfyUI goes first here and the tests' process
never imports it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

COMFYUI = Path(os.environ["STORYMEM_COMFYUI"]).resolve()
PACK = Path(os.environ["STORYMEM_PACK"])  # the pack folder, named as ComfyUI users have it (ComfyUI-StoryMem)
TINY_UMT5_NODE = Path(__file__).resolve().parent.parent / "host_nodes" / "storymem_tiny_umt5.py"
MODEL_FOLDERS = ("diffusion_models", "text_encoders", "vae", "loras", "clip_vision")


def start(models_dir: Path | None = None, output_dir: Path | None = None, input_dir: Path | None = None,
          core_nodes: bool = False, other_packs: tuple[str, ...] = ()) -> dict[str, type]:
    """ComfyUI's node classes (with the pack's, and those of `other_packs`: folders of the host's custom_nodes), its
    folders pointed at the test's models, input and output."""
    script_args, sys.argv = sys.argv, [str(COMFYUI / "main.py"), "--cpu"]
    sys.path.insert(0, str(COMFYUI))
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.cli_args  # noqa: F401  (parses --cpu)

    sys.argv = script_args
    import folder_paths

    for folder in MODEL_FOLDERS if models_dir else ():
        folder_paths.add_model_folder_path(folder, str(models_dir / folder), is_default=True)
    if output_dir:
        folder_paths.set_output_directory(str(output_dir))
        folder_paths.set_temp_directory(str(output_dir / "temp"))
    if input_dir:
        folder_paths.set_input_directory(str(input_dir))
    import nodes

    if core_nodes:
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    for folder in (PACK, *(COMFYUI / "custom_nodes" / name for name in other_packs)):
        if not asyncio.run(nodes.load_custom_node(str(folder))):
            raise SystemExit(f"ComfyUI could not load the custom nodes in {folder}")
    return nodes.NODE_CLASS_MAPPINGS


def load_tiny_umt5() -> None:
    """ComfyUI's umT5 builder assumes the xxl sizes: the test node tests/host_nodes/storymem_tiny_umt5.py gives it the
    tiny file's, loaded as ComfyUI loads custom nodes (as the browser test's server loads it too)."""
    import nodes

    if not asyncio.run(nodes.load_custom_node(str(TINY_UMT5_NODE))):
        raise SystemExit(f"ComfyUI could not load the test node {TINY_UMT5_NODE}")


TEST_SIZE = {"width": 32, "height": 32, "length": 5, "frames": 5, "steps": 2}


def at_test_size(workflow: dict, classes: dict[str, type]) -> dict:
    """A UI-format workflow at test size: 32x32, 5 frames, 2 steps split 1 / 1 between the experts (the Native Shot's
    automatic switch splits them so too). Needs tests/ on sys.path (graph_runner), after `start`."""
    from graph_runner import widget_slots

    for node in workflow["nodes"]:
        if node["type"] not in classes:
            continue
        slots = widget_slots(classes[node["type"]])
        for i, name in enumerate(slots):
            if name in TEST_SIZE:
                node["widgets_values"][i] = TEST_SIZE[name]
            elif name == "end_at_step" and node["widgets_values"][i] < 10000:
                node["widgets_values"][i] = 1
            elif name == "start_at_step" and node["widgets_values"][i] > 0:
                node["widgets_values"][i] = 1
    return workflow


class Executor:
    """ComfyUI's executor as main.py makes it with default settings, reporting to a server that records the events."""

    client_id = "host-test"
    last_node_id = None
    last_prompt_id = None

    def __init__(self):
        import comfy.utils
        import execution

        self.events = []
        self.previews = 0
        self.executor = execution.PromptExecutor(self, cache_type=False, cache_args={"lru": 0, "ram": 0})
        comfy.utils.set_progress_bar_global_hook(self.progress)

    def progress(self, value, total, preview, node_id=None):
        """Progress bars report here, as to main.py's hook that sends them to the browser; previews are counted."""
        self.previews += preview is not None

    def send_sync(self, event, data, sid=None):
        self.events.append((event, data))

    def run(self, prompt: dict, prompt_id: str) -> dict:
        """Validate and execute an API prompt; the nodes that ran, what the output nodes showed and how many live
        previews the progress bars sent (with ComfyUI's default preview method unless --preview-method is given)."""
        import execution

        self.events.clear()
        self.previews = 0
        valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
        if not valid:
            raise SystemExit(f"ComfyUI refused the workflow: {error} {json.dumps(node_errors)[:3000]}")
        self.executor.execute(prompt, prompt_id, {"client_id": self.client_id}, outputs)
        if not self.executor.success:
            raise SystemExit(f"the workflow failed: {json.dumps(self.executor.status_messages, default=str)[-4000:]}")
        executed = [data["node"] for event, data in self.events if event == "executing" and data.get("node")]
        shown = {data["node"]: data["output"] for event, data in self.events if event == "executed"}
        return {"executed": executed, "shown": shown, "previews": self.previews}


def count_samplings() -> list[int]:
    """A one-item counter of calls of ComfyUI's `comfy.sample.sample` (one per expert and shot) from now on."""
    import comfy.sample

    calls = [0]
    sample = comfy.sample.sample

    def counted(*args, **kwargs):
        calls[0] += 1
        return sample(*args, **kwargs)

    comfy.sample.sample = counted
    return calls


def start_workflow(workflow_path: Path, job_dir: Path) -> tuple[dict[str, type], dict]:
    """The host started for one shipped workflow in `job_dir` (ComfyUI-GGUF loaded where the workflow uses its loader,
    the tiny umT5 in place): its node classes and the workflow at test size."""
    text = workflow_path.read_text(encoding="utf-8")
    classes = start(models_dir=job_dir / "models", output_dir=job_dir / "output", input_dir=job_dir / "input",
                    core_nodes=True, other_packs=("ComfyUI-GGUF",) if "UnetLoaderGGUF" in text else ())
    load_tiny_umt5()
    return classes, at_test_size(json.loads(text), classes)


def story_files(folder: Path) -> dict[str, int]:
    """A story folder's files and their modification times; not the writer's lock, which every run takes."""
    from storymem_core.folder_lock import LOCK_FILE

    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))
            if p.name != LOCK_FILE}
