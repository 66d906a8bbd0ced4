"""Small builders shared by the training tests (data, graphs)."""
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def write_image(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """A random RGB image file (format from the extension)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def ring_picture(path, shift: int) -> None:
    """64 x 64 RGB for the training-graph tests: colour ramps (moved along x by `shift`) with a
    disc in the blue channel."""
    y, x = np.mgrid[0:64, 0:64]
    img = np.stack([(x * 4 + shift) % 256, (y * 4) % 256, ((x - 32) ** 2 + (y - 32) ** 2 < 300) * 255], -1)
    Image.fromarray(img.astype(np.uint8)).save(path)


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


class CountingEncoder:
    """Stands in for the VAE: 8x8 average pool + a 4th channel, counting images encoded."""

    def __init__(self):
        self.calls = 0
        self.images = 0

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        assert pixels.min() >= -1 and pixels.max() <= 1
        self.calls += 1
        self.images += pixels.shape[0]
        pooled = F.avg_pool2d(pixels, 8)
        return torch.cat([pooled, pooled.mean(1, keepdim=True)], 1)
