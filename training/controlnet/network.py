"""A ControlNet made from a base U-Net, as lllyasviel's tool_add_control.py makes one: core's
comfy.cldm.cldm.ControlNet with the base's config; every tensor whose name the U-Net also has
(time_embed, label_emb, input_blocks, middle_block) copied from it; zero convolutions
(zero_convs, middle_block_out) and the hint encoder's last convolution zero, so a fresh
ControlNet adds exactly nothing; the rest of the hint encoder newly initialised (torch's
default init, global RNG)."""
import comfy.cldm.cldm
import comfy.model_detection
import comfy.ops
import torch

from ...errors import user_error

HINT_CHANNELS = 3
FILE_PREFIX = "control_model."  # lllyasviel's layout: core (pth branch), A1111 and Advanced-ControlNet read it
ZERO_PREFIXES = ("zero_convs.", "middle_block_out.")


@user_error
class ControlNetError(ValueError):
    """A ControlNet or base model that does not fit what was asked; the message says why."""


def controlnet_config(unet_config: dict) -> dict:
    """core's ControlNet arguments for a U-Net config (what load_controlnet passes it)."""
    config = {k: v for k, v in unet_config.items() if k not in ("out_channels", "dtype", "device", "operations")}
    return {**config, "hint_channels": HINT_CHANNELS}


def new_controlnet(unet_config: dict, device=None) -> torch.nn.Module:
    """core's ControlNet for this config, float32, weights not yet set (comfy ops skip init)."""
    return comfy.cldm.cldm.ControlNet(**controlnet_config(unet_config), dtype=torch.float32, device=device,
                                      operations=comfy.ops.disable_weight_init)


def last_hint_conv(control: torch.nn.Module) -> str:
    """Name of the hint encoder's last convolution (zero-initialised in lllyasviel's code)."""
    convs = [n for n, m in control.input_hint_block.named_modules() if isinstance(m, torch.nn.Conv2d)]
    return f"input_hint_block.{convs[-1]}"


@torch.no_grad()
def controlnet_from_unet(diffusion_model: torch.nn.Module, unet_config: dict) -> torch.nn.Module:
    """tool_add_control: a ControlNet whose encoder and middle block are the U-Net's."""
    device = next(diffusion_model.parameters()).device
    control = new_controlnet(unet_config, device)
    unet = diffusion_model.state_dict()
    zero_last = last_hint_conv(control)
    for name, module in control.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.Conv2d.reset_parameters(module)  # new layers: torch's default init
    for key, p in control.state_dict().items():
        if key in unet:
            if tuple(unet[key].shape) != tuple(p.shape):
                raise ControlNetError(f"the U-Net's {key} has shape {tuple(unet[key].shape)}, the ControlNet's {tuple(p.shape)}")
            p.copy_(unet[key].to(p.dtype))
        elif key.startswith(ZERO_PREFIXES) or key.startswith(zero_last + "."):
            p.zero_()
        elif not key.startswith("input_hint_block."):
            raise ControlNetError(f"ControlNet tensor {key} has no counterpart in the U-Net")
    check_core_reads_alike(control, unet_config)
    return control


def copied_keys(control_keys, unet_keys) -> list[str]:
    """The ControlNet keys that are copies of U-Net keys (what transfer moves)."""
    unet_keys = set(unet_keys)
    return sorted(k for k in control_keys if k in unet_keys)


def check_core_reads_alike(control: torch.nn.Module, unet_config: dict) -> None:
    """ComfyUI's loader re-detects a ControlNet's config from its file (attention heads from the
    model family it recognises). A net whose heads it would read differently computes something
    else once loaded: refuse to make one. Real SD1.x/SDXL bases always pass."""
    sd = {FILE_PREFIX + k: v for k, v in control.state_dict().items()}
    detected = comfy.model_detection.model_config_from_unet(sd, FILE_PREFIX, True).unet_config
    ours = {k: unet_config.get(k, -1) for k in ("num_heads", "num_head_channels")}
    theirs = {k: detected.get(k, -1) for k in ours}
    if _heads(unet_config, ours) != _heads(unet_config, theirs):
        raise ControlNetError(f"ComfyUI's ControlNet loader would read a ControlNet of this model with attention heads {theirs}, "
                         f"the model has {ours}: the saved file would compute something else. Use a standard SD1.5/SDXL model.")


def _heads(config: dict, heads: dict) -> list[int]:
    """Heads of every level that has attention, and of the middle block (openaimodel's rule)."""
    mults = config["channel_mult"]
    nrb = config["num_res_blocks"]
    nrb = [nrb] * len(mults) if isinstance(nrb, int) else list(nrb)
    depth = config["transformer_depth"]
    depth = [depth] * sum(nrb) if isinstance(depth, int) else list(depth)

    def count(ch: int) -> int:
        return heads["num_heads"] if heads["num_head_channels"] == -1 else ch // heads["num_head_channels"]

    out, i = [], 0
    for level, mult in enumerate(mults):
        if any(depth[i:i + nrb[level]]):
            out.append(count(config["model_channels"] * mult))
        i += nrb[level]
    if (config.get("transformer_depth_middle") or 0) > 0:
        out.append(count(config["model_channels"] * mults[-1]))
    return out


def control_outputs(control: torch.nn.Module, x: torch.Tensor, hint: torch.Tensor, timesteps: torch.Tensor,
                    context: torch.Tensor, y: torch.Tensor | None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(zero-conv outputs in input-block order, middle output): core's ControlNet.forward."""
    out = control(x=x, hint=hint, timesteps=timesteps, context=context, y=y)
    return out["output"], out["middle"][0]
