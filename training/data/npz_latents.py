"""Latents sd-scripts cached beside the images, reused instead of encoding again when they match.

sd-scripts writes one `.npz` per image (numpy, no pickles): `prepare_buckets_latents.py`
(and older trainers' cache_latents_to_disk) as `<image stem>.npz`, today's trainers as
`<stem>_<W:04d>x<H:04d>_sd.npz` / `_sdxl.npz` (W x H: the image's own size); the old name wins,
as in sd-scripts' SdSdxlLatentsCachingStrategy. Keys: `latents` (C, h, w) straight from the
VAE (not yet multiplied by the model's scale factor), `original_size` (W, H), `crop_ltrb`,
`latents_flipped` (with flip_aug) and `alpha_mask` (with alpha_mask; masks are read from the
image here, so it is not needed).

An entry matches when it is no older than its image, has those keys, was made from an image
of the item's size, and its latents have the bucket's latent size (sd-scripts' own validity
check, plus the date). Which VAE made it the file does not say: TrainingData compares the
first reused entry with its own encoding before trusting any (see `agrees`).
"""
import logging
from dataclasses import dataclass
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .buckets import Placement

log = logging.getLogger(__name__)

# mean |npz - ours| / mean |ours| below which an sd-scripts latent counts as the same VAE's:
# sd-scripts samples the VAE's latent distribution and resizes with OpenCV's INTER_AREA, so
# the same VAE differs by a few per cent; another VAE or scale differs by tens of per cent
AGREEMENT = 0.2


@dataclass(frozen=True)
class SdScriptsLatents:
    """suffix: "_sd.npz" (SD1.x/2.x), "_sdxl.npz" or "_anima.npz"; process_in: raw VAE latents ->
    what the model trains on (the latent format's scaling, as the engine's own encoder applies).
    multi_resolution: sd-scripts' Anima layout (AnimaLatentsCachingStrategy): only the suffixed
    name, and every key suffixed with the latent size `_<h>x<w>` (one file holds several buckets)."""

    suffix: str
    process_in: Callable[[torch.Tensor], torch.Tensor]
    multi_resolution: bool = False

    def paths(self, image: Path, size: tuple[int, int]) -> list[Path]:
        named = image.with_name(f"{image.stem}_{size[0]:04d}x{size[1]:04d}{self.suffix}")
        return [named] if self.multi_resolution else [image.with_suffix(".npz"), named]

    def load(self, image: Path, size: tuple[int, int], placement: Placement, flip: bool) -> torch.Tensor | None:
        """The entry's latents for this placement and flip, scaled for the model; None when no
        file matches."""
        bw, bh = placement.bucket
        reso = f"_{bh // 8}x{bw // 8}" if self.multi_resolution else ""
        for path in self.paths(image, size):
            found = _read(path, image, size, placement, "latents_flipped" if flip else "latents", reso)
            if found is not None:
                return self.process_in(torch.from_numpy(found).float().unsqueeze(0))[0]
        return None


def _read(path: Path, image: Path, size: tuple[int, int], placement: Placement, key: str, reso: str = "") -> np.ndarray | None:
    try:
        if not path.is_file() or path.stat().st_mtime < image.stat().st_mtime:
            return None  # none, or older than the image: it was made from another picture
        with np.load(path, allow_pickle=False) as npz:
            if not {"latents" + reso, "original_size" + reso, "crop_ltrb" + reso, key + reso} <= set(npz.files):
                return None
            bw, bh = placement.bucket
            latents = npz[key + reso]
            if tuple(npz["original_size" + reso].tolist()) != tuple(size) or latents.ndim != 3 or latents.shape[1:] != (bh // 8, bw // 8):
                return None
            return latents.astype(np.float32)
    except (OSError, ValueError) as e:  # unreadable or not an npz: encode instead
        log.warning("ignoring sd-scripts latent cache %s: %s", path, e)
        return None


def agrees(theirs: torch.Tensor, ours: torch.Tensor) -> bool:
    """Whether an sd-scripts latent and this run's encoding of the same image come from the
    same VAE and scaling (AGREEMENT)."""
    if theirs.shape != ours.shape:
        return False
    return float((theirs - ours).abs().mean() / ours.abs().mean().clamp_min(1e-8)) < AGREEMENT
