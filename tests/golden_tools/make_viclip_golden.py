"""Make the `viclip_*` and `aesthetic_*` golden cases by running VBench's own code (PyPI vbench 0.1.5) at tiny sizes.

VBench cannot be a dependency of the pack (it pins numpy < 2 and transformers 4.33), so this runs in an environment of
its own, reusing the system's torch:

    python -m venv --system-site-packages /tmp/vbench-env
    /tmp/vbench-env/bin/pip install --no-deps vbench==0.1.5 openai-clip "timm==1.0.12" "numpy<2"
    /tmp/vbench-env/bin/python tests/golden_tools/make_viclip_golden.py --out tests/golden

What runs is VBench's: `overall_consistency` (ViCLIP text-video similarity, its frame sampling and `clip_transform`),
`get_vid_features` / `get_text_features` (the embeddings the paper's consistency compares), ViCLIP's tokenizer, and
`laion_aesthetic` (OpenAI CLIP image features, L2-normalised, the LAION linear head, /10, averaged). Only the file
reading is replaced: decord (absent here) by the frames in memory, picked with VBench's own `get_frame_indices`.
Weights are not stored: they are drawn from a seed by `golden_data.seeded_state` (sorted names), which the parity tests
draw again; the JSON records every parameter's name and shape so a renamed or reshaped parameter fails. Sizes come from
the command line, so held-out cases at other sizes are one command away (`--case`, see --help).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import types
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: golden_data
from golden_data import seeded_state  # noqa: E402

PROMPTS = ["a red fox runs through fresh snow at dawn",
           "Two friends share an umbrella on a rainy Tokyo street, neon signs reflected in puddles; the camera slowly "
           "pushes in while a tram passes behind them and the lights change from red to green.",
           "close-up: an old man's hands carve a wooden bird, café noise"]


def _frames(seed: int, count: int, height: int, width: int) -> torch.Tensor:
    """Smooth random colour fields that drift over time, uint8 [T, H, W, 3] (noise would make every frame alike)."""
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(count // 4 + 2, 3, 3, 3, generator=generator)
    field = torch.nn.functional.interpolate(corners, size=(height, width), mode="bicubic", align_corners=True)
    field = torch.nn.functional.interpolate(field.permute(1, 2, 3, 0).reshape(1, -1, len(corners)), size=count,
                                            mode="linear", align_corners=True).reshape(3, height, width, count)
    return (field.permute(3, 1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8)


def _import_vbench(cache: Path):
    """VBench's modules, with decord stubbed (never called: frames come from memory) and ViCLIP's BPE file (the one
    OpenAI's clip package ships) where VBench looks for it instead of downloading it."""
    import os

    import clip

    os.environ["VBENCH_CACHE_DIR"] = str(cache)
    (cache / "ViCLIP").mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz", cache / "ViCLIP")
    decord = types.ModuleType("decord")
    decord.VideoReader, decord.cpu = None, None
    sys.modules["decord"] = decord
    import vbench.aesthetic_quality as aesthetic
    import vbench.overall_consistency as consistency
    import vbench.third_party.ViCLIP.viclip as viclip
    import vbench.third_party.ViCLIP.viclip_text as viclip_text
    import vbench.third_party.ViCLIP.viclip_vision as viclip_vision
    import vbench.utils as utils
    return types.SimpleNamespace(aesthetic=aesthetic, consistency=consistency, viclip=viclip, text=viclip_text,
                                 vision=viclip_vision, utils=utils)


def _load(module: torch.nn.Module, seed: int) -> dict[str, list[int]]:
    state = module.state_dict()
    module.load_state_dict(seeded_state({name: tuple(t.shape) for name, t in state.items()}, seed), strict=True)
    return {name: list(t.shape) for name, t in sorted(state.items())}


def _serve_frames(vb, videos: dict[str, torch.Tensor]) -> None:
    """VBench's readers, reading from memory: all frames (aesthetic), or its 'middle' indices (ViCLIP)."""
    def read_by_fps(path, num_frames=8, sample="rand", **_):
        frames = videos[path]
        indices = vb.utils.get_frame_indices(num_frames, len(frames), sample=sample)
        return frames[indices].permute(0, 3, 1, 2)

    vb.consistency.read_frames_decord_by_fps = read_by_fps
    vb.aesthetic.load_video = lambda path, **_: videos[path].permute(0, 3, 1, 2)


def make_viclip(vb, name: str, sizes: dict, seed: int, video_shapes: list[tuple[int, int, int]], out: Path) -> None:
    vision = partial(vb.vision.VisionTransformer, input_resolution=sizes["image_size"],
                     patch_size=sizes["patch_size"], width=sizes["vision_width"], layers=sizes["vision_layers"],
                     heads=sizes["vision_heads"], output_dim=sizes["embed_dim"], num_frames=sizes["num_frames"])
    vb.viclip.clip_joint_l14 = lambda **kwargs: vision(kernel_size=kwargs["kernel_size"]).eval()
    vb.viclip.clip_text_l14 = lambda **kwargs: vb.text.CLIP_TEXT(
        sizes["embed_dim"], kwargs["context_length"], kwargs["vocab_size"], sizes["text_width"], sizes["text_heads"],
        sizes["text_layers"], 0).eval()
    vb.consistency.get_text_features.__defaults__[0].clear()  # VBench caches features by prompt across models
    tokenizer = vb.viclip._Tokenizer()
    model = vb.viclip.ViCLIP(tokenizer=tokenizer, pretrain=None).eval()  # VBench's constructor, tiny towers
    assert model.max_txt_l == sizes["context_length"] and model.text_encoder_vocab_size == sizes["vocab_size"]
    parameters = _load(model, seed)
    videos = {f"video{i}.mp4": _frames(seed + 1 + i, *shape) for i, shape in enumerate(video_shapes)}
    _serve_frames(vb, videos)
    tensors = {"tokens": model.text_encoder.tokenize(PROMPTS, context_length=model.max_txt_l).long(),
               "text": torch.cat([vb.consistency.get_text_features(model, p, tokenizer, {}) for p in PROMPTS])}
    transform = vb.utils.clip_transform(sizes["image_size"])
    for path, frames in videos.items():
        key = path.removesuffix(".mp4")
        indices = vb.utils.get_frame_indices(sizes["num_frames"], len(frames), sample="middle")
        pixels = transform(frames[indices].permute(0, 3, 1, 2))
        tensors |= {f"{key}.frames": frames, f"{key}.indices": torch.tensor(indices),
                    f"{key}.pixels_patch": pixels[:, :, 96:112, 96:112].contiguous(),
                    f"{key}.embedding": vb.consistency.get_vid_features(model, pixels[None])[0]}
    video_dict = [{"prompt": prompt, "video_list": list(videos)} for prompt in PROMPTS]
    _, results = vb.consistency.overall_consistency(model, video_dict, tokenizer, "cpu")
    tensors["similarity"] = torch.tensor([r["video_results"] for r in results]).view(len(PROMPTS), len(videos)).T
    _write(out, name, tensors, {
        "family": "viclip", "what": "VBench 0.1.5 ViCLIP: overall_consistency (text-video), get_vid_features, "
        "get_text_features, tokenize; weights = golden_data.seeded_state(parameters, seed)",
        "config": sizes, "seed": seed, "prompts": PROMPTS, "videos": list(videos),
        "similarity": "[video, prompt] cosine", "parameters": parameters,
    })


def make_aesthetic(vb, name: str, sizes: dict, seed: int, video_shapes: list[tuple[int, int, int]], out: Path) -> None:
    import clip

    model = clip.model.CLIP(sizes["embed_dim"], 224, sizes["layers"], sizes["width"], sizes["patch_size"],
                            context_length=4, vocab_size=8, transformer_width=8, transformer_heads=1,
                            transformer_layers=1).eval()  # OpenAI CLIP; its text tower is never used
    parameters = _load(model.visual, seed)
    head = torch.nn.Linear(sizes["embed_dim"], 1)  # as VBench's get_aesthetic_model builds it
    head_state = seeded_state({"weight": (1, sizes["embed_dim"]), "bias": (1,)}, seed + 100)
    head_state["bias"] = head_state["bias"] + 5.0  # LAION scores sit about 5
    head.load_state_dict(head_state)
    videos = {f"video{i}.mp4": _frames(seed + 1 + i, *shape) for i, shape in enumerate(video_shapes)}
    _serve_frames(vb, videos)
    _, results = vb.aesthetic.laion_aesthetic(head, model, list(videos), "cpu")
    tensors = {"head.weight": head.weight.detach(), "head.bias": head.bias.detach(),
               "score": torch.tensor([r["video_results"] for r in results])}
    transform = vb.utils.clip_transform(224)
    for path, frames in videos.items():
        key = path.removesuffix(".mp4")
        with torch.no_grad():
            features = model.encode_image(transform(frames.permute(0, 3, 1, 2))).float()
        tensors |= {f"{key}.frames": frames,
                    f"{key}.features": torch.nn.functional.normalize(features, dim=-1)}
    _write(out, name, tensors, {
        "family": "aesthetic", "what": "VBench 0.1.5 laion_aesthetic: OpenAI CLIP encode_image on clip_transform(224) "
        "of every frame, L2-normalised, nn.Linear head, /10, mean; visual weights = golden_data.seeded_state"
        "(parameters, seed), the head's stored",
        "open_clip": {"embed_dim": sizes["embed_dim"], "quick_gelu": True,
                      "vision_cfg": {"image_size": 224, "layers": sizes["layers"], "width": sizes["width"],
                                     "patch_size": sizes["patch_size"], "head_width": 64}},
        "seed": seed, "videos": list(videos), "score": "per video: mean over frames of head(features) / 10",
        "parameters": parameters,
    })


def _write(out: Path, name: str, tensors: dict[str, torch.Tensor], config: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(out / f"{name}.safetensors"))
    (out / f"{name}.json").write_text(json.dumps(config, indent=1) + "\n")
    print(f"wrote {name}: {', '.join(sorted(tensors))}")


VICLIP_CASES = {
    "viclip_tiny": ({"vision_width": 64, "vision_layers": 2, "vision_heads": 2, "patch_size": 32, "image_size": 224,
                     "num_frames": 8, "embed_dim": 32, "text_width": 64, "text_layers": 2, "text_heads": 2,
                     "context_length": 32, "vocab_size": 49408}, 0, [(17, 24, 40), (5, 30, 22)]),
    "viclip_wide": ({"vision_width": 96, "vision_layers": 1, "vision_heads": 3, "patch_size": 56, "image_size": 224,
                     "num_frames": 8, "embed_dim": 48, "text_width": 32, "text_layers": 1, "text_heads": 1,
                     "context_length": 32, "vocab_size": 49408}, 7, [(8, 24, 24), (11, 20, 36)]),
}
AESTHETIC_CASES = {
    "aesthetic_tiny": ({"embed_dim": 16, "layers": 2, "width": 64, "patch_size": 32}, 0, [(6, 30, 24), (3, 20, 36)]),
    "aesthetic_wide": ({"embed_dim": 24, "layers": 1, "width": 128, "patch_size": 56}, 3, [(4, 28, 28)]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "golden")
    parser.add_argument("--case", action="append", default=None, metavar="NAME:JSON",
                        help="a held-out case: viclip_x:{sizes} or aesthetic_x:{sizes} (keys as in the built-in "
                             "cases; optional 'seed' and 'videos' [[T, H, W], ...]); default: the built-in cases")
    args = parser.parse_args()
    cases = {**VICLIP_CASES, **AESTHETIC_CASES}
    if args.case:
        cases = {}
        for spec in args.case:
            name, sizes = spec.split(":", 1)
            sizes = json.loads(sizes)
            cases[name] = (sizes, sizes.pop("seed", 11), [tuple(v) for v in sizes.pop("videos", [[9, 40, 56]])])
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as cache:
        vb = _import_vbench(Path(cache))
        for name, (sizes, seed, shapes) in cases.items():
            make = make_viclip if name.startswith("viclip") else make_aesthetic
            make(vb, name, sizes, seed, shapes, args.out)


if __name__ == "__main__":
    main()
