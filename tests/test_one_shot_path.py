"""One way to make a shot: the shot nodes and the story loop (Story Runner, CLI) both call `run_shot`, so the same
inputs give the same shot whichever front end asked for it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from helpers import SHOT, call, image_batch, models

from storymem_core import pipeline, run_shot
from storymem_core.files import fit_image, load_image
from storymem_core.memory import MemoryBank
from storymem_core.video import image_batch_to_frames

STORY = {
    "story_overview": "A fox crosses the snow to the lighthouse.",
    "scenes": [
        {
            "scene_num": 1,
            "video_prompts": ["a fox runs through snow", "the fox reaches the lighthouse door"],
            "cut": [True, False],
        },
    ],
}


def test_node_made_shots_equal_loop_made_shots(pack, monkeypatch):
    calls = []
    original = run_shot.run_shot

    def counted(*args, **kwargs):
        calls.append(args[0].mode)
        return original(*args, **kwargs)

    monkeypatch.setattr(run_shot, "run_shot", counted)
    monkeypatch.setattr(pipeline, "run_shot", counted)
    import nodes.shot_nodes as shot_nodes

    monkeypatch.setattr(shot_nodes, "run_shot", counted)

    references = image_batch(2, size=(40, 24), seed=9)
    story = call("StoryMemStoryScript", script_file="(script text below)", script=json.dumps(STORY))[0][0]
    (_, runner_bank, path), _ = call(
        "StoryMemStoryRunner",
        story=story,
        model=pack.m2v,
        **models(pack),
        first_shot="mr2v",
        continuation="mi2v",
        seed=11,
        cfg=3.5,
        fps=8,
        max_size=4,
        fixed=1,
        output_folder="one_path",
        from_shot=0,
        reference_images=references,
        **SHOT,
    )
    assert calls == ["m2v", "mi2v"]

    size = (SHOT["width"], SHOT["height"])
    bank = MemoryBank.from_images(
        [fit_image(image, size) for image in image_batch_to_frames(references)], max_size=4, fixed=1
    )
    (_, bank_1, last_1), _ = call(
        "StoryMemShot",
        model=pack.m2v,
        **models(pack),
        memory=bank,
        prompt=story.shots[0].prompt,
        cut=True,
        mode="auto-mi2v",
        seed=11,
        cfg=3.5,
        shot_number=1,
        **SHOT,
    )
    (_, bank_2, last_2), _ = call(
        "StoryMemShot",
        model=pack.m2v,
        **models(pack),
        memory=bank_1,
        prompt=story.shots[1].prompt,
        cut=False,
        mode="auto-mi2v",
        seed=12,
        cfg=3.5,
        previous_frames=last_1,
        shot_number=2,
        **SHOT,
    )
    assert calls == ["m2v", "mi2v", "m2v", "mi2v"]

    folder = Path(path).parent
    for number, node_last in ((1, last_1), (2, last_2)):
        saved = sorted((folder / "shots" / f"shot_{number:03d}_last_frames").glob("*.png"))
        assert torch.equal(torch.stack([load_image(p) for p in saved]), image_batch_to_frames(node_last))
    assert [(k.shot, k.frame_index, k.source) for k in bank_2.keyframes] == [
        (k.shot, k.frame_index, k.source) for k in runner_bank.keyframes
    ]
    assert all(torch.equal(a, b) for a, b in zip(bank_2.image_list(), runner_bank.image_list()))
