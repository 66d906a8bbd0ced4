"""Small builders shared by the tests/test_training_data_*.py files."""
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
