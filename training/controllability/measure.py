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
# other pictures' guides each picture is scored against for the chance level (the cost grows with it)
CHANCE_GUIDES = 7


@dataclass
class Measurement:
    family: str
    primary: str  # the headline metric's name
    higher_is_better: bool
    per_image: list[dict[str, float]]
    mean: dict[str, float]
    side_by_side: torch.Tensor  # (B, 3, H, 3W) 0..1
    # the headline metric of each picture against other pictures' guides, averaged: what a
    # picture that ignores its guide scores (None with a single guide)
    chance: float | None = None

    def text(self) -> str:
        """One line per image, the mean and the chance level, for the node's text output."""
        def fmt(d):
            return ", ".join(f"{k} {v:.4f}" for k, v in d.items())
        lines = [f"image {i}: {fmt(d)}" for i, d in enumerate(self.per_image)] + [f"mean: {fmt(self.mean)}"]
        if self.chance is not None:
            lines.append(f"chance (each picture against the other pictures' guides): {self.primary} {self.chance:.4f}")
        return "\n".join(lines)


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
    distinct_guides = guide.shape[0] > 1
    guide = guide.float().expand(result.shape[0], *guide.shape[1:])
    if family != "segmentation":
        result = _fit(result, *guide.shape[-2:])
    elif result.shape[-2:] != guide.shape[-2:]:  # colour-coded label maps: nearest neighbour keeps their colours
        result = F.interpolate(result, size=guide.shape[-2:], mode="nearest")
    scores, difference = _scores(family, result, guide, tolerance, edge_threshold)
    per_image = [{k: float(v[i]) for k, v in scores.items()} for i in range(result.shape[0])]
    mean = {k: float(v.mean()) for k, v in scores.items()}
    primary, higher = PRIMARY[family]
    chance = None
    if distinct_guides:  # guides rolled by 1, 2, ...: every picture against others' guides, none against its own
        shifts = range(1, min(result.shape[0], CHANCE_GUIDES + 1))
        chance = sum(float(_scores(family, result, guide.roll(k, 0), tolerance, edge_threshold)[0][primary].mean())
                     for k in shifts) / len(shifts)
    picture = torch.cat([to_rgb(guide), to_rgb(result), to_rgb(difference.clamp(0, 1))], dim=-1)
    return Measurement(family, primary, higher, per_image, mean, picture, chance)


def _scores(family: str, result: torch.Tensor, guide: torch.Tensor, tolerance: float,
            edge_threshold: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-image scores of maps of one size, and the difference map."""
    if family == "edges":
        rb, gb = metrics.binarize(result, edge_threshold), metrics.binarize(guide, edge_threshold)
        scores = metrics.edge_f1(rb, gb, tolerance)
        scores["ssim"] = metrics.ssim(result, guide)
        return scores, (rb.float() - gb.float()).abs()
    if family == "depth":
        return metrics.depth_errors(result, guide), (metrics.align_scale_shift(result, guide) - to_gray(guide)).abs()
    if family == "normals":
        return metrics.normal_errors(result, guide), metrics.normal_angles(result, guide) / 180.0
    rl, gl = metrics.labels_from_colours(result), metrics.labels_from_colours(guide)
    scores = {"miou": metrics.mean_iou(rl, gl), "pixel_accuracy": (rl == gl).float().flatten(1).mean(1)}
    return scores, (rl != gl).float().unsqueeze(1)
