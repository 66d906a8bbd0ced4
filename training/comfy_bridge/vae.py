"""The VAE for training: latent_encoder() (images in [-1, 1] -> the scaled latents the U-Net is
trained on) and vae_identity(), the key that ties cached latents to the VAE that made them.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from comfy.sd import VAE


def vae_identity(vae: VAE, latent_format) -> str:
    """A short id of the VAE's weights and the latent scaling, so cached latents are only
    reused with the VAE (and model family) that made them."""
    h = hashlib.sha256()
    h.update(f"{type(latent_format).__name__}:{latent_format.scale_factor}:{getattr(latent_format, 'shift_factor', 0)}".encode())
    for name, t in sorted(vae.first_stage_model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        flat = t.detach().reshape(-1)
        # a strided sample of every tensor: cheap on a 160 MB VAE, and any real change shows
        h.update(flat[:: max(1, flat.numel() // 4096)].float().cpu().numpy().tobytes())
    return h.hexdigest()[:32]


@contextmanager
def _vae_in_float32(vae: VAE):
    """The VAE's weights and compute in float32 for a while (sd-scripts' no_half_vae); half
    weights widen and narrow back exactly, so the shared VAE is unchanged afterwards."""
    dtype = vae.vae_dtype
    if dtype == torch.float32:
        yield
        return
    vae.first_stage_model.to(torch.float32)
    vae.vae_dtype = torch.float32
    try:
        yield
    finally:
        vae.first_stage_model.to(dtype)
        vae.vae_dtype = dtype


def latent_encoder(vae: VAE, latent_format, no_half_vae: bool = False):
    """images (B, 3, H, W) in [-1, 1] -> latents multiplied by the model's scale factor (what
    the U-Net is trained on), on the CPU. no_half_vae: encoded in float32 whatever dtype
    ComfyUI picked for the VAE (a half-precision VAE can overflow to NaN on some images)."""

    def encode(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), (_vae_in_float32(vae) if no_half_vae else nullcontext()):
            pixels = ((images.float() + 1.0) / 2.0).clamp(0, 1).movedim(1, -1)
            latents = vae.encode(pixels)
            return latent_format.process_in(latents).float().cpu()

    return encode
