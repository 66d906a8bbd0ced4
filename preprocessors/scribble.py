"""Scribble guide by difference of Gaussians (the "XDoG scribble" preprocessor): a pixel
is a stroke where a wide blur is brighter than a narrow one by more than threshold/2
grey levels, i.e. on the dark side of every edge. Both blurs reach 4 sigma, as OpenCV's do
on the float picture the reference blurs."""
import torch

from .image_ops import gaussian_blur, to_rgb

_FINE_SIGMA, _COARSE_SIGMA = 0.5, 5.0


@torch.no_grad()
def scribble_xdog(image: torch.Tensor, threshold: float = 32.0) -> torch.Tensor:
    """(B, C, H, W) in 0..1 -> (B, 1, H, W) with 1.0 on strokes; threshold on the 0-255 scale."""
    x = to_rgb(image.float()) * 255.0
    dog = (gaussian_blur(x, _COARSE_SIGMA, truncate=4.0) - gaussian_blur(x, _FINE_SIGMA, truncate=4.0)).amin(dim=1, keepdim=True)
    return (2.0 * dog.clamp(0, 255) > threshold).float()
