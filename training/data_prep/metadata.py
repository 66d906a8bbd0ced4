"""The fine-tune metadata JSON ({"<image key>": {"caption": ..., "tags": ...}}) that
sd-scripts' merge_captions_to_metadata.py and merge_dd_tags_to_metadata.py write, and
training/data/metadata.py reads back. Same keys, same layout (indent 2, ASCII escapes);
entries already in the file are kept, and only the fields merged are replaced."""
import json
from dataclasses import dataclass, field
from pathlib import Path

from ...files.atomic import write_atomic
from .cleaning import clean_metadata
from .files import list_images, read_beside


@dataclass
class MergeResult:
    metadata: dict
    merged: dict[str, int] = field(default_factory=dict)  # "caption"/"tags" -> files read
    missing: dict[str, list[Path]] = field(default_factory=dict)  # images without that file


def image_key(image: Path, full_path: bool) -> str:
    """The absolute path with --full_path (several folders in one file), else the file stem."""
    return str(image.resolve()) if full_path else image.stem


def read_metadata(path: str | Path) -> dict:
    path = Path(path)
    try:
        metadata = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"metadata file {path} is not valid JSON: {e}") from e
    if not isinstance(metadata, dict):
        raise ValueError(f"metadata file {path} must hold a JSON object of image keys.")
    return metadata


def write_metadata(path: str | Path, metadata: dict) -> Path:
    return write_atomic(path, json.dumps(metadata, indent=2).encode("utf-8"), "metadata file")


def merge_files(metadata: dict, images: list[Path], extensions: dict[str, str | None], full_path: bool) -> MergeResult:
    """Reads each image's caption/tag files into `metadata` (a copy): extensions maps the
    field ("caption", "tags") to its file extension, None to skip it. An image without the
    file is listed in `missing` and its entry's field left as it was (sd-scripts stops there)."""
    result = MergeResult({k: dict(v) for k, v in metadata.items()})
    for name, ext in extensions.items():
        if not ext:
            continue
        result.merged[name], result.missing[name] = 0, []
        for image in images:
            text = read_beside(image, ext)
            if text is None:
                result.missing[name].append(image)
                continue
            result.metadata.setdefault(image_key(image, full_path), {})[name] = text
            result.merged[name] += 1
    return result


def merge_metadata(image_dir: str | Path, out_json: str | Path, in_json: str | Path | None = None,
                   caption_extension: str | None = ".caption", tags_extension: str | None = ".txt",
                   full_path: bool = False, recursive: bool = False, clean: bool = False) -> MergeResult:
    """merge_captions_to_metadata.py + merge_dd_tags_to_metadata.py (+ clean_captions_and_tags.py
    when clean) in one call. in_json defaults to out_json when that exists, as in sd-scripts."""
    if recursive and not full_path:
        raise ValueError("recursive needs full_path: stems from several folders would collide.")
    out_json = Path(out_json)
    if in_json is None and out_json.is_file():
        in_json = out_json
    metadata = read_metadata(in_json) if in_json else {}
    images = list_images(image_dir, recursive)
    result = merge_files(metadata, images, {"caption": caption_extension, "tags": tags_extension}, full_path)
    if clean:
        result.metadata = clean_metadata(result.metadata)
    write_metadata(out_json, result.metadata)
    return result
