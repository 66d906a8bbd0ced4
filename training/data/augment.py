"""Pixel augmentations. flip_aug mirrors an image and its guide together (the loader applies
`hflip` to both with one decision); color_aug touches the image only, since a guide is a
structural map whose colours carry meaning."""
import math
import random

import torch

# sd-scripts: with probability 0.33, half the time a hue shift of up to 8 OpenCV hue units
# (16 degrees), otherwise a gamma in [0.95, 1.05].
_COLOR_AUG_P = 0.33
_MAX_HUE_DEGREES = 16.0
_GAMMA_RANGE = (0.95, 1.05)


def hflip(image: torch.Tensor) -> torch.Tensor:
    return image.flip(-1)


def color_augment(image: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """(3, H, W) in [0, 1] -> same, hue-rotated or gamma-adjusted (or unchanged)."""
    if rng.random() > _COLOR_AUG_P:
        return image
    if rng.random() > 0.5:
        return rotate_hue(image, rng.uniform(-_MAX_HUE_DEGREES, _MAX_HUE_DEGREES))
    return image.clamp(0, 1).pow(rng.uniform(*_GAMMA_RANGE))


def rotate_hue(image: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotation of RGB about the grey axis: a hue shift that keeps greys grey."""
    a = math.radians(degrees)
    c, s, k = math.cos(a), math.sin(a), 1.0 / 3.0
    r = math.sqrt(k)
    m = torch.tensor([
        [c + (1 - c) * k, k * (1 - c) - r * s, k * (1 - c) + r * s],
        [k * (1 - c) + r * s, c + k * (1 - c), k * (1 - c) - r * s],
        [k * (1 - c) - r * s, k * (1 - c) + r * s, c + k * (1 - c)],
    ], dtype=image.dtype)
    return torch.einsum("ij,jhw->ihw", m, image).clamp_(0, 1)
