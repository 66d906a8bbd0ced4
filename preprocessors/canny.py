"""Canny edge detection in torch, batched, thresholds on OpenCV's 0-255 scale.

Follows cv2.Canny (3x3 Sobel, L1 or L2 magnitude, non-maximum suppression in four
directions, hysteresis), so the thresholds from every tutorial (100/200) mean the same here.
"""
import math

import torch
import torch.nn.functional as F

from .image_ops import shift, to_gray

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_TAN_22_5 = math.tan(math.radians(22.5))
_TAN_67_5 = math.tan(math.radians(67.5))


def _sobel(gray: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    kx = _SOBEL_X.to(gray).view(1, 1, 3, 3)
    ky = kx.transpose(-1, -2)
    g = F.pad(gray, (1, 1, 1, 1), mode="replicate")
    return F.conv2d(g, kx), F.conv2d(g, ky)


def _non_max_suppression(mag: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    ax, ay = gx.abs(), gy.abs()
    horizontal = ay <= ax * _TAN_22_5          # gradient along x: compare left/right
    vertical = ay > ax * _TAN_67_5             # gradient along y: compare up/down
    same_sign = (gx * gy) > 0                  # 45 degrees: down-right / up-left diagonal
    keep = torch.zeros_like(mag, dtype=torch.bool)
    # As in OpenCV: strictly greater than one neighbour, greater or equal to the other.
    for mask, (dy, dx) in (
        (horizontal, (0, 1)),
        (vertical, (1, 0)),
        (~horizontal & ~vertical & same_sign, (1, 1)),
        (~horizontal & ~vertical & ~same_sign, (1, -1)),
    ):
        ok = (mag > shift(mag, -dy, -dx)) & (mag >= shift(mag, dy, dx))
        keep |= mask & ok
    return keep


def _hysteresis(strong: torch.Tensor, weak: torch.Tensor) -> torch.Tensor:
    edges = strong
    while True:
        for _ in range(16):  # check convergence every few steps to avoid a sync per step
            edges = weak & (F.max_pool2d(edges.float(), 3, 1, 1) > 0)
            edges = edges | strong
        grown = weak & (F.max_pool2d(edges.float(), 3, 1, 1) > 0) | strong
        if torch.equal(grown, edges):
            return edges
        edges = grown


@torch.no_grad()
def canny(image: torch.Tensor, low: float = 100.0, high: float = 200.0, l2_gradient: bool = False) -> torch.Tensor:
    """(B, C, H, W) in 0..1 -> (B, 1, H, W) with 1.0 on edges, 0.0 elsewhere."""
    if low < 0 or high < 0:
        raise ValueError("Canny thresholds must be >= 0")
    if low > high:
        low, high = high, low
    gray = to_gray(image.float()) * 255.0
    gx, gy = _sobel(gray)
    mag = torch.sqrt(gx * gx + gy * gy) if l2_gradient else gx.abs() + gy.abs()
    keep = _non_max_suppression(mag, gx, gy)
    weak = keep & (mag > low)
    strong = keep & (mag > high)
    return _hysteresis(strong, weak).to(image.dtype if image.is_floating_point() else torch.float32)
