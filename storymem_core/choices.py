"""The pack's vocabulary: every named choice the CLI, the nodes and the engine share, as string enums in one torch-free
module (so `--help` stays instant). A member equals the string files, widgets and flags hold (`ShotMode.M2V == "m2v"`),
so story folders and saved workflows read the same. Other modules name members; none writes the strings itself
(`tests/test_architecture.py` checks it). See docs/architecture.md."""

from enum import Enum


class Choice(str, Enum):
    """A named choice whose value is the string users and files see; printing it prints that string."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def names(cls) -> list[str]:
        """The plain strings, in order: a ComfyUI combo widget's or an argparse flag's choices."""
        return [member.value for member in cls]


class ShotMode(Choice):
    """How a shot is made: from text alone (a story's first shot), or from memory given 0, 1 or 5 frames of the
    previous shot."""
    T2V = "t2v"
    M2V = "m2v"
    MI2V = "mi2v"
    MM2V = "mm2v"


MOTION_FRAMES = 5  # frames an MM2V shot continues (the previous shot's last 5)
GIVEN_FRAMES = {ShotMode.M2V: 0, ShotMode.MI2V: 1, ShotMode.MM2V: MOTION_FRAMES}  # memory shot modes -> frames given
CONTINUATIONS = tuple(GIVEN_FRAMES)  # how a story's shots without a cut are made


class NodeShotMode(Choice):
    """A shot node's mode: auto is M2V after a cut, else MI2V / MM2V."""
    AUTO_MI2V = "auto-mi2v"
    AUTO_MM2V = "auto-mm2v"
    M2V = "m2v"
    MI2V = "mi2v"
    MM2V = "mm2v"


AUTO_CONTINUES = {NodeShotMode.AUTO_MI2V: ShotMode.MI2V, NodeShotMode.AUTO_MM2V: ShotMode.MM2V}  # without a cut


class FirstShot(Choice):
    """A story starts from text, or from reference images as its first memory."""
    T2V = "t2v"
    MR2V = "mr2v"


class ExpertKind(Choice):
    """Which Wan2.2 A14B pair an expert belongs to: image-to-video (StoryMem's base) or text-to-video."""
    I2V = "i2v"
    T2V = "t2v"


class Noise(Choice):
    """Which expert of a pair: the high-noise one samples the early steps, the low-noise one the rest."""
    HIGH = "high"
    LOW = "low"


class Solver(Choice):
    UNIPC = "unipc"
    DPMPP = "dpm++"
    EULER = "euler"


class WeightDtype(Choice):
    """Expert weight types a user can ask for by name."""
    AUTO = "auto"  # fp8 files stay fp8 on a GPU, the rest bf16 (fp32 on the CPU)
    FP8 = "fp8"
    BF16 = "bf16"
    FP16 = "fp16"
    FP32 = "fp32"


class Offload(Choice):
    """GPU memory plans, each needing less than the one before; auto picks one from free memory."""
    AUTO = "auto"
    NONE = "none"  # both experts resident
    EXPERTS = "experts"  # one expert on the GPU at a time
    BLOCKS = "blocks"  # blocks streamed from RAM


PLACEMENTS = (Offload.NONE, Offload.EXPERTS, Offload.BLOCKS)  # the plans themselves, in order


class Quality(Choice):
    """Keyframe quality filter models; auto: HPSv3 when installed, else the aesthetic head."""
    AUTO = "auto"
    AESTHETIC = "aesthetic"
    HPSV3 = "hpsv3"
    OFF = "off"


class Preset(Choice):
    """Sampler presets (storymem_core/presets.py); lightx2v: 4 steps at CFG 1."""
    NONE = "none"
    LIGHTX2V = "lightx2v"


class MemoryPositions(Choice):
    """Memory's RoPE time positions (storymem_core.positions): the authors' current placement, or the first
    release's numbering."""
    UPSTREAM = "upstream"
    FIRST_RELEASE = "first-release"


DEFAULT_MEMORY_POSITIONS = MemoryPositions.UPSTREAM


class Ablation(Choice):
    """The paper's ablations (its Table 2), each a story option and a `story` flag (`--` + the value): keyframes
    evenly spaced instead of chosen by meaning, no aesthetic filter, no memory sink (no fixed memory)."""
    NO_SEMANTIC_SELECTION = "no-semantic-selection"
    NO_AESTHETIC_FILTER = "no-aesthetic-filter"
    NO_MEMORY_SINK = "no-memory-sink"


class EvaluationMode(Choice):
    """How a story is scored: quick (CLIP ViT-B/32, the keyframe models) or as the paper scores ST-Bench (ViCLIP,
    the ViT-L/14 aesthetic head, VBench's scales)."""
    QUICK = "quick"
    PAPER = "paper"
