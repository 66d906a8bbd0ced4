"""A saved LoRA loads through ComfyUI core's LoraLoader with every key used, and the loaded
model predicts what the model with the adapter attached predicted."""
import logging

import pytest
import torch

import nodes
from lora_helpers import attached, randomize, unet_prediction



def _encode(clip):
    tokens = clip.tokenize("a red circle on a blue square")
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return cond, pooled


@pytest.mark.parametrize("family,options", [
    ("sdxl", {}),
    ("sdxl", {"conv_dim": 2, "conv_alpha": 1.0, "dim": 3, "alpha": 2.0}),
    ("sd15", {}),
    ("sd15", {"conv_dim": 2, "conv_alpha": 1.0}),
    ("sd15", {"dim": 4, "unit": 2, "conv_dim": 4}),  # DyLoRA-C3Lier saves the full rank
], ids=["sdxl-lierla", "sdxl-c3lier", "sd15-lierla", "sd15-c3lier", "sd15-dylora"])
def test_saved_lora_loads_in_core_with_no_unloaded_key(family, options, tiny, comfy_dirs, caplog):
    model, clip, adapter = attached(tiny, family, **options)
    diffusion_model = model.model.diffusion_model
    base = unet_prediction(diffusion_model, tiny, family)
    randomize(adapter)
    adapter.train(False)
    expected_unet = unet_prediction(diffusion_model, tiny, family)
    expected_cond, expected_pooled = _encode(clip)
    assert (expected_unet - base).abs().max() > 0.1 * base.abs().max()  # the LoRA really acts

    name = f"test_{family}_{'_'.join(f'{k}{v}' for k, v in options.items()) or 'plain'}.safetensors"
    adapter.save(str(comfy_dirs / "models" / "loras" / name), torch.float32, {})
    adapter.detach()

    caplog.set_level(logging.WARNING)
    model_lora, clip_lora = nodes.LoraLoader().load_lora(model, clip, name, 1.0, 1.0)
    problems = [r.getMessage() for r in caplog.records if "not loaded" in r.getMessage().lower()]
    assert problems == []
    n_unet = sum(1 for n in adapter.modules if n.startswith("lora_unet_"))
    assert len(model_lora.patches) == n_unet
    assert len(clip_lora.patcher.patches) == len(adapter.modules) - n_unet

    model_lora.patch_model()
    try:
        loaded_unet = unet_prediction(diffusion_model, tiny, family)
    finally:
        model_lora.unpatch_model()
    torch.testing.assert_close(loaded_unet, expected_unet, rtol=1e-4, atol=1e-4)
    loaded_cond, loaded_pooled = _encode(clip_lora)
    torch.testing.assert_close(loaded_cond, expected_cond, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loaded_pooled, expected_pooled, rtol=1e-4, atol=1e-4)
