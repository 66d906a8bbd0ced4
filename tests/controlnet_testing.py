"""Tiny SD1.5/SDXL models for the ControlNet tests, with the attention heads ComfyUI's
ControlNet loader detects from a file (64 channels per head: core builds tiny, unrecognised
configs with its BASE defaults), so a saved tiny ControlNet computes the same once core loads
it. SDXL: the tiny config as is (attention only at 64/128 channels). SD1.5: 64 base channels
(attention at every level), same module names as the real model."""
import torch

import comfy.model_management
import comfy.model_patcher
import tiny_models


class HeadsSDXL(tiny_models.TinySDXL):
    unet_extra_config = {"num_heads": -1, "num_head_channels": 64}


class HeadsSD15(tiny_models.TinySD15):
    unet_extra_config = {"num_heads": -1, "num_head_channels": 64}


FAMILIES = {
    "sdxl": (HeadsSDXL, tiny_models.SDXL_UNET),
    "sd15": (HeadsSD15, {**tiny_models.SD15_UNET, "model_channels": 64, "channel_mult": [1, 2, 2, 2]}),
}


def build_model(family: str = "sd15", seed: int = 0, dtype: torch.dtype = torch.float32, **_ignored):
    """A MODEL whose ControlNet core reads back with the same heads; unit GroupNorm gains (as
    training_helpers.unit_group_norms) so a control changes the output measurably."""
    config_cls, unet_config = FAMILIES[family]
    model_config = config_cls(dict(unet_config, dtype=dtype))
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({})
    tiny_models.fill_seeded(model.diffusion_model, seed)
    with torch.no_grad():
        for m in model.diffusion_model.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.fill_(1.0)
    model.diffusion_model.to(dtype)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                               offload_device=torch.device("cpu"))
    patcher.cached_patcher_init = (build_model, (family, seed, dtype))
    return patcher


@torch.no_grad()
def perturb(control: torch.nn.Module, seed: int = 5, scale: float = 0.05) -> None:
    """Every ControlNet weight moved (zero convs included), as training would."""
    g = torch.Generator().manual_seed(seed)
    for _, p in sorted(control.named_parameters()):
        p.add_(torch.randn(p.shape, generator=g) * scale)
