"""Guide (conditioning) images for ControlNet/LLLite subsets: paired with their image by
basename from `conditioning_data_dir`, as sd-scripts does; same pixel size required."""
from pathlib import Path

from PIL import UnidentifiedImageError

from .errors import MISSING_PATH, DatasetProblems, Problem, collecting
from .images import ImageItem, is_image_file, item_path, source_size, unreadable_reason

MISSING_GUIDES = Problem(
    "Images without a guide image",
    "put a guide image with the same basename (any image extension) in the subset's conditioning_data_dir",
)
EXTRA_GUIDES = Problem("Guide images without an image", "add the image with the same basename, or remove the guide")
AMBIGUOUS_GUIDES = Problem(
    "Guide images that share a basename with another guide", "the pairing is ambiguous: keep one guide per basename"
)
UNREADABLE_GUIDES = Problem("Cannot read these guide images", "they are corrupt or not images: replace them")
GUIDE_SIZES = Problem(
    "Guide images must have the same pixel size as their image", "resize the guide (it is cropped like its image)"
)


def pair_guides(
    images: list[Path], conditioning_dir: Path, image_dir_label: str, problems: DatasetProblems | None = None
) -> dict[Path, Path]:
    """Map each image path to the guide with the same basename (extension may differ).
    Missing, extra and ambiguous guides go to `problems`; unpaired images are left out."""
    with collecting(problems) as problems:
        if not conditioning_dir.is_dir():
            problems.add(MISSING_PATH, conditioning_dir, f"conditioning_data_dir, guide images for {image_dir_label}")
            return {}
        guides = sorted(p for p in conditioning_dir.iterdir() if is_image_file(p))
        by_stem: dict[str, Path] = {}
        for g in guides:
            if g.stem in by_stem:
                problems.add(AMBIGUOUS_GUIDES, g, f"same basename as {by_stem[g.stem].name}")
            by_stem.setdefault(g.stem, g)
        image_stems = {p.stem for p in images}
        for p in images:
            if p.stem not in by_stem:
                problems.add(MISSING_GUIDES, p)
        for g in guides:
            if g.stem not in image_stems:
                problems.add(EXTRA_GUIDES, g)
        return {p: by_stem[p.stem] for p in images if p.stem in by_stem}


def check_guide_sizes(items: list[ImageItem], problems: DatasetProblems | None = None) -> None:
    """Every guide must have its image's pixel size (it is resized and cropped with the same
    numbers); unreadable guides and mismatches go to `problems`."""
    with collecting(problems) as problems:
        for item in items:
            if item.guide is None:
                continue
            try:
                size = source_size(item.guide)
            except (OSError, UnidentifiedImageError) as e:
                problems.add(UNREADABLE_GUIDES, item.guide, unreadable_reason(e))
                continue
            if size != item.size:
                problems.add(
                    GUIDE_SIZES, item_path(item),
                    f"{item.size[0]}x{item.size[1]}, its guide {_guide_name(item)} is {size[0]}x{size[1]}",
                    (item.guide,) if isinstance(item.guide, Path) else (),
                )


def _guide_name(item: ImageItem) -> str:
    return str(item.guide) if isinstance(item.guide, Path) else "(in-graph guide)"
