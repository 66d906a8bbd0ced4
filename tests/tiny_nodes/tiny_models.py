"""Tiny SDXL- and SD1.5-layout MODEL / CLIP / VAE objects with the real module names.

ComfyUI's checkpoint detection only knows real sizes, so the objects are built directly
from small configs (see shared/ENVIRONMENT.md). Every module path of the real models is
kept (input_blocks.4.1.transformer_blocks.0.attn1.to_q ...), so LoRA and LLLite key names
are the real ones. Weights are filled from a seeded generator: same seed, same model.
"""
import math

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.sdxl_clip
import comfy.supported_models

# Text widths differ from every U-Net block width (32/64/128) on purpose: code that tells
# attn1 from attn2 by shape would otherwise pass by accident.
CLIP_L = {"hidden_size": 40, "intermediate_size": 80, "num_attention_heads": 2, "num_hidden_layers": 3, "projection_dim": 40}
CLIP_G = {"hidden_size": 48, "intermediate_size": 96, "num_attention_heads": 2, "num_hidden_layers": 3, "projection_dim": 48}
SDXL_CONTEXT_DIM = CLIP_L["hidden_size"] + CLIP_G["hidden_size"]  # 88
SD15_CONTEXT_DIM = CLIP_L["hidden_size"]  # 40

_UNET_COMMON = {
    "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
    "use_spatial_transformer": True, "legacy": False, "model_channels": 32,
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
SDXL_UNET = {
    **_UNET_COMMON, "num_classes": "sequential", "adm_in_channels": CLIP_G["projection_dim"] + 1536,
    "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4],
    "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_middle": 10,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "use_linear_in_transformer": True, "context_dim": SDXL_CONTEXT_DIM,
}
SD15_UNET = {
    **_UNET_COMMON, "adm_in_channels": None,
    "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_linear_in_transformer": False, "context_dim": SD15_CONTEXT_DIM,
}
VAE_CONFIG = {"params": {"embed_dim": 4, "ddconfig": {
    "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
    "ch": 32, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
}}}


class TinySDXL(comfy.supported_models.SDXL):
    unet_extra_config = {"num_heads": -1, "num_head_channels": 16}


class TinySD15(comfy.supported_models.SD15):
    unet_extra_config = {"num_heads": -1, "num_head_channels": 16}


FAMILIES = {"sdxl": (TinySDXL, SDXL_UNET), "sd15": (TinySD15, SD15_UNET)}


@torch.no_grad()
def fill_seeded(module: torch.nn.Module, seed: int) -> None:
    """Deterministic weights with activations of a sane size: N(0, 1/fan_in) for matrices and
    kernels, 1 for norm scales, small values for biases and embeddings."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
        if p.ndim >= 2:
            fan_in = p[0].numel()
            v = torch.randn(p.shape, generator=g) / math.sqrt(fan_in)
        elif "norm" in name and name.endswith("weight"):
            v = torch.ones(p.shape)
        else:
            v = torch.randn(p.shape, generator=g) * 0.02
        p.copy_(v.to(p.dtype))


def build_model(family: str = "sdxl", seed: int = 0, dtype: torch.dtype = torch.float32, **_ignored) -> comfy.model_patcher.ModelPatcher:
    """A MODEL (ModelPatcher) of the tiny family; extra kwargs (disable_dynamic) are accepted
    because ComfyUI calls cached_patcher_init with them when it rebuilds the model."""
    config_cls, unet_config = FAMILIES[family]
    model_config = config_cls(dict(unet_config, dtype=dtype))
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({})
    fill_seeded(model.diffusion_model, seed)
    model.diffusion_model.to(dtype)
    cpu = torch.device("cpu")
    device = comfy.model_management.get_torch_device()
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=cpu)
    patcher.cached_patcher_init = (build_model, (family, seed, dtype))
    return patcher


def build_clip(family: str = "sdxl", seed: int = 0) -> comfy.sd.CLIP:
    if family == "sdxl":
        target = comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel)
    else:
        target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
    options = {"clip_l_model_config": CLIP_L, "clip_g_model_config": CLIP_G, "dtype": torch.float32}
    clip = comfy.sd.CLIP(target, model_options=options)
    fill_seeded(clip.cond_stage_model, seed + 1)
    return clip


def build_vae(seed: int = 0) -> comfy.sd.VAE:
    vae = comfy.sd.VAE(sd={}, config=VAE_CONFIG, dtype=torch.float32)
    fill_seeded(vae.first_stage_model, seed + 2)
    return vae


def build_checkpoint(family: str = "sdxl", seed: int = 0):
    """(MODEL, CLIP, VAE) as CheckpointLoaderSimple would give them."""
    return build_model(family, seed), build_clip(family, seed), build_vae(seed)
