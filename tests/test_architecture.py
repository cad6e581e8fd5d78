"""docs/architecture.md's rules, checked over the source so the page cannot drift: the engine never imports the
front ends or ComfyUI, only two node modules import ComfyUI, the engine's imports form no circle, the vocabulary is
named and not spelled, image and temp-file I/O happen only in files.py, and every engine module is on the page.
Each rule is also shown to catch a violation planted in a copy of the sources."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from storymem_core.choices import Choice

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "architecture.md"
ENGINE = "storymem_core"
HOST_MODULES = ("comfy", "comfy_extras", "folder_paths", "latent_preview", "node_helpers", "server", "execution")
NODES_THAT_IMPORT_COMFYUI = ("nodes.host", "nodes.native")
COMMANDS = f"{ENGINE}.commands"


def sources() -> dict[str, str]:
    """Module name -> source of every module of the engine and the nodes."""
    found = {}
    for package in (ENGINE, "nodes"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path.read_text(encoding="utf-8")
    return found


def is_package(name: str) -> bool:
    return (ROOT / name.replace(".", "/")).is_dir()


def imports(name: str, source: str) -> set[str]:
    """Absolute names of what a module imports anywhere in its body (relative imports resolved)."""
    package = name if is_package(name) else name.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = parts[: len(parts) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # `from . import x` names a module
    return names


def import_graph(modules: dict[str, str]) -> dict[str, set[str]]:
    """Each module -> the modules of `modules` it imports."""
    return {name: {target for target in imports(name, source) if target in modules and target != name}
            for name, source in modules.items()}


def is_host(module: str) -> bool:
    return module.split(".")[0] in HOST_MODULES


def engine_faults(modules: dict[str, str]) -> list[str]:
    """Engine modules importing nodes, ComfyUI or (outside the commands) the command line."""
    faults = []
    for name, source in modules.items():
        if not name.startswith(ENGINE):
            continue
        is_command = name.startswith(COMMANDS) or name == f"{ENGINE}.__main__"
        for target in imports(name, source):
            if target.split(".")[0] == "nodes" or is_host(target) or (target.startswith(COMMANDS) and not is_command):
                faults.append(f"{name} imports {target}")
    return faults


def node_faults(modules: dict[str, str]) -> list[str]:
    """Node modules other than host.py and native.py importing ComfyUI."""
    return [f"{name} imports {target}" for name, source in modules.items()
            if name.startswith("nodes") and name not in NODES_THAT_IMPORT_COMFYUI
            for target in imports(name, source) if is_host(target)]


def circles(modules: dict[str, str]) -> list[list[str]]:
    """Import circles among the engine's modules (a package importing its own modules through __init__ excepted)."""
    graph = {name: {t for t in targets if t.startswith(ENGINE) and not name.startswith(t + ".")}
             for name, targets in import_graph(modules).items() if name.startswith(ENGINE)}
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                found.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return found


def unmapped(modules: dict[str, str], page: str) -> list[str]:
    """Engine modules the page names neither by path (`wan/vae.py`) nor, in backticks, by name (`readers`)."""
    missing = []
    for name in modules:
        if not name.startswith(ENGINE + ".") or is_package(name):
            continue
        relative = name.removeprefix(ENGINE + ".").replace(".", "/") + ".py"
        if relative not in page and f"`{name.rpartition('.')[2]}`" not in page:
            missing.append(relative)
    return missing


# words of the vocabulary that also name other things (a device, a submodule, a metric, a package, a widget option):
# written out, they are not taken for a vocabulary member
ORDINARY_WORDS = {"auto", "none", "off", "high", "low", "blocks", "experts", "aesthetic", "hpsv3"}
VOCABULARY = f"{ENGINE}.choices"


def vocabulary_words() -> set[str]:
    return {member.value for kind in Choice.__subclasses__() for member in kind} - ORDINARY_WORDS


def vocabulary_literals(modules: dict[str, str]) -> list[str]:
    """String constants of the engine and the nodes that spell a vocabulary member instead of naming it (docstrings
    and the vocabulary itself excepted)."""
    words, found = vocabulary_words(), []
    for name, source in modules.items():
        if name == VOCABULARY:
            continue
        tree = ast.parse(source)
        docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
        found += [f"{name}:{node.lineno} {node.value!r}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and node.value in words and id(node) not in docstrings]
    return found


FILES_MODULE = f"{ENGINE}.files"
IMAGE_LIBRARIES = ("imageio", "cv2", "tempfile")


def _calls_into_image(node: ast.AST) -> bool:
    """Whether an expression reaches PIL's `Image` (`Image.fromarray(x)`, `Image.new(...).convert()`)."""
    return any(isinstance(inner, ast.Name) and inner.id == "Image" for inner in ast.walk(node))


def file_io_faults(modules: dict[str, str]) -> list[str]:
    """Image and temp-file I/O outside files.py: opening or saving a PIL image, tempfile, other image libraries."""
    faults = []
    for name, source in modules.items():
        if name == FILES_MODULE:
            continue
        faults += [f"{name} imports {target}" for target in imports(name, source)
                   if target.split(".")[0] in IMAGE_LIBRARIES]
        for node in ast.walk(ast.parse(source)):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            receiver, method = node.func.value, node.func.attr
            if (method == "open" and isinstance(receiver, ast.Name) and receiver.id == "Image") or (
                    method == "save" and _calls_into_image(receiver)):
                faults.append(f"{name}:{node.lineno} Image {method}")
    return faults


def page_layers(page: str) -> dict[str, int]:
    """The page's layer list: each engine module or package (first name under storymem_core) -> its layer."""
    layers = {}
    for number, names in re.findall(r"^- layer (\d+), [^:]+: (.+)$", page, flags=re.M):
        for name in re.findall(r"`([^`]+)`", names):
            layers[name.rstrip("/")] = int(number)
    return layers


def layer_faults(modules: dict[str, str], page: str) -> list[str]:
    """Engine modules without a layer, and imports that run up from a lower layer to a higher one."""
    layers = page_layers(page)

    def layer(module: str) -> int | None:
        return layers.get(module.split(".")[1]) if module.startswith(ENGINE + ".") else None

    faults = [f"{name} has no layer" for name in modules if name.startswith(ENGINE + ".") and layer(name) is None]
    for name, targets in import_graph(modules).items():
        faults += [f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})"
                   for target in sorted(targets)
                   if layer(name) is not None and layer(target) is not None and layer(target) > layer(name)]
    return faults


MAX_PARAMETERS = 12  # beyond it a function wants a value object (a node takes its widgets as one: inputs.ShotWidgets)


def long_signatures(modules: dict[str, str]) -> list[str]:
    """Functions of the engine and the nodes taking more than MAX_PARAMETERS parameters (self and cls not counted)."""
    found = []
    for name, source in modules.items():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                named = [*args.posonlyargs, *args.args, *args.kwonlyargs]
                count = len(named) + bool(args.vararg) + bool(args.kwarg) - (
                    bool(named) and named[0].arg in ("self", "cls"))
                if count > MAX_PARAMETERS:
                    found.append(f"{name}.{node.name} takes {count}")
    return found


def test_architecture_engine_imports_no_front_end_and_no_comfyui():
    assert engine_faults(sources()) == []


def test_architecture_only_host_and_native_nodes_import_comfyui():
    assert node_faults(sources()) == []


def test_architecture_engine_imports_form_no_circle():
    assert circles(sources()) == []


def test_architecture_vocabulary_is_named_not_spelled():
    assert vocabulary_literals(sources()) == []


def test_architecture_no_import_runs_up_a_layer():
    assert layer_faults(sources(), PAGE.read_text(encoding="utf-8")) == []


def test_architecture_no_function_takes_more_than_12_parameters():
    assert long_signatures(sources()) == []


def test_architecture_image_and_temp_files_only_in_files_module():
    assert file_io_faults(sources()) == []


def test_architecture_page_maps_every_engine_module():
    assert unmapped(sources(), PAGE.read_text(encoding="utf-8")) == []


def planted(module: str, line: str) -> dict[str, str]:
    modules = sources()
    return {**modules, module: modules[module] + f"\n{line}\n"}


@pytest.mark.parametrize(
    "check, module, line, fault",
    [
        (engine_faults, "storymem_core.positions", "import folder_paths", "positions imports folder_paths"),
        (engine_faults, "storymem_core.memory", "from nodes import host", "memory imports nodes"),
        (engine_faults, "storymem_core.pipeline", "from .commands import story", "pipeline imports storymem_core.com"),
        (node_faults, "nodes.memory_nodes", "import comfy.utils", "memory_nodes imports comfy.utils"),
        (circles, "storymem_core.choices", "from .pipeline import StoryOptions", "storymem_core.choices"),
        (vocabulary_literals, "nodes.shot_nodes", "MODE = 'mm2v'", "shot_nodes:"),
        (vocabulary_literals, "storymem_core.pipeline", "def f(x='first-release'): pass", "pipeline:"),
        (file_io_faults, "storymem_core.story_folder", "import tempfile", "story_folder imports tempfile"),
        (file_io_faults, "storymem_core.bank_files", "def f(x, p): Image.fromarray(x).save(p)", "bank_files:"),
        (file_io_faults, "nodes.memory_nodes", "def f(p): return Image.open(p)", "memory_nodes:"),
        (long_signatures, "storymem_core.shot", "def f(a, b, c, d, e, f, g, h, i, j, k, m, n): pass",
         "shot.f takes 13"),
    ],
    ids=["engine-host", "engine-nodes", "engine-commands", "nodes-comfyui", "circle", "literal-node", "literal-engine",
         "temp-file", "image-save", "image-open", "parameters"],
)
def test_architecture_checks_catch_a_planted_violation(check, module, line, fault):
    assert check(sources()) == []
    assert fault in repr(check(planted(module, line)))


def test_architecture_layer_check_catches_an_upward_import_and_a_module_without_layer():
    page = PAGE.read_text(encoding="utf-8")
    upward = layer_faults(planted("storymem_core.memory", "from .pipeline import run_story"), page)
    assert upward == ["storymem_core.memory (layer 2) imports storymem_core.pipeline (layer 4)"]
    assert layer_faults({**sources(), "storymem_core.shiny_new_thing": ""}, page) == [
        "storymem_core.shiny_new_thing has no layer"]


def test_architecture_page_check_catches_an_unmapped_module():
    modules = {**sources(), "storymem_core.shiny_new_thing": ""}
    assert unmapped(modules, PAGE.read_text(encoding="utf-8")) == ["shiny_new_thing.py"]
