"""Guide (conditioning) images for ControlNet/LLLite subsets: paired with their image by
basename from `conditioning_data_dir`, as sd-scripts does; same pixel size required."""
from pathlib import Path

from PIL import UnidentifiedImageError

from .errors import DatasetError, name_list
from .images import ImageItem, is_image_file, source_size


def pair_guides(images: list[Path], conditioning_dir: Path, image_dir_label: str) -> dict[Path, Path]:
    """Map each image path to the guide with the same basename (extension may differ).
    Missing and extra guide images are all listed in one error."""
    if not conditioning_dir.is_dir():
        raise DatasetError(f"conditioning_data_dir {conditioning_dir} (guide images for {image_dir_label}) does not exist.")
    guides = sorted(p for p in conditioning_dir.iterdir() if is_image_file(p))
    by_stem: dict[str, Path] = {}
    duplicates = []
    for g in guides:
        if g.stem in by_stem:
            duplicates.append(g)
        by_stem.setdefault(g.stem, g)
    if duplicates:
        raise DatasetError(
            f"Guide images in {conditioning_dir} share a basename with another guide, so the pairing is ambiguous:\n"
            + name_list(duplicates)
        )
    image_stems = {p.stem for p in images}
    missing = [p for p in images if p.stem not in by_stem]
    extra = [g for g in guides if g.stem not in image_stems]
    if missing or extra:
        parts = [f"Images and guide images do not pair up by basename ({image_dir_label} <-> {conditioning_dir})."]
        if missing:
            parts.append(f"Images without a guide image in {conditioning_dir}:\n" + name_list(missing))
        if extra:
            parts.append(f"Guide images without an image in {image_dir_label}:\n" + name_list(extra))
        raise DatasetError("\n".join(parts))
    return {p: by_stem[p.stem] for p in images}


def check_guide_sizes(items: list[ImageItem]) -> None:
    """Every guide must have its image's pixel size (it is resized and cropped with the same
    numbers); unreadable guides and mismatches are listed together."""
    unreadable, mismatched = [], []
    for item in items:
        if item.guide is None:
            continue
        try:
            size = source_size(item.guide)
        except (OSError, UnidentifiedImageError) as e:
            unreadable.append(f"{item.guide} ({e})")
            continue
        if size != item.size:
            mismatched.append(f"{item.name} is {item.size[0]}x{item.size[1]}, its guide {_guide_name(item)} is {size[0]}x{size[1]}")
    if unreadable:
        raise DatasetError("Cannot read these guide images:\n" + name_list(unreadable))
    if mismatched:
        raise DatasetError("Guide images must have the same pixel size as their image:\n" + name_list(mismatched))


def _guide_name(item: ImageItem) -> str:
    return str(item.guide) if isinstance(item.guide, Path) else "(in-graph guide)"

