"""The pack as an artist sees it: a real ComfyUI server with its own frontend, driven in headless Chromium.

Needs ComfyUI with the pack linked into custom_nodes (`../shared/comfyui/install.sh DIR .`, then
STORYMEM_COMFYUI=DIR/ComfyUI), Debian's chromium (STORYMEM_CHROMIUM overrides /usr/bin/chromium) and playwright.
Outside CI a missing piece skips these tests; under CI=true it fails them. Screenshots go to
STORYMEM_SCREENSHOT_DIR (default: the test's temporary folder).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from comfy_host import GGUF_MISSING, missing
from helpers import box_inside, boxes_overlap, free_port
from local_hub import LocalHub, saved
from PIL import Image
from tiny_gguf import write_gguf_experts
from twelve_shot_story import CUTS, EXPERT_LOADERS, SHOTS, story_banks, story_workflow
from twelve_shot_story import SHIPPED as NATIVE_RUNNER

from storymem_core import tiny_models as tiny
from storymem_core.downloads import known_file, partial_path
from storymem_core.video import read_mp4, write_mp4

PACK_ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((PACK_ROOT / "workflows").rglob("*.json"))
STORY = PACK_ROOT / "workflows" / "storymem_3_shot_story.json"
VIEWPORT = {"width": 1600, "height": 1000}
OTHER_WINDOWS = ({"width": 1280, "height": 720}, {"width": 1920, "height": 1080})  # a laptop, a full-HD monitor
LOADERS = ("StoryMemLoadExperts", "StoryMemLoadLora", "StoryMemLoadTextEncoder", "StoryMemLoadVAE",
           "StoryMemLoadKeyframeEncoder", "UNETLoader", "UnetLoaderGGUF", "CLIPLoader", "VAELoader",
           "StoryMemLoraModel", "LoraLoaderModelOnly")
DIALOG_SOURCES = ("https://huggingface.co/", "https://civitai.com/")  # what ComfyUI's Missing Models dialog fetches
DIALOG_SUFFIXES = (".safetensors", ".sft")
SHOT_TYPES = ("StoryMemFirstShot", "StoryMemShot")
BANK_LINK_COLOUR = "#e0a030"
SERVER_START_S = 180
RUN_S = 300
CORE_LOADABLE = "core_loadable"  # the subfolder of each model folder with the tiny models ComfyUI's own loaders read
TEST_NODES = PACK_ROOT / "tests" / "host_nodes"  # the tiny umT5 for ComfyUI's Load CLIP (storymem_tiny_umt5.py)
MM2V_HIGH = known_file("StoryMem/Wan2.2-MM2V-A14B/backbone_high_noise.pth")  # removed from the tiny models
MM2V_LOW = known_file("StoryMem/Wan2.2-MM2V-A14B/backbone_low_noise.pth")


def _comfyui_dir() -> Path:
    root = os.environ.get("STORYMEM_COMFYUI")
    if not root or not (Path(root) / "main.py").is_file():
        missing("needs a ComfyUI: set STORYMEM_COMFYUI to a ComfyUI folder (v0.12.1+) with this pack in its "
                "custom_nodes (README: Test)")
    linked = Path(root) / "custom_nodes" / "ComfyUI-StoryMem"
    if not linked.exists() or linked.resolve() != PACK_ROOT:
        missing(f"needs this checkout in the ComfyUI: link it as {linked} (README: Test)")
    return Path(root)


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def hub():
    """A local stand-in for Hugging Face (HF_ENDPOINT) holding one StoryMem LoRA the tiny models lack."""
    with LocalHub() as server:
        server.files[MM2V_HIGH.url.removeprefix("https://huggingface.co")] = saved(tiny._peft_lora(0))
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory, hub):
    """ComfyUI on tiny models under the shipped workflows' file names (their folder first, where downloads go), the
    tiny models ComfyUI's own loaders read under the same names in each folder's CORE_LOADABLE subfolder (the engine's
    and core's tiny sizes differ), live previews on and Hugging Face files coming from the local hub."""
    comfyui = _comfyui_dir()
    root = tmp_path_factory.mktemp("comfyui")
    tiny.write_tiny_models(root / "models")
    core = tiny.write_core_models(root / "core_models")  # the native workflows' speed LoRAs and GGUF experts
    for name in (tiny.LIGHTX2V_HIGH, tiny.LIGHTX2V_LOW):
        shutil.copy(core / "loras" / name, root / "models" / "loras" / name)
    with_gguf = (comfyui / "custom_nodes" / "ComfyUI-GGUF" / "nodes.py").is_file()
    if with_gguf:
        write_gguf_experts(core)
        for name in (core / "diffusion_models").glob("*.gguf"):
            name.rename(root / "models" / "diffusion_models" / name.name)  # names of their own: loaded as named
    for folder in core.iterdir():
        folder.rename(root / "models" / folder.name / CORE_LOADABLE)
    tiny.write_reference_images(root / "input")
    folders = "".join(
        f"  {name}: {name}\n" for name in ("diffusion_models", "loras", "text_encoders", "vae", "clip_vision")
    )
    (root / "extra_model_paths.yaml").write_text(
        f"storymem_tiny:\n  base_path: {root / 'models'}\n  is_default: true\n{folders}"
        f"storymem_test_nodes:\n  custom_nodes: {TEST_NODES}\n"
    )
    settings = root / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))  # no template browser over the canvas
    port = free_port()
    log = (root / "server.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "main.py",
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(port),
            "--disable-auto-launch",
            "--extra-model-paths-config",
            str(root / "extra_model_paths.yaml"),
            "--output-directory",
            str(root / "output"),
            "--temp-directory",
            str(root / "temp"),
            "--input-directory",
            str(root / "input"),
            "--user-directory",
            str(root / "user"),
            "--database-url",
            f"sqlite:///{root / 'comfyui.db'}",
            "--preview-method",
            "auto",
        ],
        cwd=comfyui,
        env={**os.environ, "HF_ENDPOINT": hub.url},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                _get_json(f"{url}/object_info/StoryMemShot")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"ComfyUI did not start:\n{(root / 'server.log').read_text()[-4000:]}")
                time.sleep(1)
        shown = root / "temp" / "temp" / "storymem"  # what SHOWN_AFTER_A_RUN shows (ComfyUI empties temp on start)
        shown.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (166, 96), "grey").save(shown / "layout_keyframe.jpg")
        write_mp4(torch.zeros(5, 240, 416, 3, dtype=torch.uint8), shown / "layout_shot.mp4")
        yield {"url": url, "root": root, "gguf": with_gguf}
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(server):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("needs playwright: pip install -r requirements-dev.txt")
    chromium = os.environ.get("STORYMEM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).is_file():
        missing("needs chromium: apt-get install chromium (or STORYMEM_CHROMIUM=/path/to/chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def screenshots(tmp_path) -> Path:
    folder = Path(os.environ.get("STORYMEM_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Frontend:
    """One browser tab on the server: what the page logged, what the websocket carried, and helpers."""

    def __init__(self, browser, url: str, viewport: dict = VIEWPORT):
        self.url = url
        self.viewport = viewport
        self.page = browser.new_page(viewport=viewport)
        self.problems: list[str] = []
        self.messages: list[dict] = []
        self.previews = 0
        self.page.on(
            "console", lambda message: message.type == "error" and self.problems.append(f"console: {message.text}")
        )
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error} {error.stack}"))
        self.page.on("requestfailed", lambda request: self.problems.append(f"request failed: {request.url}"))
        self.page.on(
            "response",
            lambda response: response.status >= 400 and self.problems.append(f"HTTP {response.status}: {response.url}"),
        )
        self.page.on("websocket", self._listen)
        self.open()

    def _listen(self, websocket) -> None:
        def received(payload) -> None:
            if isinstance(payload, bytes):
                self.previews += int.from_bytes(payload[:4], "big") in (1, 4)  # a preview image, ComfyUI's binary event
            else:
                self.messages.append(json.loads(payload))

        websocket.on("framereceived", received)

    def open(self) -> None:
        self.page.goto(self.url)
        self.page.wait_for_function(
            "() => window.app?.graph && window.app.vueAppReady && window.app.canvas", timeout=90_000
        )
        self.page.wait_for_timeout(1000)

    def pack_problems(self) -> list[str]:
        """Errors the page reported that come from the pack: its script, its nodes' files, its messages."""
        return [problem for problem in self.problems if "storymem" in problem.lower()]

    def load(self, workflow: Path | dict) -> None:
        """Open a workflow file, or a workflow made by the test, as dropping it on the page does."""
        if isinstance(workflow, Path):
            workflow = json.loads(workflow.read_text())
        self.page.evaluate("async (workflow) => { await window.app.loadGraphData(workflow); }", workflow)
        self.page.wait_for_timeout(1500)

    def set_widgets(self, values: dict) -> None:
        """Set every widget named in `values` on every node, as typing into it does."""
        self.evaluate(
            """(values) => { for (const node of app.graph.nodes) for (const widget of node.widgets ?? [])
                if (widget.name in values) widget.value = values[widget.name]; }""",
            values,
        )

    def evaluate(self, script: str, argument=None):
        return self.page.evaluate(script, argument)

    def queue_and_wait(self) -> dict:
        """Queue the graph as the Run button does; the finished history entry."""
        before = set(_get_json(f"{self.url}/history"))
        self.page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
        deadline = time.monotonic() + RUN_S
        while time.monotonic() < deadline:
            new = {key: run for key, run in _get_json(f"{self.url}/history").items() if key not in before}
            if new:
                self.page.wait_for_timeout(1500)  # the frontend hears the end of the run
                return next(iter(new.values()))
            time.sleep(1)
        pytest.fail("the queued workflow did not finish in time")


@pytest.fixture
def frontend(browser, server):
    tab = Frontend(browser, server["url"])
    yield tab
    tab.page.close()


# Node and group rectangles in graph units (title bar included), the view, whether the canvas draws text (ComfyUI
# draws nodes as grey boxes below its low-quality zoom), the window and the page's fixed panels.
LAYOUT = """() => {
  const title = LiteGraph.NODE_TITLE_HEIGHT;
  const rect = (selector) => document.querySelector(selector)?.getBoundingClientRect().toJSON() ?? null;
  return {
    nodes: app.graph.nodes.map((n) => ({ id: n.id, type: n.type, title: n.title,
                                         rect: [n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title] })),
    groups: app.graph.groups.map((g) => ({ title: g.title, rect: [...g._bounding ?? g.bounding],
                                           title_height: g.titleHeight ?? LiteGraph.NODE_TITLE_HEIGHT })),
    view: { scale: app.canvas.ds.scale, offset: [...app.canvas.ds.offset],
            low_quality: app.canvas.low_quality, threshold: app.canvas._lowQualityZoomThreshold },
    window: [window.innerWidth, window.innerHeight],
    sidebar: rect(".side-tool-bar-container"), tabs: rect(".workflow-tabs-container"),
    actionbar: rect(".actionbar"), minimap: rect(".litegraph-minimap"),
  };
}"""


def _overlapping_nodes(layout: dict) -> list[tuple[str, str]]:
    nodes = layout["nodes"]
    return [
        (a["title"], b["title"]) for i, a in enumerate(nodes) for b in nodes[i + 1 :]
        if boxes_overlap(a["rect"], b["rect"])
    ]


def _untidy_groups(layout: dict) -> list[str]:
    """Groups that overlap, have no title, or leave a node outside every group (or inside two)."""
    groups = layout["groups"]
    problems = [f"{a['title']} overlaps {b['title']}" for i, a in enumerate(groups) for b in groups[i + 1 :]
                if boxes_overlap(a["rect"], b["rect"])]
    problems += ["a group without a title" for group in groups if not group["title"].strip()]
    for node in layout["nodes"]:
        holding = [group["title"] for group in groups if box_inside(node["rect"], group["rect"])]
        if len(holding) != 1:
            problems.append(f"{node['title'] or node['type']} is in {holding or 'no group'}")
    return problems


def _on_screen(layout: dict, rect: list[float]) -> list[float]:
    scale, (dx, dy) = layout["view"]["scale"], layout["view"]["offset"]
    return [(rect[0] + dx) * scale, (rect[1] + dy) * scale, rect[2] * scale, rect[3] * scale]


def _canvas(layout: dict) -> list[float]:
    """The part of the window the canvas shows unobstructed: right of the sidebar, below the tabs."""
    left = layout["sidebar"]["right"] if layout["sidebar"] else 0
    top = layout["tabs"]["bottom"] if layout["tabs"] else 0
    return [left, top, layout["window"][0] - left, layout["window"][1] - top]


def _hidden_by_the_page(layout: dict, must_see: list[dict], whole_nodes: bool = True) -> list[str]:
    """What the saved view hides: any of `must_see` (group title bars) off screen or under the page's panels, and
    (`whole_nodes`) any node shown whole under the sidebar, the tabs, the Run bar or the minimap (a node partly past
    the window's edge is reached by scrolling)."""
    canvas = _canvas(layout)
    panels = [[p["x"], p["y"], p["width"], p["height"]] for p in (layout["actionbar"], layout["minimap"]) if p]
    window = [0, 0, *layout["window"]]
    hidden = []
    for item in must_see:
        shown = _on_screen(layout, item["rect"])
        if not box_inside(shown, canvas) or any(boxes_overlap(shown, panel) for panel in panels):
            hidden.append(f"the title of group {item['title']}")
    for node in layout["nodes"] if whole_nodes else ():
        shown = _on_screen(layout, node["rect"])
        covered = any(boxes_overlap(shown, panel) for panel in panels)
        if box_inside(shown, window) and (not box_inside(shown, canvas) or covered):
            hidden.append(node["title"] or node["type"])
    return hidden


def _title_bars(layout: dict) -> list[dict]:
    return [{"title": g["title"], "rect": [*g["rect"][:3], g["title_height"]]} for g in layout["groups"]]


def _top_left_group(layout: dict) -> list[dict]:
    """The group a reader starts from: the one nearest the graph's top-left corner."""
    return [min(_title_bars(layout), key=lambda g: g["rect"][0] + g["rect"][1])]


def _model_problems(frontend: "Frontend", models_listing: dict) -> list[str]:
    """Loaders without `properties.models` naming each file they load, and files neither ComfyUI's Missing Models
    dialog (a .safetensors on Hugging Face or Civitai) nor the pack's model files panel can download."""
    loaders = frontend.evaluate("""(types) => app.graph.nodes.filter((n) => types.includes(n.type)).map((n) => ({
        title: n.title, models: n.properties?.models ?? null,
        files: (n.widgets ?? []).map((w) => w.value)
            .filter((v) => typeof v === 'string' && /\\.(safetensors|pth|gguf)$/.test(v)) }))""", list(LOADERS))
    panel = {(file["folder"], file["name"]) for file in models_listing["files"]}
    problems = []
    for loader in loaders:
        offered = {model["name"]: model for model in loader["models"] or []}
        if not loader["files"] or sorted(offered) != sorted(loader["files"]):
            problems.append(f"{loader['title']}: properties.models {sorted(offered)} for files {loader['files']}")
        for model in offered.values():
            by_dialog = model.get("url", "").startswith(DIALOG_SOURCES) and model["name"].endswith(DIALOG_SUFFIXES)
            if not (by_dialog or (model["directory"], model["name"]) in panel):
                problems.append(f"{loader['title']}: nothing can download {model}")
    return problems


def _skip_without_gguf_loader(server: dict, path: Path) -> None:
    if "UnetLoaderGGUF" in path.read_text() and not server["gguf"]:
        missing(GGUF_MISSING)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_shipped_workflow_opens_readable_grouped_and_tidy_without_errors(frontend, server, path, screenshots):
    _skip_without_gguf_loader(server, path)
    frontend.load(path)
    dialogs = frontend.evaluate(
        "() => [...document.querySelectorAll('.p-dialog')].map((d) => d.innerText.slice(0, 200))"
    )
    assert dialogs == [], f"a dialog opened with the workflow (missing nodes or models?): {dialogs}"
    broken = frontend.evaluate("() => app.graph.nodes.filter((n) => n.has_errors).map((n) => n.type)")
    assert broken == [], f"nodes the frontend does not know: {broken}"
    layout = frontend.evaluate(LAYOUT)
    assert layout["view"]["low_quality"] is False and layout["view"]["scale"] >= layout["view"]["threshold"], (
        f"opens at {layout['view']['scale']:.2f}, below ComfyUI's text threshold {layout['view']['threshold']:.3f}")
    assert _overlapping_nodes(layout) == []
    assert layout["groups"] and _untidy_groups(layout) == []
    assert _hidden_by_the_page(layout, _title_bars(layout)) == []  # every section's title in view
    assert _model_problems(frontend, _get_json(f"{frontend.url}/storymem/model-files")) == []
    shots = [node for node in layout["nodes"] if node["type"] in SHOT_TYPES]
    assert all(node["title"].startswith(f"Shot {k} · ") for k, node in enumerate(shots, 1)), [n["title"] for n in shots]
    fed = frontend.evaluate("""() => app.graph.nodes.filter((n) => n.type === 'StoryMemShot')
        .flatMap((n) => ['prompt', 'cut'].map((name) => n.widgets.find((w) => w.name === name).hidden === true))""")
    assert all(fed), "a Story Shot feeds prompt and cut: the shot shows them as sockets, not as stale boxes"
    frontend.page.screenshot(path=str(screenshots / f"{path.stem}_opened.png"))
    assert frontend.pack_problems() == []


@pytest.mark.parametrize("window", OTHER_WINDOWS, ids=lambda w: f"{w['width']}x{w['height']}")
def test_shipped_workflows_open_usable_in_other_windows(browser, server, window, screenshots):
    """In a smaller and a larger window each workflow still opens readable, its first group's title in view and clear
    of the page's panels (the rest is panned to, as in any ComfyUI workflow larger than the window)."""
    tab = Frontend(browser, server["url"], window)
    try:
        for path in WORKFLOWS:
            if "UnetLoaderGGUF" in path.read_text() and not server["gguf"]:
                continue
            tab.load(path)
            layout = tab.evaluate(LAYOUT)
            assert layout["view"]["low_quality"] is False, (path.stem, layout["view"])
            assert _hidden_by_the_page(layout, _top_left_group(layout), whole_nodes=False) == [], path.stem
            tab.page.screenshot(path=str(screenshots / f"{path.stem}_{window['width']}x{window['height']}.png"))
        assert tab.pack_problems() == []
    finally:
        tab.page.close()


# What a finished run shows on each kind of node (nodes/previews.py): a full memory strip, a shot's looping preview,
# a film player, a story's shot list; and a sampling preview on every node that samples (ComfyUI's own event).
SHOWN_AFTER_A_RUN = """async ([bankNodes, shotNodes, filmNodes, samplingNodes, scriptNodes]) => {
  const keyframe = (index) => ({ filename: 'layout_keyframe.jpg', subfolder: 'storymem', type: 'temp', index,
                                 shot: index, frame: 0, source: index ? 'generated' : 'reference', pinned: false,
                                 fixed: index === 0 });
  const bank = { storymem_bank: [...Array(10).keys()].map(keyframe),
                 storymem_bank_limits: [{ size: 10, max_size: 10, fixed: 1 }] };
  const clip = { storymem_video: [{ filename: 'layout_shot.mp4', subfolder: 'storymem', type: 'temp',
                                    format: 'video/mp4' }] };  // a film plays in a player of the same size
  const canvas = Object.assign(document.createElement('canvas'), { width: 832, height: 480 });
  const preview = await new Promise((resolve) => canvas.toBlob(resolve, 'image/png'));
  for (const node of app.graph.nodes) {
    const id = String(node.id);
    let output = null;
    if (bankNodes.includes(node.type)) output = { ...output, ...bank };
    if (shotNodes.includes(node.type)) output = { ...output, ...clip };
    if (filmNodes.includes(node.type)) output = { ...output, ...clip };
    if (scriptNodes.includes(node.type)) output = { storymem_shots: [1, 2, 3].map((number) => ({ number,
        prompt: 'A shot of the story, long enough to wrap over two lines of the list under the node.', cut: true })) };
    if (samplingNodes.includes(node.type))
      app.api.dispatchCustomEvent('b_preview_with_metadata', { blob: preview, nodeId: id, displayNodeId: id,
                                                           parentNodeId: id, realNodeId: id, promptId: 'layout' });
    if (output) app.api.dispatchCustomEvent('executed', { node: id, display_node: id, output, prompt_id: 'layout' });
  }
}"""
BANK_NODES = ["StoryMemEmptyBank", "StoryMemBankFromImages", "StoryMemLoadBank", "StoryMemSaveBank",
              "StoryMemEditBank", "StoryMemPreviewBank", "StoryMemSelectKeyframes", "StoryMemFirstShot",
              "StoryMemShot", "StoryMemNativeShot", "StoryMemStoryRunner", "StoryMemNativeStoryRunner"]
SHOT_NODES = ["StoryMemFirstShot", "StoryMemShot", "StoryMemNativeShot"]
FILM_NODES = ["StoryMemCombineShots", "StoryMemStoryRunner", "StoryMemNativeStoryRunner"]
SAMPLING_NODES = ["KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced", *SHOT_NODES,
                  "StoryMemStoryRunner", "StoryMemNativeStoryRunner"]


@pytest.mark.parametrize("path", [p for p in WORKFLOWS if p not in (STORY, NATIVE_RUNNER)], ids=lambda p: p.stem)
def test_shipped_workflow_keeps_its_nodes_apart_when_a_run_shows_its_outputs(frontend, server, path, screenshots):
    """The frontend grows nodes for what a run shows under them (sampling previews, shot videos, memory strips, the
    film player); grown so, no node covers another and every node stays in its group. (The 3-shot story and the Native
    Story Runner are run for real: test_story_runs_with_previews_and_its_memory_stays_after_a_reload,
    test_native_story_runner_makes_a_12_shot_story_queued_from_the_page.)"""
    _skip_without_gguf_loader(server, path)
    frontend.load(path)
    frontend.evaluate(SHOWN_AFTER_A_RUN, [BANK_NODES, SHOT_NODES, FILM_NODES, SAMPLING_NODES, ["StoryMemStoryScript"]])
    frontend.page.wait_for_timeout(1500)  # previews and videos load, nodes grow
    layout = frontend.evaluate(LAYOUT)
    (screenshots / f"{path.stem}_after_run.json").write_text(json.dumps(layout, indent=1))
    frontend.page.screenshot(path=str(screenshots / f"{path.stem}_after_run.png"))
    assert _overlapping_nodes(layout) == [], "nodes grown by their strips and previews cover their neighbours"
    assert _untidy_groups(layout) == []


def test_new_shot_nodes_keep_their_seed_and_memory_links_have_their_colour(frontend):
    added = frontend.evaluate("""() => ['StoryMemFirstShot', 'StoryMemShot', 'StoryMemStoryRunner'].map((type) => {
        const node = LiteGraph.createNode(type);
        app.graph.add(node);
        return node.widgets.find((w) => w.name === 'control_after_generate').value;
    })""")
    assert added == ["fixed", "fixed", "fixed"]
    colours = frontend.evaluate(
        "() => [app.canvas.constructor.link_type_colors.STORYMEM_BANK, app.canvas.constructor.link_type_colors.IMAGE]"
    )
    assert colours[0] == BANK_LINK_COLOUR and colours[0] != colours[1]


def _shot_panels(frontend: Frontend, types: tuple[str, ...] = SHOT_TYPES) -> list[dict]:
    """What each node of `types` shows: its memory strip's keyframes (all loaded?) and its video player."""
    return frontend.evaluate("""(types) => app.graph.nodes.filter((n) => types.includes(n.type)).map((n) => {
        const element = (name) => n.widgets.find((w) => w.name === name)?.element;
        const images = [...(element('storymem_memory')?.querySelectorAll('img') ?? [])];
        const video = element('storymem_video')?.querySelector('video');
        return { id: String(n.id), title: n.title, keyframes: images.length,
                 loaded: images.every((image) => image.complete && image.naturalWidth > 0),
                 video: video ? { src: video.src, loop: video.loop, muted: video.muted } : null };
    })""", list(types))


def _wait_for_strips(frontend: Frontend, types: tuple[str, ...] = SHOT_TYPES) -> None:
    frontend.page.wait_for_function(
        """(types) => {
        const shots = app.graph.nodes.filter((n) => types.includes(n.type));
        const images = (n) =>
            n.widgets.find((w) => w.name === 'storymem_memory')?.element.querySelectorAll('img') ?? [];
        return shots.length > 0 && shots.every((n) => [...images(n)]
            .some((image) => image.complete && image.naturalWidth > 0));
    }""",
        arg=list(types),
        timeout=60_000,
    )


def _film_video(frontend: Frontend) -> str | None:
    """The src of the film Combine Shots plays, or None."""
    return frontend.evaluate("""() => {
        const node = app.graph.nodes.find((n) => n.type === 'StoryMemCombineShots');
        return node.widgets?.find((w) => w.name === 'storymem_video')?.element.querySelector('video')?.src ?? null;
    }""")


def test_story_runs_with_previews_and_its_memory_stays_after_a_reload(frontend, server, screenshots):
    frontend.load(STORY)
    frontend.set_widgets(tiny.TINY_SHOT)
    run = frontend.queue_and_wait()
    assert run["status"]["status_str"] == "success", run["status"]["messages"]

    _wait_for_strips(frontend)
    panels = _shot_panels(frontend)
    assert [panel["title"].split(" · ")[:-1] for panel in panels] == [
        ["Shot 1", "T2V"],
        ["Shot 2", "cut", "M2V"],
        ["Shot 3", "continues", "MI2V"],
    ]
    counts = [panel["keyframes"] for panel in panels]
    assert counts[0] >= 1 and all(earlier < later for earlier, later in zip(counts, counts[1:])), counts  # it grows
    for panel in panels:
        assert panel["loaded"], panel
        assert (
            panel["video"] and panel["video"]["loop"] and panel["video"]["muted"] and "shot_" in panel["video"]["src"]
        ), panel

    total = tiny.TINY_SHOT["steps"] + 3  # encode, each step, decode, keyframes: one bar per shot
    for panel in panels:
        shown = [
            m["data"]["value"]
            for m in frontend.messages
            if m["type"] == "progress" and m["data"].get("node") == panel["id"]
        ]
        maxima = {
            m["data"]["max"]
            for m in frontend.messages
            if m["type"] == "progress" and m["data"].get("node") == panel["id"]
        }
        assert maxima == {total} and shown[-1] == total and any(0 < value < total for value in shown), (
            panel["title"],
            shown,
        )
    assert frontend.previews >= len(panels), "live previews while sampling"

    frontend.page.wait_for_timeout(1000)  # the preview videos start playing
    frontend.page.screenshot(path=str(screenshots / "storymem_3_shot_story_after_run.png"))
    layout = frontend.evaluate(LAYOUT)
    (screenshots / "storymem_3_shot_story_after_run.json").write_text(json.dumps(layout, indent=1))
    assert _overlapping_nodes(layout) == [], "nodes grown by their strips and previews cover their neighbours"
    assert _untidy_groups(layout) == []

    films = sorted((server["root"] / "output").rglob("*.mp4"))
    film = _film_video(frontend)
    assert len(films) == 1 and film and films[0].name in film
    requeued = frontend.queue_and_wait()  # the frontend's players add no input: ComfyUI's cache serves every node
    assert requeued["prompt"][2] == run["prompt"][2]
    cached = [data["nodes"] for kind, data in requeued["status"]["messages"] if kind == "execution_cached"]
    assert cached and set(cached[0]) == set(run["prompt"][2])
    assert sorted((server["root"] / "output").rglob("*.mp4")) == films, "a re-queue wrote another film"

    frontend.page.reload()
    frontend.page.wait_for_function("() => window.app?.graph && window.app.vueAppReady", timeout=90_000)
    _wait_for_strips(frontend)
    again = _shot_panels(frontend)
    assert [(p["keyframes"], p["video"] is not None) for p in again] == [(p["keyframes"], True) for p in panels]
    frontend.page.wait_for_function("() => app.graph.nodes.find((n) => n.type === 'StoryMemCombineShots')"
                                    ".widgets?.some((w) => w.name === 'storymem_video')", timeout=30_000)
    assert _film_video(frontend) == film, "the film plays under Combine Shots again after a reload"
    frontend.page.screenshot(path=str(screenshots / "storymem_3_shot_story_after_reload.png"))

    frontend.evaluate("""() => { const shot = app.graph.nodes.filter((n) => n.type === 'StoryMemShot')[1];
        shot.widgets.find((w) => w.name === 'frames').value = 7; }""")  # not 4n+1: the third shot fails
    failed = frontend.queue_and_wait()
    errors = [data for kind, data in failed["status"]["messages"] if kind == "execution_error"]
    assert errors and errors[0]["exception_message"].startswith("shot 3 ('The old keeper in the yellow raincoat"), (
        errors
    )
    frontend.page.wait_for_function(
        '() => document.body.innerText.includes("shot 3 (\'The old keeper")', timeout=30_000
    )
    assert frontend.pack_problems() == []


# Each loader widget set to the file of the same name in CORE_LOADABLE, as an artist picks it from the list.
CORE_LOADABLE_FILES = """(folder) => { for (const node of app.graph.nodes) for (const widget of node.widgets ?? []) {
    const file = `${folder}/${widget.value}`;
    if (Array.isArray(widget.options?.values) && widget.options.values.includes(file)) widget.value = file; } }"""


@pytest.mark.parametrize("loader", EXPERT_LOADERS)
def test_native_story_runner_makes_a_12_shot_story_queued_from_the_page(frontend, server, loader, screenshots):
    """Issue 23's acceptance in the browser: the shipped Native Story Runner workflow given a 12-shot script and tiny
    models ComfyUI's own loaders read (Load Diffusion Model as shipped, or Unet Loader (GGUF) on GGUF experts), queued
    from the page, writes the 12 shots, their banks and the film into its story folder; the memory grows to its
    maximum; the page shows the sampling previews, the runner's last memory and the film, with no node covering
    another; queued again, nothing runs and nothing is written."""
    if loader == "gguf" and not server["gguf"]:
        missing(GGUF_MISSING)
    frontend.load(story_workflow(loader))
    frontend.set_widgets(tiny.TINY_SHOT)
    frontend.evaluate(CORE_LOADABLE_FILES, CORE_LOADABLE)
    started = time.time_ns()
    run = frontend.queue_and_wait()
    assert run["status"]["status_str"] == "success", run["status"]["messages"]
    prompt = run["prompt"][2]
    assert {"gguf": "UnetLoaderGGUF", "core": "UNETLoader"}[loader] in {n["class_type"] for n in prompt.values()}
    runner = next(key for key, node in prompt.items() if node["class_type"] == "StoryMemNativeStoryRunner")

    film = run["outputs"][runner]["storymem_video"][0]
    folder = server["root"] / "output" / film["subfolder"]
    shots = sorted((folder / "shots").glob("*.mp4"))
    assert [p.name for p in shots] == [f"shot_{k:03d}.mp4" for k in range(1, SHOTS + 1)]
    assert all(p.stat().st_mtime_ns > started for p in shots), "the shots were made by this run, not found done"
    assert film["filename"] == "film.mp4"
    assert read_mp4(folder / "film.mp4").shape[0] == sum(read_mp4(p).shape[0] for p in shots)
    assert [read_mp4(p).shape[0] for p in shots] == [5 if cut else 4 for cut in CUTS]  # a continuation: mi2v
    max_memory = json.loads((folder / "memory_settings.json").read_text())["max_memory"]
    sizes = [len(bank) for bank in story_banks(folder)]
    assert sizes[0] == 1 and sizes[-1] == max_memory, sizes  # from the reference image up to the maximum
    assert all(later > earlier or later == max_memory for earlier, later in zip(sizes, sizes[1:])), sizes

    _wait_for_strips(frontend, ("StoryMemNativeStoryRunner",))
    [panel] = _shot_panels(frontend, ("StoryMemNativeStoryRunner",))
    assert panel["keyframes"] == sizes[-1] and panel["loaded"], panel  # the memory after the last shot
    assert panel["video"] and "film.mp4" in panel["video"]["src"] and folder.name in panel["video"]["src"], panel
    assert frontend.previews >= SHOTS, "live previews while the shots sample"
    frontend.page.wait_for_timeout(1000)  # the film starts playing
    frontend.page.screenshot(path=str(screenshots / f"storymem_native_story_runner_{loader}_after_run.png"))
    layout = frontend.evaluate(LAYOUT)
    (screenshots / f"storymem_native_story_runner_{loader}_after_run.json").write_text(json.dumps(layout, indent=1))
    assert _overlapping_nodes(layout) == [], "nodes grown by the memory strip, previews and film cover their neighbours"
    assert _untidy_groups(layout) == []

    written = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    requeued = frontend.queue_and_wait()
    cached = [data["nodes"] for kind, data in requeued["status"]["messages"] if kind == "execution_cached"]
    assert cached and set(cached[0]) == set(prompt), "a re-queue of the finished story runs no node"
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == written
    assert frontend.pack_problems() == []


def test_missing_storymem_files_are_offered_with_size_and_license_and_download_into_place(frontend, server,
                                                                                          screenshots):
    loras = server["root"] / "models" / "loras"
    for file in (MM2V_HIGH, MM2V_LOW):  # the tiny models carry both pairs: here the MM2V pair must be missing
        (loras / file.name).unlink(missing_ok=True)
    frontend.load(STORY)
    raw = tiny.STORYMEM_LORA_HIGH
    frontend.evaluate(
        """async ([high, low, raw]) => {
        const lora = app.graph.nodes.find((n) => n.type === 'StoryMemLoadLora');
        lora.widgets[0].value = high;  // a workflow that names the MM2V pair, which this server lacks
        lora.widgets[1].value = low;
        lora.properties.models = [];
        const core = LiteGraph.createNode('LoraLoaderModelOnly');  // given StoryMem's raw .pth
        core.pos = [40, 2000];
        app.graph.add(core);
        core.widgets.find((w) => w.name === 'lora_name').value = raw;
        await app.loadGraphData(app.graph.serialize());
    }""",
        [MM2V_HIGH.name, MM2V_LOW.name, raw],
    )
    panel = frontend.page.locator("#storymem-model-files")
    panel.wait_for(timeout=30_000)
    rows = {name: panel.locator(f"tr[data-name='{name}']") for name in (MM2V_HIGH.name, MM2V_LOW.name)}
    assert list(rows) == [MM2V_HIGH.name, MM2V_LOW.name] and panel.locator("tr").count() == 2  # what it names
    for row in rows.values():
        assert "loras/ · about 1.2 GB · CC BY-NC 4.0" in row.inner_text() and "missing" in row.inner_text()
    frontend.page.wait_for_function(
        "() => document.body.innerText.includes(\"is given StoryMem/Wan2.2-MI2V-A14B/backbone_high_noise.pth, "
        "StoryMem's raw LoRA\")", timeout=30_000
    )

    rows[MM2V_HIGH.name].locator("button.storymem-download").click()
    rows[MM2V_LOW.name].locator("button.storymem-download").click()  # the local hub lacks it: HTTP 404
    frontend.page.wait_for_function(
        """(name) => document.querySelector(`#storymem-model-files tr[data-name='${name}']`)?.innerText
        .includes('in place')""", arg=MM2V_HIGH.name, timeout=60_000,
    )
    frontend.page.wait_for_function(
        """(name) => document.querySelector(`#storymem-model-files tr[data-name='${name}']`)?.innerText
        .includes('HTTP 404')""", arg=MM2V_LOW.name, timeout=60_000,
    )
    assert (loras / MM2V_HIGH.name).is_file() and not partial_path(loras / MM2V_HIGH.name).exists()
    assert not (loras / MM2V_LOW.name).exists()
    listed = frontend.evaluate("async () => (await (await fetch('/object_info/LoraLoaderModelOnly')).json())"
                               ".LoraLoaderModelOnly.input.required.lora_name[0]")
    assert MM2V_HIGH.name in listed
    commands = frontend.evaluate("() => app.extensionManager.command.commands.map((c) => c.id)")
    assert "StoryMem.GetModelFiles" in commands
    frontend.page.screenshot(path=str(screenshots / "storymem_model_files.png"))
    frontend.page.locator("#storymem-model-files .storymem-close").click()
    assert panel.count() == 0
    assert frontend.pack_problems() == []
