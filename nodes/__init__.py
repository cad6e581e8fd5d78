"""StoryMem ComfyUI nodes, grouped by what they handle; this module only gathers their mappings (and loads the model
files panel's routes, model_files, and puts the workflows' example images into ComfyUI's input folder)."""

from . import (
    evaluation_nodes,
    example_inputs,
    host,
    loaders,
    memory_nodes,
    model_files,  # noqa: F401  (registers its routes on ComfyUI's server)
    output_nodes,
    runner_node,
    shot_nodes,
    story_nodes,
)

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
_MODULES = [loaders, story_nodes, memory_nodes, shot_nodes, output_nodes, runner_node, evaluation_nodes]
if host.folder_paths is not None:  # the nodes for ComfyUI's own models exist only inside ComfyUI
    from . import native, native_runner, native_shot

    _MODULES.extend([native, native_shot, native_runner])
    example_inputs.copy_example_inputs(host.input_dir())
for _module in _MODULES:
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
