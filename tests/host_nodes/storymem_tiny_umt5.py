"""A test-only custom node: ComfyUI's umT5 builder assumes the xxl sizes, so loading it gives Load CLIP (type wan) the
tiny core umT5's (`tiny_models.CORE_T5`) through ComfyUI's own config override. The host scripts load it (in_host) and
the browser test's server finds it through its extra_model_paths.yaml (`custom_nodes`); it adds no node."""

import comfy.sd

NODE_CLASS_MAPPINGS = {}

_load_text_encoders = comfy.sd.load_text_encoder_state_dicts


def _load_tiny_text_encoders(*args, model_options={}, **kwargs):
    from storymem_core import tiny_models  # the pack's engine: importable once ComfyUI has loaded the pack

    tiny_umt5 = {**tiny_models.CORE_T5, "num_decoder_layers": tiny_models.CORE_T5["num_layers"]}
    return _load_text_encoders(*args, model_options={**model_options, "umt5xxl_model_config": tiny_umt5}, **kwargs)


comfy.sd.load_text_encoder_state_dicts = _load_tiny_text_encoders
