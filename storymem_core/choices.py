"""Option values shared by the CLI, the nodes and the engine; kept free of torch so `--help` stays instant."""

WEIGHT_DTYPE_NAMES = ("bf16", "fp16", "fp32")
WEIGHT_CHOICES = ("auto", "fp8", *WEIGHT_DTYPE_NAMES)  # auto: fp8 files stay fp8 on a GPU, the rest bf16 (fp32 on the CPU)
OFFLOAD_CHOICES = ("auto", "none", "experts", "blocks")  # GPU memory plans; auto picks from free memory
QUALITY_CHOICES = ("auto", "aesthetic", "hpsv3", "off")  # keyframe quality filter models
PRESET_CHOICES = ("none", "lightx2v")  # sampler presets (storymem_core/presets.py); lightx2v: 4 steps at CFG 1
MEMORY_POSITIONS = ("released", "negative")  # memory's RoPE time positions (storymem_core.positions); released first
