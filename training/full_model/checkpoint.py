"""The single-file checkpoint (U-Net + text encoders + VAE) in ComfyUI's checkpoint layout, made
by core's own state-dict helpers (what comfy.sd.save_checkpoint writes, so CheckpointLoaderSimple
reads it back), written atomically."""
import safetensors.torch
import torch

from ...files.atomic import write_atomic

ARCHITECTURE = {"sdxl": "stable-diffusion-xl-v1-base", "sd15": "stable-diffusion-v1", "sd2": "stable-diffusion-v2-512"}
V_ARCHITECTURE = {"sd2": "stable-diffusion-v2-768-v"}  # sd-scripts' model spec names v-prediction SD2 apart


def checkpoint_state_dict(patcher, clip, vae) -> dict[str, torch.Tensor]:
    """The keys core's save_checkpoint writes, from the weights as they are now (trained in place).
    Inference mode for the CLIP: core wraps each weight in a lazy Parameter, which an untrained
    encoder's inference tensors (loaded in a graph) only allow there."""
    with torch.inference_mode():
        clip_sd = clip.state_dict_for_saving() if clip is not None else None
        if clip_sd is not None:
            # a CLIP that has run gives lazy parameters on a fake device, which core's SDXL CLIP-G
            # conversion cannot concatenate (its q/k/v merge): their weights, on the CPU
            clip_sd = {k: v.to("cpu") if isinstance(v, torch.Tensor) else v for k, v in clip_sd.items()}
    return patcher.state_dict_for_saving(clip_sd, vae.get_sd() if vae is not None else None)


def save_checkpoint_file(path: str, sd: dict[str, torch.Tensor], dtype: torch.dtype, metadata: dict[str, str]) -> None:
    """Floating tensors in dtype (sd-scripts' save_precision); others (v_pred marker, ids) as they are.
    .to("cpu") first: core's lazy parameters (weights ComfyUI casts per use) give their weight there."""
    tensors = {}
    for k, v in sd.items():
        t = v.to("cpu").detach()
        tensors[k] = (t.to(dtype) if t.is_floating_point() else t).contiguous()
    write_atomic(path, safetensors.torch.save(tensors, metadata), "checkpoint")
