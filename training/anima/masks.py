"""Inpainting masks for Anima LLLite training, built as sd-scripts builds them for its Anima
LLLite trainer (anima_train_control_net_lllite.py -> library/mask_generator.random_mask), one
per sample at the guide's pixel size, every sample masked:

- "cloud" (40 %): fractional Brownian motion, 4 octaves of uniform noise on a grid 16, 8, 4, 2
  pixels apart, bicubically upsampled, amplitudes halving, thresholded at the quantile that
  masks a fraction drawn from U(0.1, 0.3); in a third of the cases united with a polygon or a
  shape mask (even odds);
- "polygon" (35 %): 1 or 2 polygons of 6 vertices at sorted uniform angles, each at a radius
  of R * U(0.6, 1), R drawn so the circle covers 10-60 % of the picture, centred uniformly
  (0.2 R from the border);
- "shape" (25 %): one rectangle or ellipse (even odds), each side drawn uniformly between
  sqrt(0.1) and sqrt(0.6) of the picture's side, placed uniformly.

Ours draws from the run's torch generator (sd-scripts uses Python's and NumPy's global
generators), so a run's masks repeat with its seed; bicubic upsampling is torch's rather than
OpenCV's (the same kernel family, edges handled slightly differently).
"""
import math

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

KINDS = (("cloud", 0.40), ("polygon", 0.35), ("shape", 0.25))
MIN_COVERAGE, MAX_COVERAGE = 0.1, 0.6
CLOUD_THRESHOLD = (0.1, 0.3)  # sd-scripts: 0.2 +- 0.1, clamped to [0.05, 0.4]
UNION_RATE = 0.33


def _u(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Uniform in [lo, hi], both included (Python's randint)."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


def _drawn(height: int, width: int, draw) -> torch.Tensor:
    img = Image.new("L", (width, height), 0)
    draw(ImageDraw.Draw(img))
    return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(height, width) > 127


def cloud_mask(height: int, width: int, g: torch.Generator, threshold: float, octaves: int = 4,
               persistence: float = 0.5, base_scale: float = 16.0) -> torch.Tensor:
    noise, amplitude, total, scale = torch.zeros(height, width), 1.0, 0.0, base_scale
    for _ in range(octaves):
        small = torch.rand(1, 1, max(2, int(height / scale)), max(2, int(width / scale)), generator=g)
        noise += amplitude * F.interpolate(small, size=(height, width), mode="bicubic", align_corners=False)[0, 0]
        total, amplitude, scale = total + amplitude, amplitude * persistence, scale * 2
    noise /= total
    return noise >= torch.quantile(noise.flatten(), 1.0 - threshold)


def polygon_mask(height: int, width: int, g: torch.Generator, polygons: int = 1, points: int = 6,
                 irregularity: float = 0.4) -> torch.Tensor:
    area = width * height
    min_r, max_r = math.sqrt(MIN_COVERAGE * area / math.pi), math.sqrt(MAX_COVERAGE * area / math.pi)
    shapes = []
    for _ in range(polygons):
        r = _u(g, min_r, max_r)
        cx, cy = _u(g, r * 0.2, width - r * 0.2), _u(g, r * 0.2, height - r * 0.2)
        angles = sorted(_u(g, 0, 2 * math.pi) for _ in range(points))
        radii = [r * _u(g, 1.0 - irregularity, 1.0) for _ in angles]
        shapes.append([(cx + q * math.cos(a), cy + q * math.sin(a)) for a, q in zip(angles, radii)])
    return _drawn(height, width, lambda d: [d.polygon(s, fill=255) for s in shapes])


def shape_mask(height: int, width: int, g: torch.Generator) -> torch.Tensor:
    w = _randint(g, int(width * MIN_COVERAGE ** 0.5), int(width * MAX_COVERAGE ** 0.5))
    h = _randint(g, int(height * MIN_COVERAGE ** 0.5), int(height * MAX_COVERAGE ** 0.5))
    x, y = _randint(g, 0, width - w), _randint(g, 0, height - h)
    box = [x, y, x + w, y + h]
    ellipse = _u(g) < 0.5
    return _drawn(height, width, lambda d: d.ellipse(box, fill=255) if ellipse else d.rectangle(box, fill=255))


def random_mask(height: int, width: int, g: torch.Generator) -> tuple[torch.Tensor, str]:
    """(one (height, width) bool mask, its kind: cloud / cloud+polygon / cloud+shape / polygon / shape)."""
    pick, kind = _u(g), KINDS[-1][0]
    for name, weight in KINDS:
        if pick < weight:
            kind = name
            break
        pick -= weight
    if kind == "polygon":
        return polygon_mask(height, width, g, polygons=_randint(g, 1, 2)), kind
    if kind == "shape":
        return shape_mask(height, width, g), kind
    mask = cloud_mask(height, width, g, _u(g, *CLOUD_THRESHOLD))
    if _u(g) < UNION_RATE:
        other = "polygon" if _u(g) < 0.5 else "shape"
        mask = mask | (polygon_mask(height, width, g) if other == "polygon" else shape_mask(height, width, g))
        kind = f"cloud+{other}"
    return mask, kind


def random_masks(n: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 1, height, width) in {0, 1}; 1 = the region to repaint."""
    return torch.stack([random_mask(height, width, generator)[0] for _ in range(n)])[:, None].float()
