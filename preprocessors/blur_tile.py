"""Guides for tile / blur control models: the picture with its fine detail removed, at the
picture's own size."""
import torch
import torch.nn.functional as F

from .image_ops import gaussian_blur, to_rgb


@torch.no_grad()
def tile_guide(image: torch.Tensor, pyramid_levels: int = 3) -> torch.Tensor:
    """Shrink by 2**levels (area average) and enlarge back (bicubic): what a tile model
    is trained to re-detail. (B, C, H, W) -> (B, 3, H, W)."""
    x = to_rgb(image.float())
    if pyramid_levels <= 0:
        return x
    h, w = x.shape[-2:]
    f = 2 ** pyramid_levels
    small = F.interpolate(x, size=(max(1, h // f), max(1, w // f)), mode="area")
    return F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)


@torch.no_grad()
def blur_guide(image: torch.Tensor, sigma: float = 5.0) -> torch.Tensor:
    """Gaussian blur of the picture (B, 3, H, W), for blur/"tile colour fix" models."""
    return gaussian_blur(to_rgb(image.float()), sigma).clamp(0, 1)
