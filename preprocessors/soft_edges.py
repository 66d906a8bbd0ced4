"""Finishing steps shared by the soft-edge detectors (HED, PiDiNet), as ControlNet 1.1
defines them: "safe" quantisation and the fake-scribble conversion."""
import torch

from .image_ops import gaussian_blur, shift

_SAFE_STEPS = 2
_SCRIBBLE_LEVEL = 127 / 255   # non-maximum suppression keeps ridges above this
_SCRIBBLE_SIGMA = 3.0
_SCRIBBLE_GROW = 4.5 / 255    # after re-blurring, everything above 4 (uint8, rounded) becomes a stroke
_DIRECTIONS = ((0, 1), (1, 0), (1, 1), (1, -1))  # horizontal, vertical and both diagonals


def safe_step(edges: torch.Tensor, steps: int = _SAFE_STEPS) -> torch.Tensor:
    """Quantise to a few levels so faint texture does not read as edges."""
    return (torch.floor(edges * (steps + 1)) / steps).clamp(0, 1)


def thin_ridges(edges: torch.Tensor, level: float, sigma: float) -> torch.Tensor:
    """Blur, then keep pixels that are a maximum along at least one of four directions
    and above `level`: a one-pixel skeleton of soft edges (B, 1, H, W) -> 0/1. The blur
    reaches 4 sigma, as the reference's (OpenCV on a float image) does."""
    x = gaussian_blur(edges, sigma, truncate=4.0)
    ridge = torch.zeros_like(x, dtype=torch.bool)
    for dy, dx in _DIRECTIONS:
        line_max = torch.maximum(torch.maximum(shift(x, dy, dx, -float("inf")), shift(x, -dy, -dx, -float("inf"))), x)
        ridge |= line_max == x
    return (ridge & (x > level)).to(edges.dtype)


def fake_scribble(edges: torch.Tensor) -> torch.Tensor:
    """Soft edges -> bold binary strokes, like a hand scribble of the picture."""
    strokes = thin_ridges(edges, _SCRIBBLE_LEVEL, _SCRIBBLE_SIGMA)
    return (gaussian_blur(strokes, _SCRIBBLE_SIGMA) > _SCRIBBLE_GROW).to(edges.dtype)


def finish(edges: torch.Tensor, safe: bool, scribble: bool) -> torch.Tensor:
    if safe:
        edges = safe_step(edges)
    return fake_scribble(edges) if scribble else edges
