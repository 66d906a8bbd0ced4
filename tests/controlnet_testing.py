"""Tiny SD1.5/SDXL models and ControlNet files for the ControlNet tests, with the attention
heads ComfyUI's ControlNet loader detects from a file (64 channels per head: core builds tiny,
unrecognised configs with its BASE defaults), so a saved tiny ControlNet computes the same once
core loads it (comfy.controlnet.load_controlnet). SDXL: the tiny config as is (attention only at
64/128 channels). SD1.5: 64 base channels (attention at every level), same module names as the
real model."""
from pathlib import Path

import safetensors.torch
import torch

import comfy.cldm.cldm
import comfy.controlnet
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import tiny_models


class HeadsSDXL(tiny_models.TinySDXL):
    unet_extra_config = {"num_heads": -1, "num_head_channels": 64}


class HeadsSD15(tiny_models.TinySD15):
    unet_extra_config = {"num_heads": -1, "num_head_channels": 64}


FAMILIES = {
    "sdxl": (HeadsSDXL, tiny_models.SDXL_UNET),
    "sd15": (HeadsSD15, {**tiny_models.SD15_UNET, "model_channels": 64, "channel_mult": [1, 2, 2, 2]}),
}


def build_model(family: str = "sd15", seed: int = 0, dtype: torch.dtype = torch.float32, head_channels: int = 64,
                **_ignored):
    """A MODEL whose ControlNet core reads back with the same heads; unit GroupNorm gains (as
    training_helpers.unit_group_norms) so a control changes the output measurably. head_channels:
    other heads for a model whose ControlNet is a separate file (write_controlnet builds it with
    core's 64 either way); test_distill's numbers are tuned on tiny_models' 16."""
    config_cls, unet_config = FAMILIES[family]
    model_config = config_cls(dict(unet_config, dtype=dtype))
    model_config.unet_config["num_head_channels"] = head_channels
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
    patcher.cached_patcher_init = (build_model, (family, seed, dtype, head_channels))
    return patcher


@torch.no_grad()
def perturb(control: torch.nn.Module, seed: int = 5, scale: float = 0.05) -> None:
    """Every ControlNet weight moved (zero convs included), as training would."""
    g = torch.Generator().manual_seed(seed)
    for _, p in sorted(control.named_parameters()):
        p.add_(torch.randn(p.shape, generator=g) * scale)


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


def core_and_training_predictions(model, adapter, control_name: str, family: str, seed: int = 4, strength: float = 1.0):
    """The file `control_name` (models/controlnet) loaded by core's ControlNetLoader and applied by
    its ControlNetApplyAdvanced at `strength` in one sampler step, and the same U-Net call with
    `adapter`'s training-time hook and the same guide: (core's ControlNet object, bare output, core's, ours)."""
    import nodes  # here: benches and the workflow fixtures import this module without ComfyUI's node set
    from lllite_testing import conditioning, sample

    control = nodes.ControlNetLoader().load_controlnet(control_name)[0]
    assert isinstance(control, comfy.controlnet.ControlNet)
    image = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(seed))
    positive, negative = conditioning(family)
    pos, neg = nodes.ControlNetApplyAdvanced().apply_controlnet(positive, negative, control, image, strength, 0.0, 1.0)
    dm = model.model.diffusion_model
    calls = []

    def first_call(module, args, kwargs, output):
        if not calls:
            calls.append((args, {k: v for k, v in kwargs.items() if k != "control"}, output.detach().clone()))
    handle = dm.register_forward_hook(first_call, with_kwargs=True)
    try:
        sample(model, torch.zeros(1, 4, 4, 4), steps=1, positive=pos, negative=neg, family=family)
    finally:
        handle.remove()
    args, kwargs, core_out = calls[0]
    with torch.no_grad():
        bare = dm(*args, **kwargs)
        adapter.attach(dm, {})
        adapter.train(False)
        try:
            with adapter.using_guide(image.movedim(-1, 1) * 2 - 1):
                ours = dm(*args, **kwargs)
        finally:
            adapter.detach()
    return control, bare, core_out, ours
