"""Scores of result maps against guide maps, per image and on average, and the side-by-side
picture (guide | map of the result | difference)."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...preprocessors.image_ops import to_gray, to_rgb
from . import metrics

# the headline number of each family, and whether higher is better
PRIMARY = {"edges": ("f1", True), "depth": ("rmse", False), "normals": ("angle_deg", False),
           "segmentation": ("miou", True)}


@dataclass
class Measurement:
    family: str
    primary: str  # the headline metric's name
    higher_is_better: bool
    per_image: list[dict[str, float]]
    mean: dict[str, float]
    side_by_side: torch.Tensor  # (B, 3, H, 3W) 0..1

    def text(self) -> str:
        """One line per image and the mean, for the node's text output."""
        def fmt(d):
            return ", ".join(f"{k} {v:.4f}" for k, v in d.items())
        lines = [f"image {i}: {fmt(d)}" for i, d in enumerate(self.per_image)]
        return "\n".join(lines + [f"mean: {fmt(self.mean)}"])


def _fit(maps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if maps.shape[-2:] == (height, width):
        return maps.float()
    return F.interpolate(maps.float(), size=(height, width), mode="bilinear", align_corners=False).clamp(0, 1)


def measure(family: str, result: torch.Tensor, guide: torch.Tensor, tolerance: float = 2.0,
            edge_threshold: float = 0.5) -> Measurement:
    """result, guide: maps (B, C, H, W) in 0..1 (result maps are resized to the guides'
    size; a single guide serves every result). family: "edges", "depth", "normals" or
    "segmentation" (colour-coded label maps)."""
    if family not in PRIMARY:
        raise ValueError(f"unknown map family {family!r}; known: {', '.join(PRIMARY)}")
    if guide.shape[0] not in (1, result.shape[0]):
        raise ValueError(f"{result.shape[0]} generated images but {guide.shape[0]} guide images: give one guide or one per image")
    guide = guide.float().expand(result.shape[0], *guide.shape[1:])
    if family != "segmentation":
        result = _fit(result, *guide.shape[-2:])
    if family == "edges":
        rb, gb = metrics.binarize(result, edge_threshold), metrics.binarize(guide, edge_threshold)
        scores = metrics.edge_f1(rb, gb, tolerance)
        scores["ssim"] = metrics.ssim(result, guide)
        difference = (rb.float() - gb.float()).abs()
    elif family == "depth":
        scores = metrics.depth_errors(result, guide)
        difference = (metrics.align_scale_shift(result, guide) - to_gray(guide)).abs()
    elif family == "normals":
        scores = metrics.normal_errors(result, guide)
        difference = metrics.normal_angles(result, guide) / 180.0
    else:  # colour-coded label maps: nearest-neighbour resizing keeps their colours
        result = result if result.shape[-2:] == guide.shape[-2:] else F.interpolate(result, size=guide.shape[-2:], mode="nearest")
        rl, gl = metrics.labels_from_colours(result), metrics.labels_from_colours(guide)
        scores = {"miou": metrics.mean_iou(rl, gl), "pixel_accuracy": (rl == gl).float().flatten(1).mean(1)}
        difference = (rl != gl).float().unsqueeze(1)
    per_image = [{k: float(v[i]) for k, v in scores.items()} for i in range(result.shape[0])]
    mean = {k: float(v.mean()) for k, v in scores.items()}
    primary, higher = PRIMARY[family]
    picture = torch.cat([to_rgb(guide), to_rgb(result), to_rgb(difference.clamp(0, 1))], dim=-1)
    return Measurement(family, primary, higher, per_image, mean, picture)
