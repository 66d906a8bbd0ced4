"""Bring a guide image to the size of the picture being generated (the latent's pixel size)."""
import torch
import torch.nn.functional as F

RESIZE_MODES = ("crop", "stretch", "pad")


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if x.shape[-2:] == (height, width):
        return x
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)


def fit_guide(image: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
    """(B, C, H, W) image in 0..1 -> (B, 3, height, width).
    crop: keep the aspect ratio, cut the overhang evenly from both sides (as core ControlNet does);
    stretch: resize each axis independently; pad: keep the aspect ratio, fill the rest with black."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    x = image[:, :3] if image.shape[1] >= 3 else image[:, :1].expand(-1, 3, -1, -1)
    h, w = x.shape[-2:]
    if (h, w) == (height, width) or mode == "stretch":
        return _resize(x, height, width)
    if mode == "crop":
        if w * height > width * h:  # wider than the target
            keep = round(h * width / height)
            x = x[..., :, (w - keep) // 2:(w - keep) // 2 + keep]
        else:
            keep = round(w * height / width)
            x = x[..., (h - keep) // 2:(h - keep) // 2 + keep, :]
        return _resize(x, height, width)
    scale = min(height / h, width / w)
    fh, fw = min(height, max(1, round(h * scale))), min(width, max(1, round(w * scale)))
    x = _resize(x, fh, fw)
    top, left = (height - fh) // 2, (width - fw) // 2
    return F.pad(x, (left, width - fw - left, top, height - fh - top), value=0.0)
