"""Tiny ControlNet files core ComfyUI loads (comfy.controlnet.load_controlnet) for the tiny
models. Core detects a ControlNet's config from the file and builds configs it does not
recognise with its BASE defaults, 64 channels per attention head; so the ControlNet is built
by core's own comfy.cldm.cldm.ControlNet from the model's config with 64-channel heads, and
computes the same before saving and after core reads it back. Its attention widths must be
multiples of 64: the tiny SDXL model qualifies as it is (attention at 64/128 channels); for
SD1.5 build_model() below has 64 base channels (same module names as SD1.5)."""
from pathlib import Path

import safetensors.torch
import torch

import comfy.cldm.cldm
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import tiny_models

SD15_UNET = {**tiny_models.SD15_UNET, "model_channels": 64, "channel_mult": [1, 2, 2, 2]}


def build_model(seed: int = 0, dtype: torch.dtype = torch.float32, **_ignored):
    """A tiny SD1.5 MODEL with 64 base channels; GroupNorm gains 1 (as in a trained model) so
    an added control changes its output measurably."""
    model_config = tiny_models.TinySD15(dict(SD15_UNET, dtype=dtype))
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
    patcher.cached_patcher_init = (build_model, (seed, dtype))
    return patcher


def build_controlnet(model, seed: int = 1, zero_conv_scale: float = 0.3, hint_gain: float = 2.0) -> comfy.cldm.cldm.ControlNet:
    """Core's ControlNet for `model`'s U-Net config: copied from the U-Net where the layouts
    agree (as ControlNet training starts), a seeded guide encoder with gain `hint_gain` per
    convolution (so the guide survives its eight SiLU layers), and zero convolutions filled
    with small seeded values instead of zeros, so the control acts and depends on the guide."""
    config = {k: v for k, v in model.model.model_config.unet_config.items() if k not in ("out_channels", "dtype", "device")}
    config.update(num_heads=-1, num_head_channels=64)  # core's BASE defaults, what it reads the file with
    net = comfy.cldm.cldm.ControlNet(**config, hint_channels=3, operations=comfy.ops.disable_weight_init,
                                     device=torch.device("cpu"), dtype=torch.float32)
    tiny_models.fill_seeded(net, seed)
    unet = model.model.diffusion_model.state_dict()
    with torch.no_grad():
        for k, p in net.state_dict().items():
            if k in unet and unet[k].shape == p.shape:
                p.copy_(unet[k])
        g = torch.Generator().manual_seed(seed + 1)
        for k, p in sorted(net.named_parameters()):
            if k.startswith(("zero_convs.", "middle_block_out.")):
                p.copy_(torch.randn(p.shape, generator=g) * zero_conv_scale / max(1, p[0].numel()) ** 0.5)
            elif k.startswith("input_hint_block.") and p.ndim == 4:
                p.mul_(hint_gain)
    return net


def write_controlnet(path: Path, model, seed: int = 1, zero_conv_scale: float = 0.3, hint_gain: float = 2.0) -> Path:
    """The ControlNet as an original-layout (ControlNet 1.x .pth) state dict, "control_model."
    keys, in a safetensors file: the layout core's load_controlnet reads for every SD ControlNet."""
    net = build_controlnet(model, seed, zero_conv_scale, hint_gain)
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({f"control_model.{k}": v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path
