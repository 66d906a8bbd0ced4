"""A saved LoRA loads through ComfyUI core's LoraLoader with every key used, and the loaded
model predicts (U-Net) and encodes (CLIP) what the model with the adapter attached did."""

import pytest
import torch

import comfy.model_management
from lllite_kit.training.lora import LoRAAdapter, LoRAConfig
from lora_helpers import load_in_core, randomize, text_encoders, unet_prediction


@pytest.fixture(scope="module")
def family_models(tiny):
    """family -> (model, clip, prediction without LoRA); built once, every case detaches."""
    cache = {}

    def get(family):
        if family not in cache:
            model, clip = tiny.build_model(family), tiny.build_clip(family)
            cache[family] = (model, clip, unet_prediction(model.model.diffusion_model, tiny, family))
        return cache[family]

    yield get
    comfy.model_management.unload_all_models()


def _encode(clip):
    return clip.encode_from_tokens(clip.tokenize("a red circle on a blue square"), return_pooled=True)


@pytest.mark.parametrize("family,options", [
    ("sdxl", {}),
    ("sdxl", {"conv_dim": 2, "conv_alpha": 1.0, "dim": 3, "alpha": 2.0}),
    ("sd15", {}),
    ("sd15", {"conv_dim": 2, "conv_alpha": 1.0}),
    ("sd15", {"dim": 4, "unit": 2, "conv_dim": 4}),  # DyLoRA-C3Lier saves the full rank
], ids=["sdxl-lierla", "sdxl-c3lier", "sd15-lierla", "sd15-c3lier", "sd15-dylora"])
def test_saved_lora_loads_in_core_with_no_unloaded_key(family, options, family_models, tiny, comfy_dirs, caplog):
    model, clip, base = family_models(family)
    diffusion_model = model.model.diffusion_model
    adapter = LoRAAdapter(LoRAConfig(**options), model.model.model_config)
    adapter.attach(diffusion_model, text_encoders(clip, family))
    try:
        randomize(adapter)
        adapter.train(False)
        expected_unet = unet_prediction(diffusion_model, tiny, family)
        expected_cond, expected_pooled = _encode(clip)
        name = f"test_{family}_{'_'.join(f'{k}{v}' for k, v in options.items()) or 'plain'}.safetensors"
        adapter.save(str(comfy_dirs / "models" / "loras" / name), torch.float32, {})
    finally:
        adapter.detach()
        comfy.model_management.unload_all_models()
    assert (expected_unet - base).abs().max() > 0.1 * base.abs().max()  # the LoRA really acts

    model_lora, clip_lora = load_in_core(model, clip, name, list(adapter.modules), caplog)

    model_lora.patch_model()
    try:
        loaded_unet = unet_prediction(diffusion_model, tiny, family)
    finally:
        model_lora.unpatch_model()
    try:
        loaded_cond, loaded_pooled = _encode(clip_lora)
    finally:
        comfy.model_management.unload_all_models()
    torch.testing.assert_close(loaded_unet, expected_unet, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loaded_cond, expected_cond, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loaded_pooled, expected_pooled, rtol=1e-4, atol=1e-4)
