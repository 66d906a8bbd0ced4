"""Real checkpoint files for the command-line tests: ComfyUI detects SD1.5 from a file by its
widths (320 channels, 768 context), not its depth, so one U-Net level with one attention block
keeps the U-Net small. SD1.5's text encoder is always the full CLIP-L (ComfyUI has no smaller
layout for it), so a full checkpoint is ~300 MB."""
import torch

import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.taesd.taesd

DETECTABLE_SD15_UNET = {
    "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4, "use_spatial_transformer": True,
    "legacy": False, "model_channels": 320, "adm_in_channels": None, "num_res_blocks": [1], "channel_mult": [1],
    "transformer_depth": [1], "transformer_depth_middle": 1, "transformer_depth_output": [1, 1],
    "use_linear_in_transformer": False, "context_dim": 768, "use_temporal_attention": False, "use_temporal_resblock": False,
}


def detectable_sd15(tiny, seed: int = 0, dtype=torch.float32):
    """A seeded SD1.5 model (comfy.model_base) with the detectable small U-Net."""
    model = comfy.supported_models.SD15(dict(DETECTABLE_SD15_UNET, dtype=dtype)).get_model({})
    tiny.fill_seeded(model.diffusion_model, seed)
    model.diffusion_model.to(dtype)
    return model


def taesd(tiny, seed):
    """A TAESD VAE (ComfyUI reads it from a plain state dict, in a checkpoint or its own file)."""
    vae = comfy.taesd.taesd.TAESD(latent_channels=4)
    tiny.fill_seeded(vae, seed)
    return vae


def write_checkpoint(tiny, path):
    """An SD1.5 checkpoint in the layout ComfyUI's CheckpointLoaderSimple reads, written by
    ComfyUI's own save_checkpoint: U-Net, CLIP-L and VAE, fp16."""
    model = detectable_sd15(tiny, 0, torch.float16)
    cpu = torch.device("cpu")
    clip = comfy.sd.CLIP(comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel),
                         model_options={"dtype": torch.float16})
    tiny.fill_seeded(clip.cond_stage_model, 1)
    vae = comfy.sd.VAE(sd=taesd(tiny, 2).state_dict())
    comfy.sd.save_checkpoint(str(path), comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu), clip, vae)
