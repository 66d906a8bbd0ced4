"""sd-scripts folder datasets: the `<repeats>_<identifier> <class>` tree, and reading one
image folder with its caption files.

    subsets = subsets_from_folder_tree("train", reg_dir="reg", template=SubsetConfig(caption_extension=".txt"))

Each subfolder of `train` named like `10_sks dog` becomes a subset repeated 10 times with
class tokens "sks dog"; `reg` holds `<repeats>_<class>` folders of regularization images. A
caption file with an image's basename and the chosen extension replaces the folder caption.
"""
import dataclasses
import re
from pathlib import Path

from .config import SubsetConfig
from .errors import MISSING_PATH, DatasetProblems, Problem, collecting
from .images import IMAGE_EXTENSIONS, ImageItem, read_sizes
from .pairing import paired_items

# files sd-scripts keeps beside images that are not captions: latent caches (npz_latents.py)
NOT_CAPTIONS = (".npz",)
_FOLDER_NAME = re.compile(r"^(\d+)_(.*)$")
_LAYOUT = "`<repeats>_<identifier> <class>` (e.g. `10_sks dog`; regularization: `<repeats>_<class>`, e.g. `1_dog`)"

LOOSE_IMAGES = Problem("Images directly in a training or regularization folder", f"move them into a subfolder named {_LAYOUT}")
NO_SUBFOLDERS = Problem("Training or regularization folders without subfolders", f"put the images in subfolders named {_LAYOUT}")
BAD_FOLDER_NAMES = Problem("Folders not named `<repeats>_<identifier> <class>` with repeats >= 1", f"rename them as {_LAYOUT}")
NO_IMAGES = Problem("Image folders without images", f"add images ({' '.join(IMAGE_EXTENSIONS)}) or remove the folder")
ORPHAN_CAPTIONS = Problem("Caption files without an image of the same basename", "rename them to their image's basename, or delete them")
UNCAPTIONED = Problem(
    "Images without a caption file and no class tokens to fall back on",
    "add a caption file with the image's basename, or give the subset class tokens",
)
UNDECODABLE_CAPTIONS = Problem("Caption files that are not UTF-8 text", "save them as UTF-8")
EMPTY_CAPTIONS = Problem("Empty caption files", "write a caption, or delete the file to use the class tokens")


def folder_repeats(name: str) -> int | None:
    """The repeats of a `<repeats>_<tokens>` folder name; None when it is not one."""
    m = _FOLDER_NAME.match(name)
    return int(m[1]) if m and int(m[1]) >= 1 else None


def subsets_from_folder_tree(
    train_dir: str | Path,
    reg_dir: str | Path | None = None,
    template: SubsetConfig | None = None,
    conditioning_dir: str | Path | None = None,
) -> list[SubsetConfig]:
    """One subset per `<repeats>_<tokens>` subfolder; template carries the caption and
    augmentation options. conditioning_dir, when given, mirrors the train tree: guide images
    for `train/10_sks dog/a.png` are looked up in `conditioning_dir/10_sks dog/`.

    Problems of both trees are raised together; when there are any, the files of the
    well-named folders are checked too, so the one error lists everything."""
    template = template or SubsetConfig()
    problems = DatasetProblems()
    cond = Path(conditioning_dir) if conditioning_dir else None
    subsets = _subsets_in(Path(train_dir), False, template, cond, problems)
    if reg_dir:
        subsets += _subsets_in(Path(reg_dir), True, template, None, problems)
    if problems:
        for subset in subsets:
            scan_image_dir(subset, problems)
    problems.raise_if_any()
    return subsets


def _subsets_in(root: Path, is_reg: bool, template: SubsetConfig, conditioning_dir: Path | None,
                problems: DatasetProblems) -> list[SubsetConfig]:
    if not root.is_dir():
        problems.add(MISSING_PATH, root, "regularization folder" if is_reg else "training folder")
        return []
    children = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    for p in children:
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            problems.add(LOOSE_IMAGES, p)
    subdirs = [p for p in children if p.is_dir()]
    if not subdirs:
        problems.add(NO_SUBFOLDERS, root)
    subsets = []
    for d in subdirs:
        m = _FOLDER_NAME.match(d.name)
        if not m or int(m[1]) < 1:
            problems.add(BAD_FOLDER_NAMES, d)
            continue
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


def scan_image_dir(subset: SubsetConfig, problems: DatasetProblems | None = None) -> list[ImageItem]:
    """The images of a DreamBooth-style subset with their caption file text and guides.
    Problems go to `problems`; the images they concern are left out."""
    with collecting(problems) as problems:
        d = subset.image_dir
        if not d.is_dir():
            problems.add(MISSING_PATH, d, "image folder")
            return []
        files = sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith("."))
        images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
        if not images:
            problems.add(NO_IMAGES, d, f"it holds {len(files)} other file(s), e.g. {files[0].name}" if files else "it is empty")
            return []
        ext = caption_extension(subset)
        image_stems = {p.stem for p in images}
        caption_files = {p.name[: -len(ext)]: p for p in files if p.name.lower().endswith(ext.lower()) and p not in images}
        for stem, p in caption_files.items():
            if stem not in image_stems:
                problems.add(ORPHAN_CAPTIONS, p)
        captions = _read_captions({s: p for s, p in caption_files.items() if s in image_stems}, problems)
        _check_uncaptioned(subset, files, images, [p for p in images if p.stem not in caption_files], ext, problems)

        sizes = read_sizes(images, problems)
        return paired_items(subset, images, sizes, {p: captions.get(p.stem) for p in images}, str(d), problems)


def _check_uncaptioned(subset: SubsetConfig, files: list[Path], images: list[Path], uncaptioned: list[Path], ext: str,
                       problems: DatasetProblems) -> None:
    """As in sd-scripts, an image without a caption file trains on the class tokens (a note,
    when some images have captions or other caption-like files exist); with no class tokens
    either it would train on an empty caption, which is refused."""
    if not uncaptioned:
        return
    if subset.class_tokens is None:
        for p in uncaptioned:
            others = _other_extensions(files, [p], ext)
            problems.add(UNCAPTIONED, p, f"there is a {others[0]} file: set caption_extension to {others[0]}" if others else "")
        return
    others = _other_extensions(files, uncaptioned, ext)
    if len(uncaptioned) < len(images) or (others and not subset.is_reg):
        hint = f" (files with the same basenames end in {', '.join(others)}: set caption_extension to that)" if others else ""
        problems.note(f"{len(uncaptioned)} image(s) in {subset.image_dir} have no {ext} caption file; "
                      f"they use the class tokens {subset.class_tokens!r}{hint}.")


def _read_captions(caption_files: dict[str, Path], problems: DatasetProblems) -> dict[str, str]:
    """First non-empty line of each caption file (UTF-8); empty or undecodable files are problems."""
    captions = {}
    for stem, p in caption_files.items():
        try:
            lines = [ln.strip() for ln in p.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
        except UnicodeDecodeError:
            problems.add(UNDECODABLE_CAPTIONS, p)
            continue
        if not lines:
            problems.add(EMPTY_CAPTIONS, p)
            continue
        captions[stem] = lines[0]
    return captions


def _other_extensions(files: list[Path], uncaptioned: list[Path], ext: str) -> list[str]:
    """Other extensions of files with the images' basenames: the usual cause of missing
    captions is caption_extension left at .caption while the captions are .txt."""
    stems = {p.stem for p in uncaptioned}
    return sorted({p.suffix for p in files if p.stem in stems and p.suffix.lower() not in (*IMAGE_EXTENSIONS, *NOT_CAPTIONS)
                   and p.suffix != ext})
