"""WD14 tags (SmilingWolf's wd-*-tagger-v3, and the ONNX-only v2 folders) with the options of
sd-scripts' finetune/tag_images_by_wd14_tagger.py: general and character thresholds, rating
tag first or last, character tags first, character "(series)" expansion, undesired tags,
always-first tags, underscores removed, tag replacement, a tag frequency table, and the
JSON / JSONL metadata file of --output_path.

v3 folders run through timm from their `model.safetensors` + `config.json` (the same network
as their `model.onnx`, so no onnxruntime is needed and the model runs batched on ComfyUI's
device); a folder with only `model.onnx` (v2) runs through onnxruntime when it is installed.
Images are prepared as sd-scripts does: alpha over white, padded to a white square, resized
(area when shrinking, Lanczos when enlarging) to the model's size, BGR."""
import csv
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .model_files import TAGGERS, ModelFileMissing, locate
from .resize import resize_pixels

RATING, GENERAL, CHARACTER = "9", "0", "4"  # selected_tags.csv categories


@dataclass(frozen=True)
class TagOptions:
    general_threshold: float = 0.35
    character_threshold: float = 0.35
    use_rating_tags: bool = False
    use_rating_tags_as_last_tag: bool = False
    character_tags_first: bool = False
    character_tag_expand: bool = False
    remove_underscore: bool = False
    undesired_tags: str = ""
    always_first_tags: str = ""
    caption_separator: str = ", "
    batch_size: int = 8
    tag_replacement: str = ""  # "source1,target1;source2,target2", `\,` and `\;` escaped


@dataclass
class TagResult:
    tags: list[list[str]]
    frequency: Counter = field(default_factory=Counter)

    def frequency_table(self) -> list[tuple[str, int]]:
        """Most frequent first; ties in the order the tags were first found (as sd-scripts)."""
        return sorted(self.frequency.items(), key=lambda kv: kv[1], reverse=True)


@dataclass(frozen=True)
class Labels:
    names: list[str]
    categories: list[str]

    @classmethod
    def read(cls, path: Path) -> "Labels":
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
        if not rows or rows[0][:3] != ["tag_id", "name", "category"]:
            raise ValueError(f"{path} must start with the header tag_id,name,category (selected_tags.csv).")
        return cls([r[1] for r in rows[1:]], [r[2] for r in rows[1:]])


def parse_tag_replacement(text: str) -> dict[str, str]:
    r"""sd-scripts' --tag_replacement "a,b;c,d" -> {"a": "b", "c": "d"}; a `,` or `;` inside a tag
    is written `\,` / `\;`; spaces around a tag are dropped (no tag has them). A part that is
    not one source,target pair is refused."""
    if not text.strip():
        return {}
    escaped = text.replace("\\,", "\0c").replace("\\;", "\0s")
    pairs = {}
    for part in escaped.split(";"):
        tags = part.split(",")
        if len(tags) != 2:
            raise ValueError(f"tag_replacement {text!r}: {part!r} is not `source,target` (pairs are separated by `;`, "
                             "a comma or semicolon inside a tag is written \\, or \\;)")
        source, target = (t.replace("\0c", ",").replace("\0s", ";").strip() for t in tags)
        pairs[source] = target
    return pairs


def _display_names(labels: Labels, options: TagOptions) -> list[str]:
    """The label names as written: character expansion, underscores, then replacements, in
    sd-scripts' order. (sd-scripts 48d368fa's process_tag_replacement rebinds its `tags`
    argument inside the loop, so it replaces nothing for these CSV labels; this does what its
    help text says.)"""
    names = list(labels.names)
    replacements = parse_tag_replacement(options.tag_replacement)
    for i, (name, category) in enumerate(zip(names, labels.categories)):
        if options.character_tag_expand and category == CHARACTER and name.endswith(")"):
            parts = name.split("(")
            character = "(".join(parts[:-1]).removesuffix("_")
            name = character + options.caption_separator + parts[-1].replace(")", "")
        if options.remove_underscore and len(name) > 3:  # short ones are emoticons such as ^_^
            name = name.replace("_", " ")
        names[i] = replacements.get(name, name)
    return names


def select_tags(probs: np.ndarray, labels: Labels, options: TagOptions, frequency: Counter | None = None,
                names: list[str] | None = None) -> list[str]:
    """One image's tags from its probabilities, in sd-scripts' order: general and character
    tags in label order (characters each moved to the front with character_tags_first), the
    most likely rating first or last, then always_first_tags moved to the front."""
    names = names or _display_names(labels, options)
    sep = options.caption_separator.strip() or options.caption_separator
    undesired = {t.strip() for t in options.undesired_tags.split(sep) if t.strip()}
    frequency = Counter() if frequency is None else frequency
    tags: list[str] = []
    for i, (name, category) in enumerate(zip(names, labels.categories)):
        if name in undesired:
            continue
        if category == GENERAL and probs[i] >= options.general_threshold:
            tags.append(name)
        elif category == CHARACTER and probs[i] >= options.character_threshold:
            tags.insert(0, name) if options.character_tags_first else tags.append(name)
        else:
            continue
        frequency[name] += 1
    ratings = [i for i, c in enumerate(labels.categories) if c == RATING]
    if ratings and (options.use_rating_tags or options.use_rating_tags_as_last_tag):
        rating = names[max(ratings, key=lambda i: probs[i])]  # first of equal maxima, as argmax
        if rating not in undesired:
            frequency[rating] += 1
            tags.insert(0, rating) if options.use_rating_tags else tags.append(rating)
    for tag in (t for t in options.always_first_tags.split(sep) if t.strip()):
        if tag in tags:
            tags.remove(tag)
            tags.insert(0, tag)
    return tags


def prepare(image: Image.Image, size: int) -> np.ndarray:
    """(size, size, 3) float32 BGR 0..255, as sd-scripts' preprocess_image."""
    if image.mode in ("RGBA", "LA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, (255, 255, 255))
        image.paste(rgba, mask=rgba.split()[3])
    else:
        image = image.convert("RGB")
    pixels = np.asarray(image)
    h, w = pixels.shape[:2]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    pixels = np.pad(pixels, ((top, side - h - top), (left, side - w - left), (0, 0)), constant_values=255)
    pixels = resize_pixels(pixels, size, size, "area" if side >= size else "lanczos4")
    return np.ascontiguousarray(pixels[:, :, ::-1]).astype(np.float32)


class Tagger:
    """A tagger folder: timm (model.safetensors + config.json) or onnxruntime (model.onnx)."""

    def __init__(self, folder: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.folder = folder
        self.labels = Labels.read(folder / "selected_tags.csv")
        if (folder / "model.safetensors").is_file():
            self._load_timm(device, dtype)
        else:
            self._load_onnx()

    def _load_timm(self, device, dtype) -> None:
        import safetensors.torch
        import timm

        config = json.loads((self.folder / "config.json").read_text(encoding="utf-8"))
        pretrained = config.get("pretrained_cfg", {})
        self.size = int(pretrained.get("input_size", [3, 448, 448])[-1])
        self.mean = torch.tensor(pretrained.get("mean", [0.5] * 3), dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(pretrained.get("std", [0.5] * 3), dtype=torch.float32).view(1, 3, 1, 1)
        model = timm.create_model(config["architecture"], pretrained=False, num_classes=config["num_classes"],
                                  **config.get("model_args", {}))
        model.load_state_dict(safetensors.torch.load_file(self.folder / "model.safetensors"))
        self.model = model.to(device=device, dtype=dtype).eval()
        self.session = None

    def _load_onnx(self) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise ModelFileMissing(
                f"{self.folder} has only model.onnx (a v2 tagger), which needs onnxruntime: install it "
                "(pip install onnxruntime, or onnxruntime-gpu), or use a v3 tagger folder with model.safetensors + "
                "config.json (e.g. https://huggingface.co/SmilingWolf/wd-vit-tagger-v3), which runs without it.") from None
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                     if p in onnxruntime.get_available_providers()]
        self.session = onnxruntime.InferenceSession(str(self.folder / "model.onnx"), providers=providers)
        shape = self.session.get_inputs()[0].shape  # NHWC
        self.size = int(shape[1]) if isinstance(shape[1], int) else 448
        self.model = None

    @torch.inference_mode()
    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """(N, size, size, 3) BGR 0..255 -> (N, tags) probabilities."""
        if self.session is not None:
            inp = self.session.get_inputs()[0].name
            return self.session.run(None, {inp: batch.astype(np.float32)})[0]
        p = next(self.model.parameters())
        x = (torch.from_numpy(batch).permute(0, 3, 1, 2) / 255.0 - self.mean) / self.std
        return torch.sigmoid(self.model(x.to(p.device, p.dtype)).float()).cpu().numpy()

    def tag(self, images: list[Image.Image], options: TagOptions = TagOptions(),
            progress: Callable[[int, int], None] | None = None,
            check_interrupt: Callable[[], None] | None = None) -> TagResult:
        result = TagResult([])
        names = _display_names(self.labels, options)  # once, not per image (10861 tags)
        step = max(1, options.batch_size)
        for start in range(0, len(images), step):
            if check_interrupt is not None:
                check_interrupt()
            batch = np.stack([prepare(im, self.size) for im in images[start:start + step]])
            for probs in self.probabilities(batch):
                result.tags.append(select_tags(probs, self.labels, options, result.frequency, names))
            if progress is not None:
                progress(len(result.tags), len(images))
        return result


def tags_metadata(keys: list[str], texts: list[str], sizes: list[tuple[int, int]], jsonl: bool = False) -> bytes:
    """What sd-scripts' --output_path writes: JSON {image path: {"tags", "image_size": [w, h]}}
    (indent 4, UTF-8 unescaped), or with a .jsonl path one {"image_path", "caption",
    "image_size"} object per line."""
    if jsonl:
        return "".join(json.dumps({"image_path": k, "caption": t, "image_size": list(s)}) + "\n"
                       for k, t, s in zip(keys, texts, sizes)).encode("utf-8")
    entries = {k: {"tags": t, "image_size": list(s)} for k, t, s in zip(keys, texts, sizes)}
    return json.dumps(entries, ensure_ascii=False, indent=4).encode("utf-8")


REQUIRED_FILES = ("selected_tags.csv", "model.safetensors|model.onnx")

_LOADED: dict[tuple, Tagger] = {}


def load_tagger(name: str, dirs: list[str], device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> Tagger:
    folder = locate(name, dirs, REQUIRED_FILES, TAGGERS, "taggers")
    if (folder / "model.safetensors").is_file() and not (folder / "config.json").is_file():
        raise ModelFileMissing(f"config.json is missing in models/taggers/{name}/ ({folder}): it comes with "
                               "model.safetensors in the v3 repositories (e.g. https://huggingface.co/SmilingWolf/wd-vit-tagger-v3).")
    weights = folder / ("model.safetensors" if (folder / "model.safetensors").is_file() else "model.onnx")
    key = (str(folder), weights.stat().st_mtime_ns, str(device), dtype)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = Tagger(folder, device, dtype)
    return _LOADED[key]
