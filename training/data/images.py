"""One training image (file or in-memory tensor): reading, size, content hash."""
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import UNREADABLE_IMAGES, DatasetError, DatasetProblems, collecting

# The extensions sd-scripts accepts, matched case-insensitively.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

ImageSource = Path | torch.Tensor  # a file, or a (3, H, W) float tensor in [0, 1]


@dataclass(frozen=True, eq=False)
class ImageItem:
    """One image before bucketing.

    name: what error messages and tag statistics call it (the file path, or "images[3]").
    caption: the caption text from a caption file / list / metadata; None means "use the
        subset's class tokens".
    guide: the guide (conditioning) image paired with it, same pixel size, or None.
    mask: its loss mask (a mask_dir file, or an in-graph (1, H, W) tensor in [0, 1]), same
        pixel size, or None.
    size: (width, height) in pixels.
    bucket: the (width, height) it trains at when its source fixes one (a metadata file's
        `train_resolution`, as prepare_buckets_latents.py writes it); None: the dataset's bucketing.
    """

    name: str
    source: ImageSource
    size: tuple[int, int]
    caption: str | None = None
    guide: ImageSource | None = None
    mask: ImageSource | None = None
    bucket: tuple[int, int] | None = None


def item_path(item: ImageItem) -> Path | str:
    """What a problem report calls the item: its file, or its in-graph name."""
    return item.source if isinstance(item.source, Path) else item.name


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def read_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header; raises OSError/UnidentifiedImageError if unreadable."""
    with Image.open(path) as img:
        return img.size


def read_sizes(paths: list[Path], problems: DatasetProblems | None = None) -> dict[Path, tuple[int, int]]:
    """Header sizes of the readable image files; the others go to `problems`."""
    sizes = {}
    with collecting(problems) as problems:
        for p in paths:
            try:
                sizes[p] = read_size(p)
            except (OSError, UnidentifiedImageError) as e:
                problems.add(UNREADABLE_IMAGES, p, unreadable_reason(e))
    return sizes


def unreadable_reason(error: Exception) -> str:
    """Why PIL could not read a file, without the path the message is listed under."""
    if isinstance(error, UnidentifiedImageError):
        return "not an image format PIL can read"
    if isinstance(error, OSError) and error.filename is not None:
        return error.strerror or error.__class__.__name__
    return str(error) or error.__class__.__name__


def source_size(source: ImageSource) -> tuple[int, int]:
    if isinstance(source, torch.Tensor):
        return int(source.shape[-1]), int(source.shape[-2])
    return read_size(source)


def load_image(source: ImageSource) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1]. Files are converted to RGB (alpha dropped, grey expanded)."""
    if isinstance(source, torch.Tensor):
        return source.float()
    try:
        with Image.open(source) as img:
            arr = np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DatasetError(f"Cannot read image {source}: {e}") from e
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def load_mask(source: ImageSource, alpha: bool = False) -> torch.Tensor:
    """(1, H, W) float32 in [0, 1], read as sd-scripts reads masks: a mask file's red channel
    (its conditioning image path: RGB, channel 0), or with `alpha` the image's alpha channel
    (an image without one is converted to RGBA: fully opaque, all ones). In-graph tensors:
    (1, H, W) or (H, W) masks as they are; an in-graph image has no alpha, so ones."""
    if isinstance(source, torch.Tensor):
        if alpha:
            return torch.ones((1, *source.shape[-2:]))
        return source.float().reshape(1, *source.shape[-2:])
    try:
        with Image.open(source) as img:
            arr = np.asarray(img.convert("RGBA"))[:, :, 3] if alpha else np.asarray(img.convert("RGB"))[:, :, 0]
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DatasetError(f"Cannot read mask {source}: {e}") from e
    return torch.from_numpy(arr.copy()).unsqueeze(0).float().div_(255.0)


def content_hash(source: ImageSource) -> str:
    """sha256 of the file bytes or of the tensor's values, so a moved or renamed file keeps
    its cached latents and an edited one does not."""
    h = hashlib.sha256()
    if isinstance(source, torch.Tensor):
        t = source.detach().to("cpu", torch.float32).contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    else:
        with open(source, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
