"""sd-scripts folder datasets: the `<repeats>_<identifier> <class>` tree, and reading one
image folder with its caption files.

    subsets = subsets_from_folder_tree("train", reg_dir="reg", template=SubsetConfig(caption_extension=".txt"))

Each subfolder of `train` named like `10_sks dog` becomes a subset repeated 10 times with
class tokens "sks dog"; `reg` holds `<repeats>_<class>` folders of regularization images. A
caption file with an image's basename and the chosen extension replaces the folder caption.
"""
import dataclasses
import logging
import re
from pathlib import Path

from .config import SubsetConfig
from .errors import DatasetError, name_list
from .images import IMAGE_EXTENSIONS, ImageItem, read_sizes
from .pairing import check_guide_sizes, pair_guides

log = logging.getLogger(__name__)

_FOLDER_NAME = re.compile(r"^(\d+)_(.*)$")


def subsets_from_folder_tree(
    train_dir: str | Path,
    reg_dir: str | Path | None = None,
    template: SubsetConfig | None = None,
    conditioning_dir: str | Path | None = None,
) -> list[SubsetConfig]:
    """One subset per `<repeats>_<tokens>` subfolder; template carries the caption and
    augmentation options. conditioning_dir, when given, mirrors the train tree: guide images
    for `train/10_sks dog/a.png` are looked up in `conditioning_dir/10_sks dog/`."""
    template = template or SubsetConfig()
    subsets = _subsets_in(Path(train_dir), False, template, Path(conditioning_dir) if conditioning_dir else None)
    if reg_dir:
        subsets += _subsets_in(Path(reg_dir), True, template, None)
    return subsets


def _subsets_in(root: Path, is_reg: bool, template: SubsetConfig, conditioning_dir: Path | None) -> list[SubsetConfig]:
    label = "Regularization folder" if is_reg else "Training folder"
    pattern = "<repeats>_<class>" if is_reg else "<repeats>_<identifier> <class>"
    example = "1_dog" if is_reg else "10_sks dog"
    if not root.is_dir():
        raise DatasetError(f"{label} {root} does not exist (or is not a folder).")
    children = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    loose_images = [p for p in children if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if loose_images:
        raise DatasetError(
            f"{label} {root} contains images directly; it must be the parent of folders named "
            f"`{pattern}` (e.g. `{example}`) that hold the images. Loose images:\n" + name_list(loose_images)
        )
    subdirs = [p for p in children if p.is_dir()]
    if not subdirs:
        raise DatasetError(f"{label} {root} has no `{pattern}` subfolders (e.g. `{example}`).")
    bad = [p for p in subdirs if not _FOLDER_NAME.match(p.name) or int(_FOLDER_NAME.match(p.name)[1]) < 1]
    if bad:
        raise DatasetError(
            f"These folders in {root} are not named `{pattern}` with repeats >= 1 (e.g. `{example}`):\n" + name_list(bad)
        )
    subsets = []
    for d in subdirs:
        m = _FOLDER_NAME.match(d.name)
        subsets.append(dataclasses.replace(
            template,
            image_dir=d,
            num_repeats=int(m[1]),
            class_tokens=m[2].strip() or None,
            is_reg=is_reg,
            conditioning_data_dir=conditioning_dir / d.name if conditioning_dir else None,
        ))
    return subsets


def caption_extension(subset: SubsetConfig) -> str:
    ext = subset.caption_extension
    return ext if ext.startswith(".") else "." + ext


def scan_image_dir(subset: SubsetConfig) -> list[ImageItem]:
    """The images of a DreamBooth-style subset with their caption file text and guides."""
    d = subset.image_dir
    if not d.is_dir():
        raise DatasetError(f"Image folder {d} does not exist (or is not a folder).")
    files = sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    if not images:
        found = f" It holds {len(files)} other file(s), e.g. {files[0].name}." if files else " It is empty."
        raise DatasetError(f"No images in {d} (expected {' '.join(IMAGE_EXTENSIONS)}).{found}")
    ext = caption_extension(subset)
    image_stems = {p.stem for p in images}
    caption_files = {p.name[: -len(ext)]: p for p in files if p.name.lower().endswith(ext.lower()) and p not in images}
    orphans = [p for stem, p in caption_files.items() if stem not in image_stems]
    if orphans:
        raise DatasetError(f"Caption files in {d} without an image of the same basename:\n" + name_list(orphans))
    captions = _read_captions(caption_files)

    uncaptioned = [p for p in images if p.stem not in captions]
    if uncaptioned and subset.class_tokens is None:
        raise DatasetError(
            f"Images in {d} have no `{ext}` caption file and the subset has no class tokens to fall back on"
            f"{_extension_hint(files, uncaptioned, ext)}:\n" + name_list(uncaptioned)
        )
    if uncaptioned and captions:
        log.warning("%d image(s) in %s have no %s caption file; they use the class tokens %r.", len(uncaptioned), d, ext, subset.class_tokens)
    elif uncaptioned and not subset.is_reg:
        hint = _extension_hint(files, uncaptioned, ext)
        if hint:
            log.warning("No %s caption files in %s; training on the class tokens %r%s.", ext, d, subset.class_tokens, hint)

    sizes = read_sizes(images)
    guides = pair_guides(images, subset.conditioning_data_dir, str(d)) if subset.conditioning_data_dir else {}
    items = [
        ImageItem(name=str(p), source=p, size=sizes[p], caption=captions.get(p.stem), guide=guides.get(p))
        for p in images
    ]
    check_guide_sizes(items)
    return items


def _read_captions(caption_files: dict[str, Path]) -> dict[str, str]:
    """First non-empty line of each caption file (UTF-8); empty or undecodable files are errors."""
    captions, empty, undecodable = {}, [], []
    for stem, p in caption_files.items():
        try:
            lines = [ln.strip() for ln in p.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
        except UnicodeDecodeError:
            undecodable.append(p)
            continue
        if not lines:
            empty.append(p)
            continue
        captions[stem] = lines[0]
    if undecodable:
        raise DatasetError("Caption files that are not UTF-8 text:\n" + name_list(undecodable))
    if empty:
        raise DatasetError("Empty caption files (write a caption, or delete the file to use the class tokens):\n" + name_list(empty))
    return captions


def _extension_hint(files: list[Path], uncaptioned: list[Path], ext: str) -> str:
    """Names a different extension whose files match the images: the usual cause is
    caption_extension left at .caption while the captions are .txt."""
    stems = {p.stem for p in uncaptioned}
    others = sorted({p.suffix for p in files if p.stem in stems and p.suffix.lower() not in IMAGE_EXTENSIONS and p.suffix != ext})
    return f" (files with the same basenames end in {', '.join(others)}: set caption_extension to that)" if others else ""
