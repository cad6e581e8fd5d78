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
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from local_hub import LocalHub, saved

from storymem_core import tiny_models as tiny
from storymem_core.downloads import known_file, partial_path

PACK_ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((PACK_ROOT / "workflows").glob("*.json"))
STORY = PACK_ROOT / "workflows" / "storymem_3_shot_story.json"
VIEWPORT = {"width": 1600, "height": 1000}
SHOT_TYPES = ("StoryMemFirstShot", "StoryMemShot")
BANK_LINK_COLOUR = "#e0a030"
SERVER_START_S = 180
RUN_S = 300
MM2V_HIGH = known_file("StoryMem/Wan2.2-MM2V-A14B/backbone_high_noise.pth")  # not among the tiny models
MM2V_LOW = known_file("StoryMem/Wan2.2-MM2V-A14B/backbone_low_noise.pth")


def _missing(reason: str):
    """A missing host or browser fails under CI (the tests must run there) and skips elsewhere."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI must run the browser tests: see .ci/run)")
    pytest.skip(reason)


def _comfyui_dir() -> Path:
    root = os.environ.get("STORYMEM_COMFYUI")
    if not root or not (Path(root) / "main.py").is_file():
        _missing("STORYMEM_COMFYUI does not name a ComfyUI folder (bash ../shared/comfyui/install.sh DIR . prints one)")
    linked = Path(root) / "custom_nodes" / "ComfyUI-StoryMem"
    if not linked.exists() or linked.resolve() != PACK_ROOT:
        _missing(f"{linked} is not this checkout: run ../shared/comfyui/install.sh with this folder as PACK_DIR")
    return Path(root)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
    """ComfyUI on tiny models under the shipped workflows' file names (their folder first, where downloads go), with
    live previews on and Hugging Face files coming from the local hub."""
    comfyui = _comfyui_dir()
    root = tmp_path_factory.mktemp("comfyui")
    tiny.write_tiny_models(root / "models")
    tiny.write_reference_images(root / "input")
    folders = "".join(
        f"  {name}: {name}\n" for name in ("diffusion_models", "loras", "text_encoders", "vae", "clip_vision")
    )
    (root / "extra_model_paths.yaml").write_text(
        f"storymem_tiny:\n  base_path: {root / 'models'}\n  is_default: true\n{folders}"
    )
    settings = root / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))  # no template browser over the canvas
    port = _free_port()
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
        yield {"url": url, "root": root}
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
        _missing("playwright is not installed (pip install -r requirements-dev.txt)")
    chromium = os.environ.get("STORYMEM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).is_file():
        _missing("Debian's chromium is not installed (apt-get install -y chromium)")
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

    def __init__(self, browser, url: str):
        self.url = url
        self.page = browser.new_page(viewport=VIEWPORT)
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

    def load(self, path: Path) -> None:
        self.page.evaluate(
            "async (workflow) => { await window.app.loadGraphData(workflow); }", json.loads(path.read_text())
        )
        self.page.wait_for_timeout(1500)

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


# Node and group rectangles in graph units (title bar included), the view and the page's fixed panels.
LAYOUT = """() => {
  const title = LiteGraph.NODE_TITLE_HEIGHT;
  const rect = (selector) => document.querySelector(selector)?.getBoundingClientRect().toJSON() ?? null;
  return {
    nodes: app.graph.nodes.map((n) => ({ id: n.id, type: n.type, title: n.title,
                                         rect: [n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title] })),
    groups: app.graph.groups.map((g) => ({ title: g.title, rect: [...g._bounding ?? g.bounding] })),
    view: { scale: app.canvas.ds.scale, offset: [...app.canvas.ds.offset] },
    sidebar: rect(".side-tool-bar-container"), tabs: rect(".workflow-tabs-container"),
    actionbar: rect(".actionbar"), minimap: rect(".litegraph-minimap"),
  };
}"""


def _overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _overlapping_nodes(layout: dict) -> list[tuple[str, str]]:
    nodes = layout["nodes"]
    return [
        (a["title"], b["title"]) for i, a in enumerate(nodes) for b in nodes[i + 1 :] if _overlap(a["rect"], b["rect"])
    ]


def _on_screen(layout: dict, rect: list[float]) -> list[float]:
    scale, (dx, dy) = layout["view"]["scale"], layout["view"]["offset"]
    return [(rect[0] + dx) * scale, (rect[1] + dy) * scale, rect[2] * scale, rect[3] * scale]


def _hidden_by_the_page(layout: dict) -> list[str]:
    """Nodes and groups the saved view puts off screen or under the sidebar, the tabs, the Run bar or the minimap."""
    left = layout["sidebar"]["right"] if layout["sidebar"] else 0
    top = layout["tabs"]["bottom"] if layout["tabs"] else 0
    panels = [[p["x"], p["y"], p["width"], p["height"]] for p in (layout["actionbar"], layout["minimap"]) if p]
    hidden = []
    for item in layout["nodes"] + layout["groups"]:
        x, y, width, height = _on_screen(layout, item["rect"])
        inside = x >= left and y >= top and x + width <= VIEWPORT["width"] and y + height <= VIEWPORT["height"]
        if not inside or any(_overlap([x, y, width, height], panel) for panel in panels):
            hidden.append(item["title"])
    return hidden


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_shipped_workflow_opens_whole_and_tidy_without_errors(frontend, path, screenshots):
    frontend.load(path)
    dialogs = frontend.evaluate(
        "() => [...document.querySelectorAll('.p-dialog')].map((d) => d.innerText.slice(0, 200))"
    )
    assert dialogs == [], f"a dialog opened with the workflow (missing nodes or models?): {dialogs}"
    broken = frontend.evaluate("() => app.graph.nodes.filter((n) => n.has_errors).map((n) => n.type)")
    assert broken == [], f"nodes the frontend does not know: {broken}"
    layout = frontend.evaluate(LAYOUT)
    assert _overlapping_nodes(layout) == []
    groups = layout["groups"]
    assert [
        (a["title"], b["title"])
        for i, a in enumerate(groups)
        for b in groups[i + 1 :]
        if _overlap(a["rect"], b["rect"])
    ] == []
    assert _hidden_by_the_page(layout) == []
    shots = [node for node in layout["nodes"] if node["type"] in SHOT_TYPES]
    assert all(node["title"].startswith(f"Shot {k} · ") for k, node in enumerate(shots, 1)), [n["title"] for n in shots]
    fed = frontend.evaluate("""() => app.graph.nodes.filter((n) => n.type === 'StoryMemShot')
        .flatMap((n) => ['prompt', 'cut'].map((name) => n.widgets.find((w) => w.name === name).hidden === true))""")
    assert all(fed), "a Story Shot feeds prompt and cut: the shot shows them as sockets, not as stale boxes"
    frontend.page.screenshot(path=str(screenshots / f"{path.stem}_opened.png"))
    assert frontend.pack_problems() == []


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


def _shot_panels(frontend: Frontend) -> list[dict]:
    return frontend.evaluate("""() => app.graph.nodes
        .filter((n) => ['StoryMemFirstShot', 'StoryMemShot'].includes(n.type)).map((n) => {
        const element = (name) => n.widgets.find((w) => w.name === name)?.element;
        const images = [...(element('storymem_memory')?.querySelectorAll('img') ?? [])];
        const video = element('storymem_video')?.querySelector('video');
        return { id: String(n.id), title: n.title, keyframes: images.length,
                 loaded: images.every((image) => image.complete && image.naturalWidth > 0),
                 video: video ? { src: video.src, loop: video.loop, muted: video.muted } : null };
    })""")


def _wait_for_strips(frontend: Frontend) -> None:
    frontend.page.wait_for_function(
        """() => {
        const shots = app.graph.nodes.filter((n) => ['StoryMemFirstShot', 'StoryMemShot'].includes(n.type));
        const images = (n) =>
            n.widgets.find((w) => w.name === 'storymem_memory')?.element.querySelectorAll('img') ?? [];
        return shots.length > 0 && shots.every((n) => [...images(n)]
            .some((image) => image.complete && image.naturalWidth > 0));
    }""",
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
    frontend.evaluate(
        """(tiny) => { for (const node of app.graph.nodes)
        for (const widget of node.widgets ?? []) if (widget.name in tiny) widget.value = tiny[widget.name]; }""",
        tiny.TINY_SHOT,
    )
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


def test_missing_storymem_files_are_offered_with_size_and_license_and_download_into_place(frontend, server,
                                                                                          screenshots):
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
    loras = server["root"] / "models" / "loras"
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
