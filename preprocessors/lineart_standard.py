"""Standard lineart (classical, no weights): how much darker a pixel is than its blurred
surroundings, normalised by the median line strength. Same recipe as the "standard
lineart" preprocessor users know (Gaussian sigma 6 on the float picture, so the kernel
reaches 4 sigma as OpenCV's does; intensity threshold 8 on 0-255; numpy's median)."""
import torch

from .image_ops import gaussian_blur, to_rgb

_MIN_NORMALISER = 16.0  # on 0-255: keeps faint noise from being stretched into lines


def _median(values: torch.Tensor) -> float:
    """numpy's median: the mean of the two middle values of an even count; 0 when empty."""
    n = values.numel()
    if n == 0:
        return 0.0
    lower = values.kthvalue((n + 1) // 2).values
    upper = values.kthvalue(n // 2 + 1).values
    return float((lower + upper) / 2)


@torch.no_grad()
def lineart_standard(image: torch.Tensor, sigma: float = 6.0, intensity_threshold: float = 8.0) -> torch.Tensor:
    """(B, C, H, W) in 0..1 -> (B, 1, H, W) white lines on black, 0..1."""
    x = to_rgb(image.float()) * 255.0
    darker = (gaussian_blur(x, sigma, truncate=4.0) - x).amin(dim=1, keepdim=True).clamp(0, 255)
    scale = [max(_MIN_NORMALISER, _median(d[d > intensity_threshold])) for d in darker]
    scale = torch.tensor(scale, dtype=darker.dtype, device=darker.device).view(-1, 1, 1, 1)
    return (darker / scale * 127.0).clamp(0, 255) / 255.0
