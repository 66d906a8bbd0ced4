"""A look at a dataset before training: a contact sheet (each image with its caption), a
problems report (images per subset with repeats, unreadable images, missing or empty
captions, images below the training resolution, near-duplicate images by perceptual hash)
and histograms (subset, image size, aspect ratio, training bucket, caption length, tag
frequency)."""
import math
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from ..data.buckets import Bucketer
from ..data.config import DatasetConfig
from ..data.folders import folder_repeats
from ..lora.tools.chart import bar_chart
from .files import list_images, read_beside


@dataclass
class Entry:
    path: Path
    size: tuple[int, int] | None  # None: unreadable
    caption: str | None
    dhash: int | None = None


@dataclass
class Report:
    entries: list[Entry]
    unreadable: list[Path] = field(default_factory=list)
    missing_caption: list[Path] = field(default_factory=list)
    empty_caption: list[Path] = field(default_factory=list)
    too_small: list[tuple[Path, tuple[int, int]]] = field(default_factory=list)
    near_duplicates: list[tuple[Path, Path, int]] = field(default_factory=list)
    subsets: list["Subset"] = field(default_factory=list)  # empty: one folder of images

    def text(self) -> str:
        ok = [e for e in self.entries if e.size]
        lengths = [len(e.caption.split(",")) for e in ok if e.caption]
        lines = [f"{len(self.entries)} images, {len(ok)} readable"]
        if self.subsets:
            lines.append(f"{sum(s.images * s.repeats for s in self.subsets)} images per epoch: " + ", ".join(
                f"{s.name} {s.images} x {s.repeats} repeats" for s in self.subsets))
        if lengths:
            lines.append(f"caption parts (comma-separated): min {min(lengths)}, median {int(np.median(lengths))}, max {max(lengths)}")
        for title, items in (("unreadable images", self.unreadable), ("images without a caption file", self.missing_caption),
                             ("empty captions", self.empty_caption)):
            if items:
                lines.append(f"{title} ({len(items)}): " + ", ".join(p.name for p in items))
        if self.too_small:
            lines.append(f"images smaller than the training area ({len(self.too_small)}; they are upscaled): "
                         + ", ".join(f"{p.name} {w}x{h}" for p, (w, h) in self.too_small))
        if self.near_duplicates:
            lines.append(f"near-duplicate pairs ({len(self.near_duplicates)}): "
                         + ", ".join(f"{a.name} ~ {b.name} (distance {d})" for a, b, d in self.near_duplicates))
        if len(lines) <= 2 + bool(self.subsets):
            lines.append("no problems found")
        return "\n".join(lines)


@dataclass(frozen=True)
class Subset:
    name: str     # the folder's name, e.g. "10_sks dog"
    repeats: int
    images: int


def dataset_images(folder: Path) -> tuple[list[Path], list[Subset]]:
    """The images a look covers and the subsets they form: the `<repeats>_<tokens>` subfolders
    of an sd-scripts tree (images loose beside them are not trained and not counted), else
    the folder's own images with no subsets."""
    folders = sorted(p for p in Path(folder).iterdir() if p.is_dir() and folder_repeats(p.name))
    if not folders:
        return list_images(folder), []
    per_folder = [(d, list_images(d)) for d in folders]
    return ([p for _, images in per_folder for p in images],
            [Subset(d.name, folder_repeats(d.name), len(images)) for d, images in per_folder])


def dhash(image: Image.Image, size: int = 8) -> int:
    """64-bit difference hash: brighter/darker between horizontal neighbours at 9x8 grey."""
    grey = np.asarray(image.convert("L").resize((size + 1, size), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def inspect(images: list[Path], caption_extension: str = ".txt", resolution: tuple[int, int] | None = None,
            duplicate_distance: int = 4, subsets: list[Subset] | None = None) -> Report:
    """Reads every image and its caption; `resolution` (w, h): images with a smaller area are
    reported; pairs whose dHash differs in <= duplicate_distance bits are near-duplicates.
    `subsets` (dataset_images) are reported as they are."""
    report = Report([], subsets=list(subsets or []))
    for path in images:
        caption = read_beside(path, caption_extension)
        try:
            with Image.open(path) as im:
                im.load()
                entry = Entry(path, im.size, caption, dhash(im))
        except (OSError, UnidentifiedImageError):
            entry = Entry(path, None, caption)
            report.unreadable.append(path)
        report.entries.append(entry)
        if caption is None:
            report.missing_caption.append(path)
        elif not caption:
            report.empty_caption.append(path)
        if entry.size and resolution and entry.size[0] * entry.size[1] < resolution[0] * resolution[1]:
            report.too_small.append((path, entry.size))
    hashed = [e for e in report.entries if e.dhash is not None]
    for i, a in enumerate(hashed):
        for b in hashed[i + 1:]:
            d = bin(a.dhash ^ b.dhash).count("1")
            if d <= duplicate_distance:
                report.near_duplicates.append((a.path, b.path, d))
    return report


# equivalent square side sqrt(w * h) in px, and width / height: bins [edge, next edge)
SIDE_EDGES = (0, 256, 512, 768, 1024, 1536, 2048, math.inf)
ASPECT_EDGES = (0, 0.5, 0.75, 0.95, 1.05, 1.33, 2.0, math.inf)
WORD_EDGES = (0, 5, 10, 20, 40, 75, math.inf)  # caption length in words (75: about the token window)


@dataclass
class Histograms:
    """Counts per bin, in display order: images x repeats per subset (none for a plain
    folder); every fixed bin for sizes, aspects and caption lengths; the buckets that occur
    (by aspect); the `top` most frequent tags."""

    subsets: dict[str, int]
    sizes: dict[str, int]
    aspects: dict[str, int]
    buckets: dict[str, int]
    caption_words: dict[str, int]
    tags: dict[str, int]

    def text(self) -> str:
        return "\n".join(f"{title}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
                         for title, counts in self._charts() if counts)

    def _charts(self) -> list[tuple[str, dict[str, int]]]:
        return [("images x repeats per subset", self.subsets), ("image size (sqrt of area, px)", self.sizes), ("aspect ratio (width / height)", self.aspects),
                ("training bucket", self.buckets), ("caption length (words)", self.caption_words),
                ("tag frequency", self.tags)]


def _label(edges: tuple, i: int, fmt) -> str:
    lo, hi = edges[i], edges[i + 1]
    return f">= {fmt(lo)}" if hi == math.inf else f"{fmt(lo)}-{fmt(hi)}" if lo else f"< {fmt(hi)}"


def _binned(values: list[float], edges: tuple, fmt=lambda v: f"{v:g}") -> dict[str, int]:
    counts = Counter(next(i for i in range(len(edges) - 1) if v < edges[i + 1]) for v in values)
    return {_label(edges, i, fmt): counts.get(i, 0) for i in range(len(edges) - 1)}


def bucket_dataset(resolution: int) -> DatasetConfig:
    """The bucketing the histogram assumes: sd-scripts' enable_bucket with steps of 64, from a
    quarter to twice the resolution (SDXL users' 256-2048 at 1024)."""
    low = max(64, resolution // 4 - resolution // 4 % 64)
    return DatasetConfig(resolution=(resolution, resolution), enable_bucket=True, min_bucket_reso=low,
                         max_bucket_reso=max(low, 2 * resolution - 2 * resolution % 64), bucket_reso_steps=64)


def histograms(report: Report, resolution: int | None = None, top: int = 30) -> Histograms:
    """The numbers behind the charts. Buckets (with `resolution`) are where training would put
    each image (bucket_dataset); tags are the comma-separated parts, lowercased, as sd-scripts
    counts them for ss_tag_frequency."""
    sizes = [e.size for e in report.entries if e.size]
    buckets: Counter = Counter()
    if resolution:
        bucketer = Bucketer(bucket_dataset(resolution))
        buckets.update(bucketer.place(s).bucket for s in sizes)
    captions = [e.caption for e in report.entries if e.caption is not None]
    tags = Counter(t.strip().lower() for c in captions for t in c.split(",") if t.strip())
    return Histograms(
        subsets={s.name: s.images * s.repeats for s in report.subsets},
        sizes=_binned([math.sqrt(w * h) for w, h in sizes], SIDE_EDGES, lambda v: f"{v:.0f}"),
        aspects=_binned([w / h for w, h in sizes], ASPECT_EDGES),
        buckets={f"{w}x{h}": n for (w, h), n in sorted(buckets.items(), key=lambda kv: kv[0][0] / kv[0][1])},
        caption_words=_binned([len(c.split()) for c in captions], WORD_EDGES),
        tags=dict(sorted(tags.items(), key=lambda kv: (-kv[1], kv[0]))[:top]),
    )


LABEL_PX = 80  # "1024x1024", "1536-2048" and most tags fit upright


def histogram_image(h: Histograms, width: int = 640) -> torch.Tensor:
    """The histograms as one IMAGE (1, H, W, 3), one bar chart under the other (empty ones left out)."""
    charts = [bar_chart({k: float(v) for k, v in counts.items()}, title, width, label_px=LABEL_PX)
              for title, counts in h._charts() if counts]
    return torch.cat(charts, dim=1) if charts else bar_chart({"(no images)": 0.0}, "histograms", width)


def cell_header(entry: Entry, bucketer: Bucketer | None = None) -> str:
    """A contact-sheet cell's first line: name, size and (with a bucketer) the training bucket."""
    if not entry.size:
        return f"{entry.path.name} UNREADABLE"
    w, h = entry.size
    if bucketer is None:
        return f"{entry.path.name} {w}x{h}"
    bw, bh = bucketer.place(entry.size).bucket
    return f"{entry.path.name} {w}x{h} -> {bw}x{bh}"


def contact_sheet(report: Report, columns: int = 4, thumb: int = 256, caption_lines: int = 4,
                  resolution: int | None = None) -> Image.Image:
    """Thumbnails (aspect kept, on grey) with file name, size, the training bucket (with
    `resolution`, as bucket_dataset places it) and the caption's first lines."""
    bucketer = Bucketer(bucket_dataset(resolution)) if resolution else None
    font = ImageFont.load_default(size=max(10, thumb // 18))
    line_h = font.getbbox("Ag")[3] + 2
    chars = max(8, int(thumb / (font.getlength("a") or 6)))
    cell_h = thumb + line_h * (caption_lines + 1) + 4
    count = max(1, len(report.entries))
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    sheet = Image.new("RGB", (columns * thumb, rows * cell_h), (32, 32, 32))
    draw = ImageDraw.Draw(sheet)
    for i, e in enumerate(report.entries):
        x, y = (i % columns) * thumb, (i // columns) * cell_h
        if e.size:
            with Image.open(e.path) as im:
                im = im.convert("RGB")
                scale = (thumb - 4) / max(im.size)  # small pictures enlarged too: the sheet is for looking
                im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)
                sheet.paste(im, (x + (thumb - im.width) // 2, y + (thumb - im.height) // 2))
        draw.text((x + 2, y + thumb), cell_header(e, bucketer)[:chars], fill=(255, 220, 120), font=font)
        text = "(no caption)" if e.caption is None else (e.caption or "(empty caption)")
        for j, line in enumerate(textwrap.wrap(text, chars)[:caption_lines]):
            draw.text((x + 2, y + thumb + line_h * (j + 1)), line, fill=(230, 230, 230), font=font)
    return sheet
