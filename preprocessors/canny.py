"""Canny edge detection, batched, thresholds on OpenCV's 0-255 scale, computing exactly
what cv2.Canny(uint8 RGB, low, high) computes - the call A1111 and controlnet_aux make.

The picture is rounded to uint8 RGB first. On CPU, OpenCV itself runs per image (the
fastest there). On other devices the torch path below runs the whole batch: OpenCV's
algorithm in integer arithmetic (3x3 Sobel per channel with replicated borders, the
channel with the largest magnitude per pixel, non-maximum suppression with OpenCV's
fixed-point tangents and tie rules, hysteresis), so both give the same map.
Suppression and hysteresis work on the pixels above the low threshold (a few percent of
a picture), as flat index lists.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

from .image_ops import to_rgb

# OpenCV's fixed-point tangent of 22.5 degrees (CANNY_SHIFT = 15)
_SHIFT = 15
_TG22 = int(0.4142135623730950488016887242097 * (1 << _SHIFT) + 0.5)
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
    return torch.where(inside, values[(pos + dy * w + dx).clamp(0, values.numel() - 1)], 0)


def _non_max_suppression(pos, mag, gx, gy, h: int, w: int) -> torch.Tensor:
    """Which candidate pixels are local maxima across their gradient direction, decided as
    OpenCV decides (integer tangents; strictly greater than left/up and at least right/down,
    strictly greater than both diagonal neighbours)."""
    m, sx, sy = mag[pos], gx[pos].long(), gy[pos].long()
    ax, ay = sx.abs(), sy.abs() << _SHIFT
    tg22 = ax * _TG22
    horizontal = ay < tg22                                  # gradient along x: compare left/right
    vertical = ~horizontal & (ay > tg22 + (ax << (_SHIFT + 1)))
    diagonal = ~horizontal & ~vertical
    step = torch.where((sx ^ sy) < 0, -1, 1)                # same signs: up-left / down-right
    dy = torch.where(horizontal, 0, 1)
    dx = torch.where(horizontal, 1, torch.where(vertical, 0, step))
    before, after = _at(mag, pos, -dy, -dx, h, w), _at(mag, pos, dy, dx, h, w)
    return (m > before) & ((m > after) | (~diagonal & (m == after)))


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


def to_uint8_rgb(image: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) 0..1 -> (B, 3, H, W) uint8, rounded (a picture read from 8-bit files
    comes back exactly)."""
    return (to_rgb(image.float()) * 255.0).round_().clamp_(0, 255).to(torch.uint8)


def _thresholds(low: float, high: float, l2_gradient: bool) -> tuple[int, int]:
    """OpenCV's integer thresholds: squared for the L2 magnitude, then floored."""
    if low < 0 or high < 0:
        raise ValueError("Canny thresholds must be >= 0")
    low, high = min(low, high), max(low, high)
    if l2_gradient:
        low, high = min(32767.0, low) ** 2, min(32767.0, high) ** 2
    return math.floor(low), math.floor(high)


def canny_opencv(image: torch.Tensor, low: float, high: float, l2_gradient: bool) -> torch.Tensor:
    """cv2.Canny per image of a CPU batch (B, C, H, W) 0..1 -> (B, 1, H, W) 0/1 floats.
    OpenCV also does the rounding to uint8 (convertScaleAbs: the same round-half-even as
    to_uint8_rgb), on the channels-last layout ComfyUI's IMAGE already has."""
    import cv2

    pictures = to_rgb(image.float()).permute(0, 2, 3, 1).numpy()
    out = np.empty((image.shape[0], *image.shape[-2:]), np.float32)  # numpy: torch's copy is slower here
    for i, picture in enumerate(pictures):
        picture = np.ascontiguousarray(picture)
        if picture.min() < 0:  # convertScaleAbs would mirror negatives instead of clipping them
            picture = np.maximum(picture, 0)
        edges = cv2.Canny(cv2.convertScaleAbs(picture, alpha=255.0), low, high, L2gradient=l2_gradient)
        np.divide(edges, np.float32(255), out=out[i])
    return torch.from_numpy(out).unsqueeze(1)


@torch.no_grad()
def canny_torch(rgb: torch.Tensor, low: float, high: float, l2_gradient: bool) -> torch.Tensor:
    """OpenCV's Canny in torch over the batch: uint8 RGB (B, 3, H, W) -> (B, 1, H, W) 0/1."""
    low_i, high_i = _thresholds(low, high, l2_gradient)
    b, _, h, w = rgb.shape
    gx, gy = _sobel(rgb.float())                           # integers up to 1020: exact in float32
    mag = gx * gx + gy * gy if l2_gradient else gx.abs() + gy.abs()
    best = mag.argmax(1, keepdim=True)                     # first channel on ties, as OpenCV
    mag, gx, gy = (t.gather(1, best).flatten().long() for t in (mag, gx, gy))
    pos = (mag > low_i).nonzero().squeeze(1)
    pos = pos[_non_max_suppression(pos, mag, gx, gy, h, w)]
    out = torch.zeros(b * h * w, device=rgb.device)
    if pos.numel():
        out[pos[_hysteresis(pos, mag[pos] > high_i, h, w)]] = 1.0
    return out.view(b, 1, h, w)


def canny(image: torch.Tensor, low: float = 100.0, high: float = 200.0, l2_gradient: bool = False) -> torch.Tensor:
    """(B, C, H, W) in 0..1 -> (B, 1, H, W) with 1.0 on edges, 0.0 elsewhere, in the
    image's float dtype."""
    _thresholds(low, high, l2_gradient)
    if image.device.type == "cpu":
        edges = canny_opencv(image, low, high, l2_gradient)
    else:
        edges = canny_torch(to_uint8_rgb(image), low, high, l2_gradient)
    return edges.to(dtype=image.dtype if image.is_floating_point() else torch.float32)
