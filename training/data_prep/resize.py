"""tools/resize_images_to_resolution.py of sd-scripts, reimplemented with its numbers: each
image is shrunk (never enlarged) to at most each target area in turn, keeping its aspect
ratio, then center-cropped to sides divisible by `divisible_by`, and saved as
`<name>+<WxH>.jpg` (quality 100) or `.png`. As there, each target starts from the previous
target's result, other files in the folder are copied, and with copy_associated_files a
caption `<name>.txt` is also copied as `<name>+<WxH>.txt`."""
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ...files.atomic import write_atomic
from ..data.images import IMAGE_EXTENSIONS

# sd-scripts' resize_image: OpenCV for these, PIL for lanczos and box; default area
# (every resize here shrinks).
_CV2 = {"area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST_EXACT,
        "linear": cv2.INTER_LINEAR}
_PIL = {"lanczos4": Image.Resampling.LANCZOS, "box": Image.Resampling.BOX}
INTERPOLATIONS = ("area", "cubic", "lanczos4", "nearest", "linear", "box")


@dataclass
class ResizeResult:
    written: list[Path] = field(default_factory=list)
    copied: list[Path] = field(default_factory=list)


def parse_resolutions(text: str) -> list[tuple[str, int]]:
    """"512x512,384x384" -> [("512x512", 262144), ("384x384", 147456)]."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        try:
            w, h = (int(v) for v in part.split("x"))
        except ValueError:
            raise ValueError(f"resolution {part!r} must read WIDTHxHEIGHT, e.g. 512x512 (several: 512x512,384x384).") from None
        if w <= 0 or h <= 0:
            raise ValueError(f"resolution {part!r} must be positive.")
        out.append((part, w * h))
    return out


def resize_pixels(img: np.ndarray, width: int, height: int, interpolation: str = "area") -> np.ndarray:
    if interpolation in _PIL:
        return np.asarray(Image.fromarray(img).resize((width, height), resample=_PIL[interpolation]))
    if interpolation not in _CV2:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}.")
    return cv2.resize(img, (width, height), interpolation=_CV2[interpolation])


def fit_area(img: np.ndarray, max_pixels: int, divisible_by: int = 1, interpolation: str | None = None) -> np.ndarray:
    """One target: shrink to <= max_pixels (sides truncated), then center-crop to multiples."""
    h, w = img.shape[:2]
    if h * w > max_pixels:
        scale = math.sqrt(max_pixels / (h * w))
        new_h, new_w = int(h * scale), int(w * scale)
        img = resize_pixels(img, new_w, new_h, interpolation or "area")
    else:
        new_h, new_w = h, w
    new_h -= new_h % divisible_by
    new_w -= new_w % divisible_by
    y, x = int((img.shape[0] - new_h) / 2), int((img.shape[1] - new_w) / 2)
    return img[y:y + new_h, x:x + new_w]


def plan(src: Path, dst: Path, resolutions: list[tuple[str, int]], save_as_png: bool,
         copy_associated_files: bool) -> list[tuple[Path, Path, str | None]]:
    """(source, target, resolution label or None for a plain copy) for every file written."""
    ext = ".png" if save_as_png else ".jpg"
    files = sorted(p for p in src.iterdir() if p.is_file())
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    stems = {p.stem for p in images}
    jobs = []
    for p in files:
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            jobs += [(p, dst / f"{p.stem}+{label}{ext}", label) for label, _ in resolutions]
            continue
        jobs.append((p, dst / p.name, None))
        if copy_associated_files and p.stem in stems:
            jobs += [(p, dst / f"{p.stem}+{label}{p.suffix}", None) for label, _ in resolutions]
    return jobs


def resize_folder(src_dir: str | Path, dst_dir: str | Path, max_resolution: str = "512x512,384x384,256x256,128x128",
                  divisible_by: int = 1, interpolation: str | None = None, save_as_png: bool = False,
                  copy_associated_files: bool = False, overwrite: bool = False, progress=None) -> ResizeResult:
    src, dst = Path(src_dir), Path(dst_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"source folder {str(src)!r} does not exist.")
    if src.resolve() == dst.resolve():
        raise ValueError("the destination folder must differ from the source folder.")
    if divisible_by < 1:
        raise ValueError("divisible_by must be at least 1.")
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}.")
    resolutions = parse_resolutions(max_resolution)
    jobs = plan(src, dst, resolutions, save_as_png, copy_associated_files)
    taken = [t for _, t, _ in jobs if t.exists()]
    if taken and not overwrite:
        raise FileExistsError(f"{len(taken)} of the files to write already exist in {dst} (first: {taken[0].name}); "
                              "nothing was written. Choose an empty folder, or allow overwriting.")
    areas = dict(resolutions)
    result, current, current_src = ResizeResult(), None, None
    for i, (source, target, label) in enumerate(jobs):
        if label is None:
            write_atomic(target, lambda tmp, s=source: shutil.copyfile(s, tmp), "copied file")
            result.copied.append(target)
        else:
            if current_src != source:  # each image's first target starts from the file itself
                current, current_src = np.asarray(Image.open(source).convert("RGB")), source
            current = np.ascontiguousarray(fit_area(current, areas[label], divisible_by, interpolation))
            fmt = "PNG" if save_as_png else "JPEG"
            write_atomic(target, lambda tmp, a=current: Image.fromarray(a).save(tmp, format=fmt, quality=100), "image")
            result.written.append(target)
        if progress is not None:
            progress(i + 1, len(jobs))
    return result
