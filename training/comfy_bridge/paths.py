"""Folders and file names: where training writes in ComfyUI's folders, and which checkpoint or
VAE file a core loader made a model from (ss_sd_model_name / _hash, ss_vae_* metadata).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import comfy.sd
import folder_paths

if TYPE_CHECKING:
    from comfy.model_patcher import ModelPatcher


def default_output_dir() -> str:
    """ComfyUI's (first) loras folder, where LoraLoader finds the trained file."""
    return folder_paths.get_folder_paths("loras")[0]


def latent_cache_dir() -> str:
    """On-disk latent cache: under ComfyUI's output folder, outside every model folder (its
    .safetensors entries must not show up in a loader's list)."""
    return os.path.join(folder_paths.get_output_directory(), "lllite_kit", "latent_cache")


def model_source_name(patcher: ModelPatcher) -> str:
    """The checkpoint file a loader made this model from (ss_sd_model_name), or ""."""
    init = getattr(patcher, "cached_patcher_init", None)
    for arg in (init[1] if init else ()):
        if isinstance(arg, str) and arg.lower().endswith((".safetensors", ".ckpt", ".pt", ".sft", ".gguf")):
            return os.path.basename(arg)
    return ""


def model_file(patcher: ModelPatcher) -> str | None:
    """Full path of the checkpoint or diffusion-model file a core loader made this model from
    (its reload factory keeps it), or None (ss_sd_model_hash needs the file)."""
    init = getattr(patcher, "cached_patcher_init", None)
    if init and init[0] in (comfy.sd.load_checkpoint_guess_config, comfy.sd.load_diffusion_model):
        return init[1][0]
    return None


def vae_file(vae) -> str | None:
    """Full path of the separate VAE file Load VAE read, or None, also for a checkpoint's own
    VAE (sd-scripts writes ss_vae_* only for a separate --vae)."""
    init = getattr(getattr(vae, "patcher", None), "cached_patcher_init", None)
    return init[1][0] if init and init[0] is comfy.sd.load_vae_patcher else None
