"""Detection resolution vs output size: a map is detected at `detect_resolution` (its short
side; 0 = the image's own size) and always returned at the input image's size."""
import torch

from .image_ops import resize


def detect_size(height: int, width: int, detect_resolution: int, multiple: int = 1) -> tuple[int, int]:
    """(h, w) to run detection at: short side scaled to detect_resolution, aspect kept,
    both sides rounded to a multiple the network needs (at least one multiple)."""
    if detect_resolution < 0:
        raise ValueError(f"detect_resolution must be >= 0 (0 = native), got {detect_resolution}")
    scale = 1.0 if detect_resolution == 0 else detect_resolution / min(height, width)

    def fit(side: int) -> int:
        return max(multiple, int(round(side * scale / multiple)) * multiple)

    return fit(height), fit(width)


def detect_then_restore(fn, image: torch.Tensor, detect_resolution: int, multiple: int = 1,
                        binary: bool = False) -> torch.Tensor:
    """fn(image at detection size) -> map, resized back to the image's (H, W). Binary maps
    are thresholded again after resizing so they stay 0/1."""
    height, width = image.shape[-2:]
    h, w = detect_size(height, width, detect_resolution, multiple)
    out = fn(resize(image, h, w))
    out = resize(out, height, width)
    return (out > 0.5).to(out.dtype) if binary else out
