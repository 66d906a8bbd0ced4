"""Fine-tune style subsets: captions and tags from an sd-scripts metadata JSON
(`{"<image key>": {"caption": "...", "tags": "..."}}`, as merge_captions_to_metadata.py writes).

An image key is a path (absolute, or relative to `image_dir`, else to the JSON's folder), with
or without its extension. When every entry has the `train_resolution` [w, h] that
prepare_buckets_latents.py adds, each image trains at that bucket (as sd-scripts' fine-tune
dataset then does, whatever the dataset's resolution), so the latents it cached beside the
images fit and are reused (npz_latents.py); when some lack it, sd-scripts ignores it and so
does this.
"""
import dataclasses
import json
import logging
from pathlib import Path

from .config import SubsetConfig
from .errors import MISSING_PATH, DatasetProblems, Problem, collecting
from .images import IMAGE_EXTENSIONS, ImageItem, read_sizes
from .pairing import paired_items

INVALID_METADATA = Problem(
    "Metadata files that cannot be read",
    'a metadata_file must be a UTF-8 JSON object mapping image keys to {"caption": ..., "tags": ...}',
)
MISSING_IMAGES = Problem("Metadata entries whose image is not found", "fix the key, or add the image")
log = logging.getLogger(__name__)
NO_CAPTION = Problem("Metadata entries with neither caption nor tags", "add a caption or tags, or give the subset class tokens")


def scan_metadata(subset: SubsetConfig, problems: DatasetProblems | None = None) -> list[ImageItem]:
    """The images a metadata file lists, with their captions and guides. Problems go to
    `problems`; the entries they concern are left out."""
    with collecting(problems) as problems:
        path = subset.metadata_file
        if not path.is_file():
            problems.add(MISSING_PATH, path, "metadata_file")
            return []
        try:
            metadata = json.loads(path.read_text(encoding="utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            problems.add(INVALID_METADATA, path, f"not valid JSON: {e}")
            return []
        if not isinstance(metadata, dict) or not metadata:
            problems.add(INVALID_METADATA, path, "not a non-empty JSON object")
            return []
        base = subset.image_dir or path.parent
        captions, buckets = {}, {}
        for key, entry in metadata.items():
            image = _find_image(base, key)
            if image is None:
                problems.add(MISSING_IMAGES, key, f"listed in {path}, looked in {base}", (path,))
                continue
            captions[image] = _caption(entry)
            buckets[image] = _train_resolution(entry)
            if captions[image] is None and subset.class_tokens is None:
                problems.add(NO_CAPTION, key, f"in {path}", (path,))
        images = list(captions)
        sizes = read_sizes(images, problems)
        items = paired_items(subset, images, sizes, captions, str(base), problems)
        if not buckets or None in buckets.values():
            return items
        log.info("%s: every entry has a train_resolution (prepare_buckets_latents.py): training at those buckets", path)
        return [dataclasses.replace(i, bucket=buckets[i.source]) for i in items]


def _train_resolution(entry) -> tuple[int, int] | None:
    value = entry.get("train_resolution") if isinstance(entry, dict) else None
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int) and v >= 8 for v in value):
        return int(value[0]), int(value[1])
    return None


def _find_image(base: Path, key: str) -> Path | None:
    candidate = base / key
    if candidate.is_file() and candidate.suffix.lower() in IMAGE_EXTENSIONS:
        return candidate
    for ext in IMAGE_EXTENSIONS:
        for e in (ext, ext.upper()):
            p = base / f"{key}{e}"
            if p.is_file():
                return p
    return None


def _caption(entry) -> str | None:
    """sd-scripts joins caption and tags with ", "; either alone is used as is."""
    if not isinstance(entry, dict):
        return None
    caption, tags = entry.get("caption"), entry.get("tags")
    if caption and tags:
        return f"{caption}, {tags}"
    return caption or tags or None
