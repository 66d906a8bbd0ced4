"""The two ControlNet file layouts the trainer writes, and which one a run uses.

- "lllyasviel": `control_model.` + core's cldm names, as his control_sd15_*.pth converted to
  safetensors. Core's loader detects any SD-family config from it (its "pth" branch).
- "sd-scripts": what sd-scripts' sdxl_train_control_net.py saves (SdxlControlNet.state_dict() in
  library/sdxl_original_control_net.py): the U-Net part under diffusers names (conv_in,
  time_embedding, add_embedding, down_blocks, mid_block), the ControlNet's own layers as
  controlnet_cond_embedding.{conv_in, blocks.0-5, conv_out}, controlnet_down_blocks.N and
  controlnet_mid_block: diffusers' ControlNetModel names. Core reads it through its diffusers
  branch, which only knows the architectures in comfy.model_detection's list (real SDXL, SSD-1B,
  Vega ...), so this layout is offered only where that detection gives back this very network.

"auto": sd-scripts' layout for SDXL when core reads it back, else lllyasviel's.
"""
import comfy.cldm.cldm
import comfy.model_detection
import comfy.ops
import comfy.utils
import torch

from .network import FILE_PREFIX, ControlNetError, _heads, controlnet_config

AUTO, LLLYASVIEL, SD_SCRIPTS = "auto", "lllyasviel", "sd-scripts"
LAYOUTS = (AUTO, LLLYASVIEL, SD_SCRIPTS)
HINT_CONVS = 8  # input_hint_block.0, 2, ..., 14: conv_in, blocks.0-5, conv_out


def file_names(layout: str, keys, unet_config: dict) -> dict[str, str]:
    """cldm key -> key in a file of `layout`."""
    if layout == LLLYASVIEL:
        return {k: FILE_PREFIX + k for k in keys}
    names = {cldm: d for d, cldm in comfy.utils.unet_to_diffusers(unet_config).items()
             if not d.startswith("class_embedding.")}  # SDXL's label_emb is add_embedding (sd-scripts, diffusers)
    for i in range(HINT_CONVS):
        own = "conv_in" if i == 0 else "conv_out" if i == HINT_CONVS - 1 else f"blocks.{i - 1}"
        for p in ("weight", "bias"):
            names[f"input_hint_block.{2 * i}.{p}"] = f"controlnet_cond_embedding.{own}.{p}"
    for p in ("weight", "bias"):
        names[f"middle_block_out.0.{p}"] = f"controlnet_mid_block.{p}"
    for k in keys:
        if k.startswith("zero_convs."):
            _, i, _, p = k.split(".")
            names[k] = f"controlnet_down_blocks.{i}.{p}"
    missing = [k for k in keys if k not in names]
    if missing:
        raise ControlNetError(f"no sd-scripts name for ControlNet tensors {missing[:3]} ({len(missing)} in all)")
    return {k: names[k] for k in keys}


def core_reads_sd_scripts(control: torch.nn.Module, unet_config: dict) -> bool:
    """Whether core's loader, given this network in sd-scripts' layout, builds the same network:
    its diffusers detection finds a config whose ControlNet has our tensors, shapes and heads."""
    ours = control.state_dict()
    names = file_names(SD_SCRIPTS, ours, unet_config)
    detected = comfy.model_detection.unet_config_from_diffusers_unet({names[k]: v for k, v in ours.items()})
    if detected is None:
        return False
    with torch.device("meta"):
        theirs = comfy.cldm.cldm.ControlNet(**controlnet_config(detected), operations=comfy.ops.disable_weight_init).state_dict()
    return ({k: tuple(v.shape) for k, v in theirs.items()} == {k: tuple(v.shape) for k, v in ours.items()}
            and _head_counts(unet_config) == _head_counts(detected))


def _head_counts(config: dict) -> list[int]:
    return _heads(config, {k: config.get(k, -1) for k in ("num_heads", "num_head_channels")})


def resolve_layout(layout: str, family: str, control: torch.nn.Module, unet_config: dict) -> str:
    """The concrete layout of a run ("auto" decided); refuses sd-scripts' layout where core would
    not load the file back as this network."""
    if layout not in LAYOUTS:
        raise ControlNetError(f"file layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
    if layout == LLLYASVIEL:
        return layout
    readable = family == "sdxl" and core_reads_sd_scripts(control, unet_config)
    if layout == AUTO:
        return SD_SCRIPTS if readable else LLLYASVIEL
    if family != "sdxl":
        raise ControlNetError(f"sd-scripts' ControlNet layout is its SDXL trainer's; this is a {family} model: "
                              "use the lllyasviel layout")
    if not readable:
        raise ControlNetError("ComfyUI's ControlNet loader reads sd-scripts' (diffusers-named) layout only for the SDXL "
                              "architectures it knows; this model is not one of them, so the file would not load. "
                              "Use the lllyasviel layout (control_model.*), which core reads for any SDXL-family model.")
    return layout
