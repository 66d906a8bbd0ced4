"""Standard lineart (classical, no weights): how much darker a pixel is than its blurred
surroundings, normalised by the median line strength. Same recipe as the "standard
lineart" preprocessor users know (Gaussian sigma 6, intensity threshold 8 on 0-255)."""
import torch

from .image_ops import gaussian_blur, to_rgb

_MIN_NORMALISER = 16.0  # on 0-255: keeps faint noise from being stretched into lines


@torch.no_grad()
def lineart_standard(image: torch.Tensor, sigma: float = 6.0, intensity_threshold: float = 8.0) -> torch.Tensor:
    """(B, C, H, W) in 0..1 -> (B, 1, H, W) white lines on black, 0..1."""
    x = to_rgb(image.float()) * 255.0
    darker = (gaussian_blur(x, sigma) - x).amin(dim=1, keepdim=True).clamp(0, 255)
    strong = torch.where(darker > intensity_threshold, darker, torch.full_like(darker, float("nan")))
    median = strong.flatten(1).nanmedian(dim=1).values.nan_to_num(0.0)
    scale = median.clamp(min=_MIN_NORMALISER).view(-1, 1, 1, 1)
    return (darker / scale * 127.0).clamp(0, 255) / 255.0
