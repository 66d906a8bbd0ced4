"""A folder's images listed as sd-scripts lists them, and text files written beside them."""
from pathlib import Path

from ...files.atomic import write_atomic
from ..data.images import IMAGE_EXTENSIONS

# What to do when a caption/tag file exists: keep it (default), replace it, or add the new
# tags after the existing ones (tag_images_by_wd14_tagger.py --append_tags).
IF_EXISTS = ("skip", "overwrite", "append")


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """The images in `folder` (subfolders too when recursive), sorted, as glob_images_pathlib."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist.")
    found = folder.rglob("*") if recursive else folder.glob("*")
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def beside(image: Path, extension: str) -> Path:
    """The text file that belongs to `image` (photo.png -> photo.caption)."""
    if not extension.startswith(".") or len(extension) < 2 or "/" in extension or "\\" in extension:
        raise ValueError(f"extension {extension!r} must start with a dot, e.g. .txt or .caption.")
    return image.with_name(image.stem + extension)


def split_tags(text: str, separator: str = ", ") -> list[str]:
    sep = separator.strip() or separator
    return [t.strip() for t in text.split(sep) if t.strip()]


def append_tags(existing: str, new: list[str], separator: str = ", ") -> str:
    """Existing tags first, then the new tags they lack (sd-scripts' --append_tags)."""
    old = split_tags(existing.strip("\n"), separator)
    return separator.join(old + [t for t in new if t not in old])


def with_existing(image: Path, text: str, extension: str, separator: str = ", ") -> str:
    """`text`'s tags after those of `image`'s existing file (as --append_tags writes them)."""
    existing = read_beside(image, extension)
    return text if existing is None else append_tags(existing, split_tags(text, separator), separator)


def write_beside(image: Path, text: str, extension: str, if_exists: str = "skip",
                 separator: str = ", ") -> Path | None:
    """Writes `text` + newline beside `image` atomically; returns the file, or None when an
    existing file was kept (if_exists="skip")."""
    if if_exists not in IF_EXISTS:
        raise ValueError(f"if_exists must be one of {IF_EXISTS}, got {if_exists!r}.")
    path = beside(image, extension)
    if path.exists():
        if if_exists == "skip":
            return None
        if if_exists == "append":
            text = append_tags(path.read_text(encoding="utf-8"), split_tags(text, separator), separator)
    return write_atomic(path, (text + "\n").encode("utf-8"), "caption file")


def read_beside(image: Path, extension: str) -> str | None:
    """The stripped text of `image`'s file with `extension`, or None when there is none."""
    path = beside(image, extension)
    return path.read_text(encoding="utf-8-sig").strip() if path.is_file() else None
