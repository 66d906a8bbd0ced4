"""Binary guide: white where the grey level is above a threshold (0-255 scale), with
Otsu's threshold chosen per image when the threshold is 0."""
import torch

from .image_ops import to_gray


def otsu_levels(gray255: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) grey levels 0..255 -> (B,) Otsu thresholds (class 0 = levels <= t),
    one 256-bin histogram per image, all images at once."""
    b = gray255.shape[0]
    levels = gray255.round().clamp(0, 255).long().flatten(1)
    offsets = torch.arange(b, device=levels.device).view(-1, 1) * 256
    hist = torch.bincount((levels + offsets).flatten(), minlength=b * 256).view(b, 256).double()
    p = hist / hist.sum(dim=1, keepdim=True)
    bins = torch.arange(256, dtype=torch.float64, device=levels.device)
    w0 = p.cumsum(1)
    mu = (p * bins).cumsum(1)
    mu_total = mu[:, -1:]
    between = (mu_total * w0 - mu) ** 2 / (w0 * (1 - w0)).clamp(min=1e-12)
    between = torch.where((w0 > 0) & (w0 < 1), between, torch.zeros_like(between))
    return between.argmax(dim=1).to(gray255.dtype)


@torch.no_grad()
def binary_threshold(image: torch.Tensor, threshold: int = 0) -> torch.Tensor:
    """(B, C, H, W) in 0..1 -> (B, 1, H, W) 0/1; threshold 0 (or 255) means Otsu per image."""
    gray = to_gray(image.float()) * 255.0
    if threshold in (0, 255):
        t = otsu_levels(gray).view(-1, 1, 1, 1)
    else:
        t = torch.full((gray.shape[0], 1, 1, 1), float(threshold), device=gray.device)
    # OpenCV compares the 8-bit image: round first so thresholds mean the same grey levels
    return (gray.round() > t).float()
