"""Canny edge detection in torch, batched, thresholds on OpenCV's 0-255 scale.

Follows cv2.Canny (3x3 Sobel, L1 or L2 magnitude, non-maximum suppression in four
directions, hysteresis), so the thresholds from every tutorial (100/200) mean the same here.
Only the gradient is computed for every pixel; suppression and hysteresis work on the
pixels above the low threshold (a few percent of a picture), as flat index lists.
"""
import math

import torch
import torch.nn.functional as F

from .image_ops import to_gray

_TAN_22_5 = math.tan(math.radians(22.5))
_TAN_67_5 = math.tan(math.radians(67.5))
_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def _sobel(gray: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """3x3 Sobel with replicated borders, as separable sums of shifted slices (a 1-channel
    convolution is slow on CPU)."""
    p = F.pad(gray, (1, 1, 1, 1), mode="replicate")
    rows = p[..., :-2, :] + 2 * p[..., 1:-1, :] + p[..., 2:, :]   # smoothed down the columns
    cols = p[..., :, :-2] + 2 * p[..., :, 1:-1] + p[..., :, 2:]   # smoothed along the rows
    return rows[..., 2:] - rows[..., :-2], cols[..., 2:, :] - cols[..., :-2, :]


def _at(values: torch.Tensor, pos: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, h: int, w: int):
    """values (flat, all images) at pos shifted by (dy, dx) pixels; 0 outside the image."""
    y, x = (pos // w) % h + dy, pos % w + dx
    inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
    return torch.where(inside, values[(pos + dy * w + dx).clamp(0, values.numel() - 1)], 0.0)


def _non_max_suppression(pos, mag, gx, gy, h: int, w: int) -> torch.Tensor:
    """Which candidate pixels are local maxima across their gradient direction."""
    m, ax, ay = mag[pos], gx[pos].abs(), gy[pos].abs()
    horizontal = ay <= ax * _TAN_22_5                      # gradient along x: compare left/right
    vertical = ay > ax * _TAN_67_5                         # gradient along y: compare up/down
    same_sign = gx[pos] * gy[pos] > 0                      # 45 degrees: down-right / up-left
    dy = torch.where(horizontal, 0, 1)
    dx = torch.where(horizontal, 1, torch.where(vertical, 0, torch.where(same_sign, 1, -1)))
    # As in OpenCV: strictly greater than one neighbour, greater or equal to the other.
    return (m > _at(mag, pos, -dy, -dx, h, w)) & (m >= _at(mag, pos, dy, dx, h, w))


def _hysteresis(pos: torch.Tensor, strong: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Which weak pixels (sorted flat positions `pos`) are 8-connected, through weak pixels,
    to a strong one, as OpenCV keeps them.

    Components are labelled with a Shiloach-Vishkin style union: every pixel hooks the
    root of its tree onto the smallest label among its neighbours, then trees are
    flattened by pointer jumping. That settles in a few dozen passes even for edges
    thousands of pixels long, where growing edges one pixel per pass would not."""
    n = pos.numel()
    ids = torch.arange(n, device=pos.device)
    y, x = (pos // w) % h, pos % w
    neighbours = []
    for dy, dx in _NEIGHBOURS:
        q = pos + dy * w + dx
        j = torch.searchsorted(pos, q).clamp(max=n - 1)
        linked = (pos[j] == q) & (y + dy >= 0) & (y + dy < h) & (x + dx >= 0) & (x + dx < w)
        neighbours.append(torch.where(linked, j, ids))  # no weak neighbour there: itself
    neighbours = torch.stack(neighbours)
    parent = ids
    while True:
        grand = parent[parent]
        smallest = grand[neighbours].amin(0)
        hooked = parent.scatter_reduce(0, parent, smallest, reduce="amin")  # hook roots
        hooked = torch.minimum(hooked, smallest)
        hooked = hooked[hooked[hooked]]                                     # flatten
        if torch.equal(hooked, parent):
            break
        parent = hooked
    rooted = torch.zeros(n, dtype=torch.bool, device=pos.device)
    rooted[parent[strong]] = True
    return rooted[parent]


@torch.no_grad()
def canny(image: torch.Tensor, low: float = 100.0, high: float = 200.0, l2_gradient: bool = False) -> torch.Tensor:
    """(B, C, H, W) in 0..1 -> (B, 1, H, W) with 1.0 on edges, 0.0 elsewhere."""
    if low < 0 or high < 0:
        raise ValueError("Canny thresholds must be >= 0")
    if low > high:
        low, high = high, low
    gray = to_gray(image.float()) * 255.0
    b, _, h, w = gray.shape
    gx, gy = _sobel(gray)
    mag = torch.sqrt(gx * gx + gy * gy) if l2_gradient else gx.abs() + gy.abs()
    mag, gx, gy = mag.flatten(), gx.flatten(), gy.flatten()
    pos = (mag > low).nonzero().squeeze(1)
    pos = pos[_non_max_suppression(pos, mag, gx, gy, h, w)]
    out = torch.zeros(b * h * w, dtype=image.dtype if image.is_floating_point() else torch.float32,
                      device=gray.device)
    if pos.numel():
        out[pos[_hysteresis(pos, mag[pos] > high, h, w)]] = 1.0
    return out.view(b, 1, h, w)
