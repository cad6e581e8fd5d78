"""The pack's vocabulary: every named choice the CLI, the nodes and the engine share, in one torch-free module (so
`--help` stays instant). Other modules import these names; none keeps its own list. See docs/architecture.md."""

MOTION_FRAMES = 5  # frames an MM2V shot continues (the previous shot's last 5)
GIVEN_FRAMES = {"m2v": 0, "mi2v": 1, "mm2v": MOTION_FRAMES}  # memory shot modes -> frames of the previous shot given
SHOT_MODES = ("t2v", *GIVEN_FRAMES)  # t2v: from text alone (a story's first shot)
CONTINUATIONS = tuple(GIVEN_FRAMES)  # how a story's shots without a cut are made
FIRST_SHOTS = ("t2v", "mr2v")  # a story starts from text, or from reference images as its first memory
NODE_SHOT_MODES = ("auto-mi2v", "auto-mm2v", *GIVEN_FRAMES)  # auto: M2V after a cut, else MI2V / MM2V

SOLVERS = ("unipc", "dpm++", "euler")
WEIGHT_DTYPE_NAMES = ("bf16", "fp16", "fp32")
# auto: fp8 files stay fp8 on a GPU, the rest bf16 (fp32 on the CPU)
WEIGHT_CHOICES = ("auto", "fp8", *WEIGHT_DTYPE_NAMES)
PLACEMENTS = ("none", "experts", "blocks")  # GPU memory plans, each needing less than the one before
OFFLOAD_CHOICES = ("auto", *PLACEMENTS)  # auto picks a placement from free memory
QUALITY_CHOICES = ("auto", "aesthetic", "hpsv3", "off")  # keyframe quality filter models
PRESET_CHOICES = ("none", "lightx2v")  # sampler presets (storymem_core/presets.py); lightx2v: 4 steps at CFG 1
# memory's RoPE time positions (storymem_core.positions): the authors' current placement first, the default
MEMORY_POSITIONS = ("upstream", "first-release")
DEFAULT_MEMORY_POSITIONS = MEMORY_POSITIONS[0]
