"""Files paired with each image by basename from a folder, as sd-scripts pairs
`conditioning_data_dir`: guide (conditioning) images for ControlNet/LLLite subsets, and loss
masks from a subset's `mask_dir`. Same pixel size as the image required."""
from dataclasses import dataclass
from pathlib import Path

from PIL import UnidentifiedImageError

from .errors import MISSING_PATH, DatasetProblems, Problem, collecting
from .images import ImageItem, is_image_file, item_path, source_size, unreadable_reason


@dataclass(frozen=True)
class Companion:
    """One kind of paired file: the ImageItem field it fills, the subset key of its folder,
    and the problems its pairing reports."""

    field: str
    folder_key: str
    what: str  # "guide image", "mask image"
    missing: Problem
    extra: Problem
    ambiguous: Problem
    unreadable: Problem
    sizes: Problem


GUIDES = Companion(
    "guide", "conditioning_data_dir", "guide image",
    Problem("Images without a guide image",
            "put a guide image with the same basename (any image extension) in the subset's conditioning_data_dir"),
    Problem("Guide images without an image", "add the image with the same basename, or remove the guide"),
    Problem("Guide images that share a basename with another guide", "the pairing is ambiguous: keep one guide per basename"),
    Problem("Cannot read these guide images", "they are corrupt or not images: replace them"),
    Problem("Guide images must have the same pixel size as their image", "resize the guide (it is cropped like its image)"),
)
MASKS = Companion(
    "mask", "mask_dir", "mask image",
    Problem("Images without a mask image",
            "put a mask image with the same basename (any image extension) in the subset's mask_dir"),
    Problem("Mask images without an image", "add the image with the same basename, or remove the mask"),
    Problem("Mask images that share a basename with another mask", "the pairing is ambiguous: keep one mask per basename"),
    Problem("Cannot read these mask images", "they are corrupt or not images: replace them"),
    Problem("Mask images must have the same pixel size as their image", "resize the mask (it is cropped like its image)"),
)
# the names other modules and tests use
MISSING_GUIDES, EXTRA_GUIDES, AMBIGUOUS_GUIDES = GUIDES.missing, GUIDES.extra, GUIDES.ambiguous
UNREADABLE_GUIDES, GUIDE_SIZES = GUIDES.unreadable, GUIDES.sizes


def pair_files(kind: Companion, images: list[Path], folder: Path, image_dir_label: str,
               problems: DatasetProblems | None = None) -> dict[Path, Path]:
    """Map each image path to the file of `folder` with the same basename (extension may
    differ). Missing, extra and ambiguous files go to `problems`; unpaired images are left out."""
    with collecting(problems) as problems:
        if not folder.is_dir():
            problems.add(MISSING_PATH, folder, f"{kind.folder_key}, {kind.what}s for {image_dir_label}")
            return {}
        files = sorted(p for p in folder.iterdir() if is_image_file(p))
        by_stem: dict[str, Path] = {}
        for f in files:
            if f.stem in by_stem:
                problems.add(kind.ambiguous, f, f"same basename as {by_stem[f.stem].name}")
            by_stem.setdefault(f.stem, f)
        image_stems = {p.stem for p in images}
        for p in images:
            if p.stem not in by_stem:
                problems.add(kind.missing, p)
        for f in files:
            if f.stem not in image_stems:
                problems.add(kind.extra, f)
        return {p: by_stem[p.stem] for p in images if p.stem in by_stem}


def pair_guides(images: list[Path], conditioning_dir: Path, image_dir_label: str,
                problems: DatasetProblems | None = None) -> dict[Path, Path]:
    return pair_files(GUIDES, images, conditioning_dir, image_dir_label, problems)


def paired_items(subset, images: list[Path], sizes: dict[Path, tuple[int, int]], captions: dict[Path, str | None],
                 image_dir_label: str, problems: DatasetProblems) -> list[ImageItem]:
    """The readable images of a folder or metadata subset with their captions, guides
    (conditioning_data_dir) and masks (mask_dir); an image whose guide or mask is missing is
    left out (the problem is reported), and every pair's sizes are checked."""
    paired = {}
    for kind in (GUIDES, MASKS):
        folder = getattr(subset, kind.folder_key)
        paired[kind.field] = pair_files(kind, images, folder, image_dir_label, problems) if folder else None
    items = [
        ImageItem(name=str(p), source=p, size=sizes[p], caption=captions.get(p),
                  **{f: found.get(p) for f, found in paired.items() if found is not None})
        for p in images
        if p in sizes and all(found is None or p in found for found in paired.values())
    ]
    for kind in (GUIDES, MASKS):
        check_sizes(kind, items, problems)
    return items


def check_sizes(kind: Companion, items: list[ImageItem], problems: DatasetProblems | None = None) -> None:
    """Every paired file must have its image's pixel size (it is resized and cropped with the
    same numbers); unreadable files and mismatches go to `problems`."""
    with collecting(problems) as problems:
        for item in items:
            other = getattr(item, kind.field)
            if other is None:
                continue
            try:
                size = source_size(other)
            except (OSError, UnidentifiedImageError) as e:
                problems.add(kind.unreadable, other, unreadable_reason(e))
                continue
            if size != item.size:
                name = str(other) if isinstance(other, Path) else f"(in-graph {kind.field})"
                problems.add(
                    kind.sizes, item_path(item),
                    f"{item.size[0]}x{item.size[1]}, its {kind.field} {name} is {size[0]}x{size[1]}",
                    (other,) if isinstance(other, Path) else (),
                )


def check_guide_sizes(items: list[ImageItem], problems: DatasetProblems | None = None) -> None:
    check_sizes(GUIDES, items, problems)
