"""ControlNet files: lllyasviel's layout (`control_model.` + core's cldm key names), as his
control_sd15_*.pth converted to safetensors, or sd-scripts' SDXL layout (layouts.py). ComfyUI's
load_controlnet reads the first for any SD-family config (its pth branch), A1111's
sd-webui-controlnet strips the prefix and reads SD1.5 and SDXL (label_emb) alike,
Advanced-ControlNet loads through core. Bare keys (no prefix) and diffusers-layout files
are read too, to start training from a file users have."""
import safetensors.torch
import torch

from ...files.atomic import write_atomic
from .network import FILE_PREFIX, ControlNetError

DECODER_PREFIXES = ("output_blocks.", "out.")  # what sd_locked=False trains


def save_controlnet(path: str, control: torch.nn.Module, dtype: torch.dtype, metadata: dict[str, str],
                    names: dict[str, str] | None = None) -> None:
    save_tensors(path, control.state_dict(), dtype, metadata, names)


def save_tensors(path: str, sd: dict[str, torch.Tensor], dtype: torch.dtype, metadata: dict[str, str],
                 names: dict[str, str] | None = None) -> None:
    """cldm-named tensors -> a ControlNet file, written atomically. names: cldm key -> file key
    (layouts.file_names); default lllyasviel's (prefixed)."""
    tensors = {(names[k] if names else FILE_PREFIX + k): v.detach().to("cpu", dtype).contiguous() for k, v in sd.items()}
    write_atomic(path, lambda tmp: safetensors.torch.save_file(tensors, str(tmp), metadata=metadata), "ControlNet")


def read_controlnet(path: str) -> dict[str, torch.Tensor]:
    """A ControlNet file's tensors under core's cldm names (no prefix)."""
    sd = safetensors.torch.load_file(path)
    if any(k.startswith(FILE_PREFIX) for k in sd):
        return {k[len(FILE_PREFIX):]: v for k, v in sd.items() if k.startswith(FILE_PREFIX)}
    if "zero_convs.0.0.weight" in sd:
        return sd
    if "controlnet_cond_embedding.conv_in.weight" in sd:
        return _from_diffusers(sd)
    raise ControlNetError(f"{path} is not a ControlNet file (no control_model.*, zero_convs.* or diffusers controlnet keys)")


def _from_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers -> cldm names, through core's own conversion (load_controlnet_state_dict)."""
    import comfy.controlnet

    control = comfy.controlnet.load_controlnet_state_dict(dict(sd))
    return {k: v.detach().float() for k, v in control.control_model.state_dict().items()}


def save_unet(path: str, diffusion_model: torch.nn.Module, dtype: torch.dtype, metadata: dict[str, str]) -> None:
    """The whole U-Net under core's diffusion-model names (what UNETLoader reads from
    models/diffusion_models): the sd_locked=False result, a trained decoder on the frozen encoder."""
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in diffusion_model.state_dict().items()}
    write_atomic(path, lambda tmp: safetensors.torch.save_file(tensors, str(tmp), metadata=metadata), "U-Net")
