"""`python -m storymem_core`: inspect model files, validate story scripts, run stories, convert LoRAs, run the demo,
evaluate, download the model files ComfyUI cannot fetch (see docs/architecture.md)."""

from __future__ import annotations

import argparse
import logging
import sys

from ..choices import Ablation, FirstShot, MemoryPositions, Offload, Preset, Quality, ShotMode, Solver, WeightDtype
from ..errors import GenerationInterrupted, StoryMemError
from ..story import shown_text


def _add_story_options(parser: argparse.ArgumentParser) -> None:
    first = parser.add_mutually_exclusive_group()
    first.add_argument("--t2v-first-shot", dest="first_shot", action="store_const", const=FirstShot.T2V,
                       help="first shot from text (default)")
    first.add_argument("--m2v-first-shot", dest="first_shot", action="store_const", const=FirstShot.MR2V,
                       help="first shot from --reference images (MR2V)")
    parser.set_defaults(first_shot=FirstShot.T2V)
    parser.add_argument("--reference", action="append", default=[], metavar="IMAGE",
                        help="reference image for MR2V (repeatable)")
    cont = parser.add_mutually_exclusive_group()
    cont.add_argument("--mi2v", dest="continuation", action="store_const", const=ShotMode.MI2V,
                      help="shots without a cut start from the last frame")
    cont.add_argument("--mm2v", dest="continuation", action="store_const", const=ShotMode.MM2V,
                      help="shots without a cut continue the last 5 frames")
    parser.set_defaults(continuation=ShotMode.M2V)
    parser.add_argument("--max-memory", type=int, default=10, help="keyframes kept in memory (default 10)")
    parser.add_argument("--fixed-memory", type=int, default=3, help="first keyframes always kept (default 3)")
    ablation_help = {Ablation.NO_SEMANTIC_SELECTION: "ablation: keyframes evenly spaced, not chosen by CLIP similarity",
                     Ablation.NO_AESTHETIC_FILTER: "ablation: keyframes chosen without the quality filter",
                     Ablation.NO_MEMORY_SINK: "ablation: no memory sink (no fixed memory; --fixed-memory unused)"}
    for ablation, text in ablation_help.items():  # the paper's Table 2, recorded in the story folder
        parser.add_argument(f"--{ablation}", dest="ablations", action="append_const", const=ablation, help=text)
    parser.set_defaults(ablations=[])
    parser.add_argument("--seed", type=int, default=0, help="seed of shot 1; shot k uses seed + k - 1")
    parser.add_argument("--size", default="832x480", help="WIDTHxHEIGHT, divisible by 16 (default 832x480)")
    parser.add_argument("--frames", type=int, default=81, help="frames per shot, 4n+1 (default 81)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default 40)")
    parser.add_argument("--shift", type=float, default=None, help="flow shift (default: 4 for M2V, 12 for T2V)")
    parser.add_argument("--guide", type=float, default=None,
                        help="CFG scale for both experts (default 3.5 M2V; 3/4 T2V)")
    parser.add_argument("--solver", default=None, choices=Solver.names(),
                        help=f"sampler (default {Solver.UNIPC})")
    parser.add_argument("--preset", default=Preset.NONE, choices=Preset.names(),
                        help="lightx2v: the lightx2v 4-step distilled LoRAs "
                             "(loras/wan2.2_i2v_lightx2v_4steps_lora_v1_{high,low}_noise, and the t2v v1.1 pair for a "
                             "T2V first shot) stacked on the StoryMem LoRA, sampled as their authors do: 4 Euler "
                             "steps, shift 5, CFG 1 (one forward per step); --steps, --shift, --guide, --solver still "
                             "override")
    parser.add_argument("--memory-positions", default=None, choices=MemoryPositions.names(),
                        help="memory frames' time positions: upstream (memory at -5M..-5, the shot from 0, as the "
                             "StoryMem authors' code since their fix of 2026-01 and the LoRA's training; default for a "
                             "new story) or first-release (0..M-1 then the shot, the first release's numbering). A "
                             "started story continues with the placement it was made with")
    parser.add_argument("--from-shot", type=int, default=None, metavar="N",
                        help="regenerate from shot N (1-based) with the options given now: from the bank before it, "
                             "windowed to --max-memory / --fixed-memory (N = 1: the initial bank, rebuilt from "
                             "--reference)")
    parser.add_argument("--out", required=True,
                        help="output folder (re-running with the same memory options and references continues where it "
                             "stopped; other ones need --from-shot or a new --out)")


def _add_load_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (default: cuda when available), cuda, cuda:1, cpu")
    parser.add_argument("--weights", default=WeightDtype.AUTO, choices=WeightDtype.names(),
                        help="expert weights: auto keeps fp8 files fp8 on a GPU (default)")
    parser.add_argument("--offload", default=Offload.AUTO, choices=Offload.names(),
                        help="GPU memory plan: none (both experts resident), experts (one at a time), blocks (stream "
                             "blocks from RAM, fits 24 GB with fp8), auto (from free memory, default)")
    parser.add_argument("--fsdp", action="store_true",
                        help="under torchrun: shard each expert's weights over the GPUs (FSDP2), for GPUs that cannot "
                             "hold one")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the DiT blocks (~25%% faster steps after a ~20 s compile; always on with "
                             "--preset lightx2v)")
    parser.add_argument("--open-clip-name", default="ViT-B-32-quickgelu",
                        help="open_clip config of the keyframe encoder weights")
    parser.add_argument("--quality", default=Quality.AUTO, choices=Quality.names(),
                        help="keyframe quality filter: aesthetic (CLIP head, clip_vision/sa_0_4_vit_b_32_linear.pth), "
                             "hpsv3 (the paper's, needs the hpsv3 package and HPSv3.safetensors in hpsv3/ or "
                             "clip_vision/), auto (hpsv3 when both are there, else aesthetic; default), off")


def _add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    evaluate = sub.add_parser(
        "evaluate", help="score finished stories: aesthetics, prompt following, cross-shot consistency, smoothness"
    )
    evaluate.add_argument("folders", nargs="+", metavar="STORY_FOLDER", help="the story command's --out folders")
    evaluate.add_argument("--models-dir", required=True, help="folder whose clip_vision/ holds CLIP, aesthetic head")
    evaluate.add_argument("--script", default=None, help="story script (default: story.json in or beside each folder)")
    evaluate.add_argument("--frames-per-shot", type=int, default=8, help="frames sampled evenly per shot (default 8)")
    evaluate.add_argument("--open-clip-name", default="ViT-B-32-quickgelu", help="open_clip config of the CLIP weights")
    evaluate.add_argument("--paper", action="store_true",
                          help="score as the StoryMem paper does (ViCLIP-L/14, LAION ViT-L/14 aesthetic, VBench's "
                               "scales) and print its StoryMem row beside ours; needs ViClip-InternVid-10M-FLT.pth, "
                               "vit_large_patch14_clip_224.openai.safetensors and sa_0_4_vit_l_14_linear.pth in "
                               "clip_vision/ (docs/evaluation.md)")
    evaluate.add_argument("--device", default="auto", help="auto (default: cuda when available), cuda, cuda:1, cpu")
    evaluate.add_argument("--out", default="storymem_comparison",
                          help="where the comparison of several folders goes (default ./storymem_comparison)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m storymem_core", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is loaded and decided (INFO)")
    sub = parser.add_subparsers(dest="command", required=True)
    inspect = sub.add_parser("inspect", help="say what model files are and whether they are usable")
    inspect.add_argument("files", nargs="+", metavar="FILE",
                         help="model files (.safetensors, .pth), shard indexes or Wan-AI model folders")
    validate = sub.add_parser("validate", help="check story scripts")
    validate.add_argument("scripts", nargs="+", metavar="SCRIPT",
                          help="story scripts (ST-Bench JSON), or folders of them")
    story = sub.add_parser("story", help="generate a whole story")
    story.add_argument("script", help="the story script (ST-Bench JSON; check it with validate)")
    story.add_argument("--models-dir", required=True,
                       help="folder with diffusion_models/, text_encoders/, vae/, loras/, clip_vision/ (ComfyUI "
                            "layout)")
    _add_story_options(story)
    _add_load_options(story)
    convert = sub.add_parser("convert-lora",
                             help="write a StoryMem .pth LoRA as a ComfyUI LoRA (rsLoRA scale folded into alpha)")
    convert.add_argument("source", metavar="IN.pth", help="a StoryMem LoRA as released (peft .pth)")
    convert.add_argument("target", metavar="OUT.safetensors",
                         help="where the ComfyUI LoRA goes (e.g. ComfyUI/models/loras/...)")
    convert.add_argument("--strength", type=float, default=1.0, help="strength folded into the file (default 1)")
    convert.add_argument("--alpha", type=float, default=None,
                         help="the LoRA's lora_alpha (default: the file's; the rank for a peft .pth)")
    demo = sub.add_parser("demo", help="a built-in 3-shot story on tiny random models (noise pixels, CPU, < 1 min)")
    demo.add_argument("--out", required=True,
                      help="folder for the tiny models, the script and the story (created when missing)")
    demo.add_argument("--seed", type=int, default=0,
                      help="seed of the tiny random models and of shot 1 (default 0; another makes OUT/story-seedN)")
    _add_evaluate_parser(sub)
    download = sub.add_parser("download", help="fetch the StoryMem LoRA and the aesthetic head into a models folder "
                                               "(resumable, checked); --list shows each with size and license")
    download.add_argument("names", nargs="*", metavar="NAME",
                          help="files to fetch, as --list names them (e.g. StoryMem/Wan2.2-MI2V-A14B/"
                               "backbone_high_noise.pth)")
    download.add_argument("--models-dir", required=True, help="models folder in ComfyUI's layout (loras/, ...)")
    download.add_argument("--list", action="store_true", help="list the files, their state, size and license")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        if args.command == "inspect":
            from .inspect import inspect_command

            return inspect_command(args.files)
        if args.command == "validate":
            from .validate import validate_command

            return validate_command(args.scripts)
        if args.command == "convert-lora":
            from ..lora_convert import convert_lora

            print(convert_lora(args.source, args.target, args.strength, args.alpha))
            return 0
        if args.command == "story":
            from .story import run_story_command

            return run_story_command(args)
        if args.command == "download":
            from .download import download_command

            return download_command(args)
        if args.command == "evaluate":
            from .evaluate import evaluate_command

            return evaluate_command(args)
        from .demo import run_demo

        return run_demo(args.out, seed=args.seed)
    except GenerationInterrupted as error:
        print(f"stopped: {shown_text(str(error))}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("stopped: every finished shot is saved; run the same command again to continue.", file=sys.stderr)
        return 130
    except StoryMemError as error:
        print(f"error: {shown_text(str(error))}", file=sys.stderr)
        return 2
