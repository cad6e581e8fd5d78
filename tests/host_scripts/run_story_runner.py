"""In ComfyUI: a Native Story Runner workflow (UI format, e.g. the shipped one with its loaders and story swapped by the
test) at test size on tiny models, run by ComfyUI's own executor three times: as given ("first"), queued again on the
same executor ("requeue": ComfyUI's cache, as after a finished run in the browser) and queued on a fresh executor
("resume": nothing cached, as after a restart; the runner finds every shot finished). Writes JOB_DIR/runs.json: per run
the nodes ComfyUI executed, what the output nodes showed, how many times ComfyUI's sampling ran, and the story folder's
files with their modification times (not the writer's lock, which every run takes).

usage: run_story_runner.py WORKFLOW.json JOB_DIR   (JOB_DIR holds models/ and input/; output/ is written)
"""

import json
import sys
from pathlib import Path

workflow_path, job_dir = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.append(str(Path(__file__).resolve().parent.parent))  # tests/, for graph_runner (after ComfyUI: no `nodes`)

import in_host  # noqa: E402

classes, workflow = in_host.start_workflow(workflow_path, job_dir)

from graph_runner import ui_to_api  # noqa: E402  (the tests' UI -> API conversion, as the frontend does it)

runner = str(next(n["id"] for n in workflow["nodes"] if n["type"] == "StoryMemNativeStoryRunner"))
prompt = ui_to_api(workflow, classes)
samplings = in_host.count_samplings()


def run(name: str, on: in_host.Executor) -> dict:
    before = samplings[0]
    return {**on.run(prompt, name), "samplings": samplings[0] - before}


executor = in_host.Executor()
runs = {"first": run("first", executor)}
video = runs["first"]["shown"][runner]["storymem_video"][0]
folder = job_dir / "output" / video["subfolder"]


runs["first"]["files"] = in_host.story_files(folder)
runs["requeue"] = {**run("requeue", executor), "files": in_host.story_files(folder)}
runs["resume"] = {**run("resume", in_host.Executor()), "files": in_host.story_files(folder)}
(job_dir / "runs.json").write_text(json.dumps({"runner": runner, "folder": str(folder), "runs": runs}))
print(", ".join(f"{name}: ran {len(r['executed'])} nodes, {r['samplings']} samplings" for name, r in runs.items()))
