"""Aspect-ratio bucketing as sd-scripts does it.

Buckets are (width, height) pairs whose area does not exceed the target resolution's area,
sides stepped by `bucket_reso_steps` between `min_bucket_reso` and `max_bucket_reso`. An
image goes to the bucket closest in aspect ratio, is resized so it covers the bucket and is
center-cropped. With `bucket_no_upscale` the bucket comes from the image's own size (scaled
down only if its area is too large, then cut to a multiple of the step). Without bucketing
every image goes to the one resolution bucket.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import DatasetConfig


@dataclass(frozen=True)
class Placement:
    """Where an image lands. bucket/resized are (width, height); crop is (left, top) of the
    bucket-sized window in the resized image."""

    bucket: tuple[int, int]
    resized: tuple[int, int]
    crop: tuple[int, int]


def cover(size: tuple[int, int], bucket: tuple[int, int]) -> Placement:
    """An image of (width, height) resized to cover `bucket` (the relatively shorter side
    matched, aspect kept) and center-cropped to it."""
    w, h = size
    scale = bucket[1] / h if w / h > bucket[0] / bucket[1] else bucket[0] / w
    resized = (int(w * scale + 0.5), int(h * scale + 0.5))
    return Placement(bucket=bucket, resized=resized, crop=((resized[0] - bucket[0]) // 2, (resized[1] - bucket[1]) // 2))


def make_bucket_resolutions(max_reso: tuple[int, int], min_size: int, max_size: int, steps: int) -> list[tuple[int, int]]:
    """sd-scripts' predefined buckets: the largest square plus, for every width from
    min_size to max_size, the tallest stepped height within the area (and its transpose)."""
    max_area = max_reso[0] * max_reso[1]
    side = int(math.sqrt(max_area) // steps) * steps
    resos = {(side, side)}
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // steps) * steps)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += steps
    return sorted(resos)


class Bucketer:
    """Places images for one dataset's bucket options."""

    def __init__(self, dataset: DatasetConfig):
        self.no_upscale = dataset.enable_bucket and dataset.bucket_no_upscale
        self.steps = dataset.bucket_reso_steps
        self.max_area = dataset.resolution[0] * dataset.resolution[1]
        if not dataset.enable_bucket:
            self.resolutions = [tuple(dataset.resolution)]
        elif self.no_upscale:
            self.resolutions = []
        else:
            self.resolutions = make_bucket_resolutions(dataset.resolution, dataset.min_bucket_reso, dataset.max_bucket_reso, dataset.bucket_reso_steps)

    def place(self, size: tuple[int, int]) -> Placement:
        """Placement for an image of (width, height); a bucket side is 0 when the image is
        smaller than one step and upscaling is off (the caller reports those files)."""
        w, h = size
        if not self.no_upscale:
            return cover(size, min(self.resolutions, key=lambda r: abs(r[0] / r[1] - w / h)))
        resized = self._no_upscale_size(w, h) if w * h > self.max_area else (w, h)
        bucket = (resized[0] - resized[0] % self.steps, resized[1] - resized[1] % self.steps)
        return Placement(bucket=bucket, resized=resized, crop=((resized[0] - bucket[0]) // 2, (resized[1] - bucket[1]) // 2))

    def _no_upscale_size(self, w: int, h: int) -> tuple[int, int]:
        """Shrink to the target area keeping the aspect; round whichever side keeps the
        aspect closer to a step multiple (sd-scripts' rule)."""
        aspect = w / h
        rw = math.sqrt(self.max_area * aspect)
        rh = self.max_area / rw
        bw = self._round(rw)
        ar_w = bw / self._round(bw / aspect)
        bh = self._round(rh)
        ar_h = self._round(bh * aspect) / bh
        if abs(ar_w - aspect) < abs(ar_h - aspect):
            return bw, int(bw / aspect + 0.5)
        return int(bh * aspect + 0.5), bh

    def _round(self, x: float) -> int:
        x = int(x + 0.5)
        return max(x - x % self.steps, self.steps)


def resize_and_crop(image: torch.Tensor, placement: Placement, crop: tuple[int, int] | None = None) -> torch.Tensor:
    """(C, H, W) image -> (C, bucket_h, bucket_w): antialiased bicubic resize to the placement's
    size, then the window at `crop` (left, top), the placement's center crop by default."""
    rw, rh = placement.resized
    if (image.shape[-1], image.shape[-2]) != (rw, rh):
        image = F.interpolate(image.unsqueeze(0), size=(rh, rw), mode="bicubic", antialias=True, align_corners=False)[0].clamp_(0, 1)
    left, top = crop if crop is not None else placement.crop
    bw, bh = placement.bucket
    return image[:, top : top + bh, left : left + bw]
