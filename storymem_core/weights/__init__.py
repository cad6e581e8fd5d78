"""Model files -> modules: the loading subsystem, one module per job (see docs/architecture.md).

readers     safetensors files, shard sets and .pth state dicts, tensors read one at a time
sources     what a path is (file, shard folder or index, Wan-AI download folder) and its reader
kinds       the table of model kinds: anchors, names, ComfyUI folder, configs, builders, key renaming
classify    a file's kind, key prefix and sizes from its tensor names and shapes
renaming    Hugging Face T5 and LoRA key names -> this engine's parameter names
shapes      tensor-shape helpers: anchors, block counts, fit against a model
configs     model configs from tensor shapes
checkpoint  an opened checkpoint: what it is, fp8 planning, tensors under our names
loading     checkpoints into modules, the DiT / umT5 / VAE loaders
scorer_files  the frame scorers' files: CLIP through open_clip, aesthetic heads, HPSv3 (keyframe selection, evaluation)
inspection  the `inspect` command

Placement, LoRA and compile policy for a story's experts live outside, in storymem_core/expert_pair.py.
"""
