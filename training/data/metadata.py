"""Fine-tune style subsets: captions and tags from an sd-scripts metadata JSON
(`{"<image key>": {"caption": "...", "tags": "..."}}`, as merge_captions_to_metadata.py writes).

An image key is a path (absolute, or relative to `image_dir`, else to the JSON's folder), with
or without its extension.
"""
import json
from pathlib import Path

from .config import SubsetConfig
from .errors import DatasetError, name_list
from .images import IMAGE_EXTENSIONS, ImageItem, read_sizes
from .pairing import check_guide_sizes, pair_guides


def scan_metadata(subset: SubsetConfig) -> list[ImageItem]:
    path = subset.metadata_file
    if not path.is_file():
        raise DatasetError(f"metadata_file {path} does not exist.")
    try:
        metadata = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"metadata_file {path} is not valid JSON: {e}") from e
    if not isinstance(metadata, dict) or not metadata:
        raise DatasetError(f"metadata_file {path} must be a non-empty JSON object mapping image keys to {{\"caption\", \"tags\"}}.")
    base = subset.image_dir or path.parent
    found, missing, captions = {}, [], {}
    for key, entry in metadata.items():
        image = _find_image(base, key)
        if image is None:
            missing.append(key)
            continue
        found[key] = image
        captions[image] = _caption(entry)
    if missing:
        raise DatasetError(f"Entries of {path} whose image is not found in {base}:\n" + name_list(missing))
    images = list(found.values())
    uncaptioned = [str(p) for p in images if captions[p] is None]
    if uncaptioned and subset.class_tokens is None:
        raise DatasetError(f"Entries of {path} with neither caption nor tags:\n" + name_list(uncaptioned))
    sizes = read_sizes(images)
    guides = pair_guides(images, subset.conditioning_data_dir, str(base)) if subset.conditioning_data_dir else {}
    items = [ImageItem(name=str(p), source=p, size=sizes[p], caption=captions[p], guide=guides.get(p)) for p in images]
    check_guide_sizes(items)
    return items


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
