"""Binary guide: white where the grey level is above a threshold (0-255 scale), with
Otsu's threshold chosen per image when the threshold is 0."""
import cv2
import numpy as np
import torch

from . import image_ops
from .image_ops import LUMA, to_gray, to_rgb


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
    """(B, C, H, W) in 0..1 -> (B, 1, H, W) 0/1; threshold 0 (or 255) means Otsu per image.
    OpenCV runs it on CPU, torch elsewhere; both compare 8-bit grey levels (a pixel whose
    luma sits on a rounding boundary may round the other way: float error)."""
    otsu = threshold in (0, 255)
    if image_ops.use_opencv(image):
        return _threshold_opencv(to_rgb(image.float()), threshold, otsu)
    # OpenCV compares the 8-bit image: round first so thresholds mean the same grey levels
    gray = (to_gray(image.float()) * 255.0).round().clamp(0, 255)
    if otsu:
        t = otsu_levels(gray).view(-1, 1, 1, 1)
    else:
        t = torch.full((gray.shape[0], 1, 1, 1), float(threshold), device=gray.device)
    return (gray > t).float()


def _gray_u8(rgb: torch.Tensor) -> np.ndarray:
    """(3, H, W) float 0..1 -> (H, W) uint8 luma, with OpenCV's SIMD arithmetic on the
    channel planes (no interleaved copy of the picture)."""
    r, g, b = (plane.contiguous().numpy() for plane in rgb)
    w = [255.0 * c for c in LUMA]
    return cv2.convertScaleAbs(cv2.addWeighted(cv2.addWeighted(r, w[0], g, w[1], 0), 1.0, b, w[2], 0))


def _threshold_opencv(rgb: torch.Tensor, threshold: int, otsu: bool) -> torch.Tensor:
    mode = cv2.THRESH_BINARY + (cv2.THRESH_OTSU if otsu else 0)
    maps = [cv2.threshold(_gray_u8(img), 0 if otsu else threshold, 1, mode)[1] for img in rgb]
    return torch.from_numpy(np.stack(maps)).unsqueeze(1).float()
