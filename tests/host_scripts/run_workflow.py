"""In ComfyUI: a shipped native workflow (UI format) at test size on tiny models, run by ComfyUI's own executor: as
shipped, then with shot 2's seeds changed (a re-roll); a Native Story Runner workflow is also run again from a fresh
executor (resume) and re-rolled with from_shot 2. Writes JOB_DIR/runs.json: per run the nodes ComfyUI executed, what
the output nodes showed (bank sizes, the film's path) and how many times ComfyUI's sampling ran.

usage: run_workflow.py WORKFLOW.json JOB_DIR   (JOB_DIR holds models/ and input/; output/ is written)
"""

import json
import sys
from pathlib import Path

workflow_path, job_dir = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.append(
    str(Path(__file__).resolve().parent.parent)
)  # tests/, for graph_runner (after ComfyUI: no `nodes` there)

import in_host  # noqa: E402

classes, workflow = in_host.start_workflow(workflow_path, job_dir)

from graph_runner import ui_to_api, widget_slots  # noqa: E402  (the tests' UI -> API conversion, as the frontend does it)

samplings = in_host.count_samplings()
executor = in_host.Executor()


def run(name: str, on: in_host.Executor) -> dict:
    """One run: what ran and showed, the samplings it made and, of a Story Runner, its folder's files' times."""
    before = samplings[0]
    result = {**on.run(ui_to_api(workflow, classes), name), "samplings": samplings[0] - before}
    if runner is not None:
        video = result["shown"][str(runner["id"])]["storymem_video"][0]
        folder = job_dir / "output" / video["subfolder"]
        result["files"] = in_host.story_files(folder)
    return result


runner = next((n for n in workflow["nodes"] if n["type"] == "StoryMemNativeStoryRunner"), None)


runs = {"first": run("first", executor)}
if runner is not None:  # the same story again from a fresh executor (as after a restart): the node runs and resumes
    runs["resume"] = run("resume", in_host.Executor())
    runner["widgets_values"][widget_slots(classes[runner["type"]]).index("from_shot")] = 2  # re-roll from shot 2
for node in workflow["nodes"]:  # re-roll shot 2: new seeds on its samplers (or its one Native Shot)
    slots = widget_slots(classes[node["type"]]) if node["type"] in classes else []
    if node.get("title", "").startswith("Shot 2") and ("noise_seed" in slots or "seed" in slots):
        node["widgets_values"][slots.index("noise_seed" if "noise_seed" in slots else "seed")] += 1000
runs["reroll"] = run("reroll", executor)
(job_dir / "runs.json").write_text(json.dumps(runs))
print(", ".join(f"{name}: ran {len(r['executed'])} nodes, {r['samplings']} samplings" for name, r in runs.items()))
