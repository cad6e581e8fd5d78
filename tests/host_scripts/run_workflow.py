"""In ComfyUI: a shipped native workflow (UI format) at test size on tiny models, run twice by ComfyUI's own
executor: as shipped, then with shot 2's seeds changed (a re-roll). Writes JOB_DIR/runs.json: per run the
nodes ComfyUI executed and what the output nodes showed (bank sizes, the film's path).

usage: run_workflow.py WORKFLOW.json JOB_DIR   (JOB_DIR holds models/ and input/; output/ is written)
"""

import asyncio
import json
import sys
from pathlib import Path

workflow_path, job_dir = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.append(
    str(Path(__file__).resolve().parent.parent)
)  # tests/, for graph_runner (after ComfyUI: no `nodes` there)

import in_host  # noqa: E402

classes = in_host.start(
    models_dir=job_dir / "models", output_dir=job_dir / "output", input_dir=job_dir / "input", core_nodes=True
)

import comfy.sd  # noqa: E402
import execution  # noqa: E402
from graph_runner import ui_to_api, widget_slots  # noqa: E402  (the tests' UI -> API conversion, as the frontend does it)

from storymem_core import tiny_models  # noqa: E402

# ComfyUI's umT5 builder assumes the xxl sizes; the tiny file's are given to it through its own config override
_load_text_encoders = comfy.sd.load_text_encoder_state_dicts
TINY_UMT5 = {**tiny_models.CORE_T5, "num_decoder_layers": tiny_models.CORE_T5["num_layers"]}


def load_tiny_text_encoders(*args, model_options={}, **kwargs):
    return _load_text_encoders(*args, model_options={**model_options, "umt5xxl_model_config": TINY_UMT5}, **kwargs)


comfy.sd.load_text_encoder_state_dicts = load_tiny_text_encoders

TEST_SIZE = {"width": 32, "height": 32, "length": 5, "frames": 5, "steps": 2}


def shrink(workflow: dict) -> dict:
    """Test size: 32x32, 5 frames, 2 steps split 1 / 1 between the experts (the Native Shot's automatic switch
    splits them so too)."""
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


class Server:
    """What the executor reports to: the events of one run."""

    client_id = "host-test"
    last_node_id = None
    last_prompt_id = None

    def __init__(self):
        self.events = []

    def send_sync(self, event, data, sid=None):
        self.events.append((event, data))


def run(executor, server, prompt, prompt_id):
    server.events.clear()
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    if not valid:
        raise SystemExit(f"ComfyUI refused the workflow: {error} {json.dumps(node_errors)[:3000]}")
    executor.execute(prompt, prompt_id, {"client_id": Server.client_id}, outputs)
    if not executor.success:
        raise SystemExit(f"the workflow failed: {json.dumps(executor.status_messages, default=str)[-4000:]}")
    executed = [data["node"] for event, data in server.events if event == "executing" and data.get("node")]
    shown = {data["node"]: data["output"] for event, data in server.events if event == "executed"}
    return {"executed": executed, "shown": shown}


workflow = shrink(json.loads(workflow_path.read_text(encoding="utf-8")))
server = Server()
executor = execution.PromptExecutor(
    server, cache_type=False, cache_args={"lru": 0, "ram": 0}
)  # as main.py with defaults
first = run(executor, server, ui_to_api(workflow, classes), "first")
for node in workflow["nodes"]:  # re-roll shot 2: new seeds on its samplers (or its one Native Shot)
    slots = widget_slots(classes[node["type"]]) if node["type"] in classes else []
    if node.get("title", "").startswith("Shot 2") and ("noise_seed" in slots or "seed" in slots):
        node["widgets_values"][slots.index("noise_seed" if "noise_seed" in slots else "seed")] += 1000
second = run(executor, server, ui_to_api(workflow, classes), "reroll")
(job_dir / "runs.json").write_text(json.dumps({"first": first, "reroll": second}))
print(f"ran {len(first['executed'])} nodes, then {len(second['executed'])} after the re-roll")
