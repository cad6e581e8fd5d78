"""A small stand-in for ComfyUI's executor, following its rules, so workflows are tested without ComfyUI.

- UI -> API conversion as the frontend's graphToPrompt does it: each node's `widgets_values` fill its
  widget inputs in declaration order (required, then optional; socket-only `forceInput` inputs and
  non-primitive types have no widget), INT inputs named seed / noise_seed or declaring
  `control_after_generate` carry one extra value (fixed / increment / ...) that is never sent (as does an
  `image_upload` COMBO: its upload button's value), and a
  linked widget input sends its link instead of its value. Notes are virtual and skipped.
- Validation as ComfyUI's validate_inputs: known class, required inputs present, linked output type ==
  input type, INT / FLOAT / STRING / BOOLEAN conversion, min / max, COMBO membership.
- Execution as ComfyUI's: only output nodes (OUTPUT_NODE) and their ancestors run; outputs are cached by
  input signature (class, IS_CHANGED, widget values, ancestors' signatures), so a changed widget re-runs
  that node and everything downstream, and nothing else; entries the last prompt did not use are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

PRIMITIVES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
SEED_NAMES = ("seed", "noise_seed")
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
VIRTUAL_NODES = ("Note", "MarkdownNote")


class GraphError(Exception):
    """The workflow would be refused by ComfyUI (unknown node, wrong link, invalid value)."""


def input_specs(node_class) -> dict[str, tuple[str, Any, dict]]:
    """name -> (section, type, options) in declaration order, required first."""
    declared = node_class.INPUT_TYPES()
    specs = {}
    for section in ("required", "optional"):
        for name, spec in declared.get(section, {}).items():
            options = spec[1] if len(spec) > 1 else {}
            specs[name] = (section, spec[0], options)
    return specs


def is_widget(kind: Any, options: dict) -> bool:
    return (isinstance(kind, list) or kind in PRIMITIVES) and not options.get("forceInput", False)


def has_hidden_value(name: str, kind: Any, options: dict) -> bool:
    """Widgets the frontend adds after an input and saves in widgets_values, but never sends to the server."""
    control = kind == "INT" and (name in SEED_NAMES or bool(options.get("control_after_generate")))
    return control or bool(options.get("image_upload"))


def widget_slots(node_class) -> list[str | None]:
    """The node's widgets in `widgets_values` order; None marks a saved-only value (control_after_generate, upload)."""
    slots: list[str | None] = []
    for name, (_, kind, options) in input_specs(node_class).items():
        if is_widget(kind, options):
            slots.append(name)
            if has_hidden_value(name, kind, options):
                slots.append(None)
    return slots


def ui_to_api(workflow: dict, node_classes: dict[str, type]) -> dict[str, dict]:
    """The API prompt ComfyUI's frontend would queue for this UI-format workflow."""
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL_NODES:
            continue
        if node.get("mode", 0) != 0:
            raise GraphError(
                f"node {node['id']} ({node['type']}) is muted or bypassed; this runner only runs active nodes."
            )
        node_class = node_classes.get(node["type"])
        if node_class is None:
            raise GraphError(f"node {node['id']} has unknown type {node['type']}.")
        slots = widget_slots(node_class)
        values = node.get("widgets_values", [])
        if len(values) != len(slots):
            raise GraphError(
                f"node {node['id']} ({node['type']}) has {len(values)} widget values for {len(slots)} widgets {slots}."
            )
        inputs = {name: value for name, value in zip(slots, values) if name is not None}
        for socket in node.get("inputs", []):
            if socket.get("link") is None:
                continue
            _, origin, origin_slot, target, _, _ = links[socket["link"]]
            if target != node["id"]:
                raise GraphError(
                    f"link {socket['link']} ends at node {target}, not at node {node['id']} that lists it."
                )
            inputs[socket["name"]] = [str(origin), origin_slot]
        prompt[str(node["id"])] = {
            "class_type": node["type"],
            "inputs": inputs,
            "_meta": {"title": node.get("title", node["type"])},
        }
    return prompt


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _converted(name: str, kind: Any, options: dict, value: Any) -> Any:
    converters = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}
    if isinstance(kind, str) and kind in converters:
        try:
            value = converters[kind](value)
        except (TypeError, ValueError) as error:
            raise GraphError(f"input {name}: {value!r} is not a {kind} ({error}).") from None
        if "min" in options and value < options["min"]:
            raise GraphError(f"input {name}: {value} is smaller than min {options['min']}.")
        if "max" in options and value > options["max"]:
            raise GraphError(f"input {name}: {value} is bigger than max {options['max']}.")
    elif isinstance(kind, list) and value not in kind:
        raise GraphError(f"input {name}: {value!r} is not in the list {kind[:20]}.")
    return value


def validate(prompt: dict[str, dict], node_classes: dict[str, type]) -> dict[str, dict]:
    """The prompt with widget values converted, or GraphError for what ComfyUI would refuse."""
    checked = {}
    for node_id, node in prompt.items():
        node_class = node_classes.get(node["class_type"])
        if node_class is None:
            raise GraphError(f"node {node_id}: unknown class_type {node['class_type']}.")
        inputs = {}
        for name, (section, kind, options) in input_specs(node_class).items():
            if name not in node["inputs"]:
                if section == "required":
                    raise GraphError(f"node {node_id} ({node['class_type']}): required input {name} is missing.")
                continue
            value = node["inputs"][name]
            if _is_link(value):
                source = prompt.get(value[0])
                if source is None:
                    raise GraphError(f"node {node_id}: input {name} links to missing node {value[0]}.")
                output_types = node_classes[source["class_type"]].RETURN_TYPES
                received = output_types[value[1]] if value[1] < len(output_types) else None
                expected = "COMBO" if isinstance(kind, list) else kind
                if received != expected and "*" not in (received, expected):
                    raise GraphError(
                        f"node {node_id}: input {name} expects {expected} but gets {received} from node {value[0]}."
                    )
            else:
                value = _converted(name, kind, options, value)
            inputs[name] = value
        checked[node_id] = {**node, "inputs": inputs}
    if not any(getattr(node_classes[n["class_type"]], "OUTPUT_NODE", False) for n in checked.values()):
        raise GraphError("the prompt has no output node (ComfyUI: 'Prompt has no outputs').")
    return checked


@dataclass
class GraphRunner:
    """Runs API prompts with ComfyUI's output cache: call `run` again after changing a widget."""

    node_classes: dict[str, type]
    cache: dict[Any, tuple] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)  # node ids run by the last `run`, in order
    ui: dict[str, dict] = field(default_factory=dict)
    on_execute: Callable[[str, dict], None] | None = None  # sees each node id and its resolved inputs

    def _signature(self, prompt: dict, node_id: str, memo: dict) -> Any:
        if node_id not in memo:
            node = prompt[node_id]
            node_class = self.node_classes[node["class_type"]]
            constants = {k: v for k, v in node["inputs"].items() if not _is_link(v)}
            changed = node_class.IS_CHANGED(**constants) if hasattr(node_class, "IS_CHANGED") else None
            entries = []
            for key in sorted(node["inputs"]):
                value = node["inputs"][key]
                entries.append(
                    (key, ("ANCESTOR", self._signature(prompt, value[0], memo), value[1]) if _is_link(value) else value)
                )
            memo[node_id] = (node["class_type"], changed, tuple(entries))
        return memo[node_id]

    def _needed(self, prompt: dict) -> list[str]:
        """Output nodes and their ancestors, each after its inputs."""
        order: list[str] = []

        def visit(node_id: str, path: tuple[str, ...]) -> None:
            if node_id in path:
                raise GraphError(f"the graph has a cycle through node {node_id}.")
            if node_id in order:
                return
            for value in prompt[node_id]["inputs"].values():
                if _is_link(value):
                    visit(value[0], path + (node_id,))
            order.append(node_id)

        for node_id, node in prompt.items():
            if getattr(self.node_classes[node["class_type"]], "OUTPUT_NODE", False):
                visit(node_id, ())
        return order

    def run(self, prompt: dict[str, dict]) -> dict[str, tuple]:
        """Validate and execute; returns every needed node's outputs by node id."""
        prompt = validate(prompt, self.node_classes)
        self.executed, self.ui, memo, outputs, used = [], {}, {}, {}, set()
        for node_id in self._needed(prompt):
            node = prompt[node_id]
            key = self._signature(prompt, node_id, memo)
            used.add(key)
            if key not in self.cache:
                node_class = self.node_classes[node["class_type"]]
                kwargs = {k: outputs[v[0]][v[1]] if _is_link(v) else v for k, v in node["inputs"].items()}
                if self.on_execute is not None:
                    self.on_execute(node_id, kwargs)
                returned = getattr(node_class(), node_class.FUNCTION)(**kwargs)
                if isinstance(returned, dict):
                    self.ui[node_id] = returned.get("ui", {})
                    returned = returned.get("result", ())
                self.cache[key] = tuple(returned)
                self.executed.append(node_id)
            outputs[node_id] = self.cache[key]
        self.cache = {key: value for key, value in self.cache.items() if key in used}
        return outputs


def load_image_node(input_dir) -> type:
    """ComfyUI's LoadImage as workflows use it (a file of the input folder, with the upload widget), for tests."""
    from pathlib import Path

    import numpy as np
    import torch
    from PIL import Image

    folder = Path(input_dir)

    class LoadImage:
        RETURN_TYPES = ("IMAGE", "MASK")
        FUNCTION = "load_image"

        @classmethod
        def INPUT_TYPES(cls):
            files = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
            return {"required": {"image": (files, {"image_upload": True})}}

        def load_image(self, image: str):
            with Image.open(folder / image) as opened:
                pixels = np.asarray(opened.convert("RGB"), dtype=np.float32) / 255
            return torch.from_numpy(pixels)[None], torch.zeros(1, *pixels.shape[:2])

    return LoadImage
