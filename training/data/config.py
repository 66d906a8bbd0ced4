"""Dataset and subset options, and the sd-scripts dataset TOML reader.

A TOML has the layers `[general]` -> `[[datasets]]` -> `[[datasets.subsets]]`; a key set on
a lower layer overrides the same key on a higher one, and every option except the
per-subset ones (`image_dir`, `is_reg`, `conditioning_data_dir`, `mask_dir`, `metadata_file`) may sit on
any layer, as in sd-scripts. Relative paths are resolved against the TOML file's folder.

    datasets = load_dataset_toml("my_set.toml", fallback={"resolution": 1024})

`fallback` is the lowest layer (what sd-scripts' command-line options supply).
"""
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DatasetError
from .images import ImageItem

try:
    import tomllib
except ImportError:  # Python 3.10
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None


@dataclass
class SubsetConfig:
    """Where one group of images comes from and how its samples are augmented and captioned.

    Exactly one source: `image_dir` (DreamBooth style, optionally with caption files),
    `metadata_file` (fine-tune style JSON; `image_dir` is then where relative keys live), or
    `items` (in-graph lists, see lists.py).

    Loss masks (sd-scripts' masked loss): `alpha_mask` takes each image's alpha channel,
    `mask_dir` a folder of mask images paired by basename (red channel; white trains, black
    is ignored). A subset with either trains on the masked loss whatever masked_loss says, as
    in sd-scripts.
    """

    image_dir: Path | None = None
    metadata_file: Path | None = None
    items: list[ImageItem] | None = None
    conditioning_data_dir: Path | None = None
    mask_dir: Path | None = None
    alpha_mask: bool = False
    is_reg: bool = False
    num_repeats: int = 1
    class_tokens: str | None = None
    caption_extension: str = ".caption"
    caption_separator: str = ","
    shuffle_caption: bool = False
    keep_tokens: int = 0
    keep_tokens_separator: str = ""
    caption_prefix: str | None = None
    caption_suffix: str | None = None
    caption_dropout_rate: float = 0.0
    caption_dropout_every_n_epochs: int = 0
    caption_tag_dropout_rate: float = 0.0
    flip_aug: bool = False
    color_aug: bool = False
    random_crop: bool = False

    @property
    def name(self) -> str:
        """Short name for statistics (ss_tag_frequency) and messages."""
        if self.image_dir is not None:
            return self.image_dir.name
        if self.metadata_file is not None:
            return self.metadata_file.name
        return "in-graph list"

    @property
    def location(self) -> str:
        """Full location for error messages."""
        for p in (self.image_dir, self.metadata_file):
            if p is not None:
                return str(p)
        return "in-graph image list"

    @property
    def changes_pixels_each_step(self) -> bool:
        """True when the pixels differ between epochs, so latents cannot be cached."""
        return self.color_aug or self.random_crop

    @property
    def varies_captions(self) -> bool:
        return (
            self.shuffle_caption
            or self.caption_dropout_rate > 0
            or self.caption_dropout_every_n_epochs > 0
            or self.caption_tag_dropout_rate > 0
        )


@dataclass
class DatasetConfig:
    """Images that are bucketed and batched together. resolution is (width, height)."""

    subsets: list[SubsetConfig] = field(default_factory=list)
    resolution: tuple[int, int] = (512, 512)
    batch_size: int = 1
    enable_bucket: bool = False
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False


_DATASET_KEYS = {
    "resolution": (int, list),
    "batch_size": int,
    "enable_bucket": bool,
    "min_bucket_reso": int,
    "max_bucket_reso": int,
    "bucket_reso_steps": int,
    "bucket_no_upscale": bool,
}
# Subset options that may also be given on [general] or [[datasets]] as defaults.
_SUBSET_ASCENDABLE_KEYS = {
    "num_repeats": int,
    "class_tokens": str,
    "caption_extension": str,
    "caption_separator": str,
    "shuffle_caption": bool,
    "keep_tokens": int,
    "keep_tokens_separator": str,
    "caption_prefix": str,
    "caption_suffix": str,
    "caption_dropout_rate": (float, int),
    "caption_dropout_every_n_epochs": int,
    "caption_tag_dropout_rate": (float, int),
    "flip_aug": bool,
    "color_aug": bool,
    "random_crop": bool,
    "alpha_mask": bool,
}
_SUBSET_ONLY_KEYS = {"image_dir": str, "is_reg": bool, "conditioning_data_dir": str, "mask_dir": str, "metadata_file": str}
_PATH_KEYS = ("image_dir", "conditioning_data_dir", "mask_dir", "metadata_file")
# sd-scripts keys this trainer does not implement: named in the error instead of "unknown".
_UNSUPPORTED_KEYS = {
    "face_crop_aug_range", "token_warmup_min", "token_warmup_step", "secondary_separator",
    "enable_wildcard", "network_multiplier", "cache_info", "custom_attributes",
}


def load_dataset_toml(path: str | Path, fallback: dict | None = None) -> list[DatasetConfig]:
    """Read an sd-scripts dataset TOML into validated DatasetConfigs (paths absolute)."""
    path = Path(path).expanduser().absolute()
    if not path.is_file():
        raise DatasetError(f"Dataset config {path} does not exist (or is not a file).")
    if tomllib is None:
        raise DatasetError("Reading a dataset TOML needs Python 3.11+ or the package `tomli`.")
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"Dataset config {path} is not valid TOML: {e}") from e
    return datasets_from_dict(doc, base_dir=path.parent, source=str(path), fallback=fallback)


def datasets_from_dict(doc: dict, base_dir: Path, source: str = "dataset config", fallback: dict | None = None) -> list[DatasetConfig]:
    """The layered merge of load_dataset_toml, on an already parsed document."""
    _check_keys(doc, {"general", "datasets"}, f"{source}: top level")
    general = doc.get("general", {})
    _check_table(general, f"{source}: [general]")
    _check_keys(general, {**_DATASET_KEYS, **_SUBSET_ASCENDABLE_KEYS}, f"{source}: [general]")
    fallback = fallback or {}
    _check_keys(fallback, {**_DATASET_KEYS, **_SUBSET_ASCENDABLE_KEYS}, f"{source}: fallback options")
    datasets = doc.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise DatasetError(f"{source}: no [[datasets]] table; at least one dataset with [[datasets.subsets]] is needed.")

    result = []
    for i, ds in enumerate(datasets, 1):
        where = f"{source}: [[datasets]] #{i}"
        _check_table(ds, where)
        _check_keys(ds, {**_DATASET_KEYS, **_SUBSET_ASCENDABLE_KEYS, "subsets": list}, where)
        subsets = ds.get("subsets")
        if not isinstance(subsets, list) or not subsets:
            raise DatasetError(f"{where} has no [[datasets.subsets]].")
        ds_options = {k: v for k, v in ds.items() if k != "subsets"}
        layered = {**fallback, **general, **ds_options}
        subset_configs = []
        for j, sub in enumerate(subsets, 1):
            sub_where = f"{where} [[datasets.subsets]] #{j}"
            _check_table(sub, sub_where)
            _check_keys(sub, {**_SUBSET_ASCENDABLE_KEYS, **_SUBSET_ONLY_KEYS}, sub_where)
            merged = {k: v for k, v in layered.items() if k in _SUBSET_ASCENDABLE_KEYS}
            merged.update(sub)
            subset_configs.append(_subset_from_options(merged, base_dir, sub_where))
        ds_values = {k: v for k, v in layered.items() if k in _DATASET_KEYS}
        if "resolution" not in ds_values:
            raise DatasetError(f"{where}: `resolution` is not set (in [[datasets]], [general] or the trainer's options).")
        ds_values["resolution"] = _resolution(ds_values["resolution"], where)
        dataset = DatasetConfig(subsets=subset_configs, **ds_values)
        check_dataset(dataset, where)
        result.append(dataset)
    return result


def _subset_from_options(options: dict, base_dir: Path, where: str) -> SubsetConfig:
    values = dict(options)
    for key in _PATH_KEYS:
        if key in values:
            values[key] = (base_dir / Path(values[key]).expanduser()).absolute()
    if "image_dir" not in values and "metadata_file" not in values:
        raise DatasetError(f"{where}: needs `image_dir` (or `metadata_file`).")
    if "caption_dropout_rate" in values:
        values["caption_dropout_rate"] = float(values["caption_dropout_rate"])
    if "caption_tag_dropout_rate" in values:
        values["caption_tag_dropout_rate"] = float(values["caption_tag_dropout_rate"])
    subset = SubsetConfig(**values)
    check_subset(subset, where)
    return subset


def _resolution(value, where: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise DatasetError(f"{where}: `resolution` must be an integer or [width, height], got {value!r}.")
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return (int(value[0]), int(value[1]))
    raise DatasetError(f"{where}: `resolution` must be an integer or [width, height], got {value!r}.")


def _check_table(value, where: str) -> None:
    if not isinstance(value, dict):
        raise DatasetError(f"{where} must be a table, got {type(value).__name__}.")


def _check_keys(table: dict, allowed: dict | set, where: str) -> None:
    for key, value in table.items():
        if key in _UNSUPPORTED_KEYS:
            raise DatasetError(f"{where}: sd-scripts option `{key}` is not supported by this trainer; remove it.")
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            raise DatasetError(f"{where}: unknown key `{key}` (this layer accepts: {known}).")
        expected = allowed[key] if isinstance(allowed, dict) else None
        if expected is None:
            continue
        types = expected if isinstance(expected, tuple) else (expected,)
        if isinstance(value, bool) and bool not in types:
            ok = False
        else:
            ok = isinstance(value, types)
        if not ok:
            names = " or ".join(t.__name__ for t in types)
            raise DatasetError(f"{where}: `{key}` must be {names}, got {value!r}.")


def check_subset(subset: SubsetConfig, where: str) -> None:
    """Range checks shared by every way a subset is built."""
    sources = [s for s in (subset.image_dir, subset.items) if s is not None]
    if len(sources) > 1:
        raise DatasetError(f"{where}: give either `image_dir` or in-graph images, not both.")
    if subset.items is not None and any(p is not None for p in (subset.metadata_file, subset.conditioning_data_dir, subset.mask_dir)):
        raise DatasetError(f"{where}: in-graph images carry their own captions, guides and masks; "
                           "metadata_file/conditioning_data_dir/mask_dir do not apply.")
    if subset.alpha_mask and subset.mask_dir is not None:
        raise DatasetError(f"{where}: give one loss-mask source: `alpha_mask` (the image's alpha channel) or `mask_dir`, not both.")
    if subset.num_repeats < 1:
        raise DatasetError(f"{where}: `num_repeats` must be at least 1, got {subset.num_repeats}.")
    if subset.keep_tokens < 0:
        raise DatasetError(f"{where}: `keep_tokens` must be >= 0, got {subset.keep_tokens}.")
    if subset.caption_dropout_every_n_epochs < 0:
        raise DatasetError(f"{where}: `caption_dropout_every_n_epochs` must be >= 0.")
    for key in ("caption_dropout_rate", "caption_tag_dropout_rate"):
        rate = getattr(subset, key)
        if not 0.0 <= rate <= 1.0:
            raise DatasetError(f"{where}: `{key}` must be between 0 and 1, got {rate}.")
    if not subset.caption_separator:
        raise DatasetError(f"{where}: `caption_separator` must not be empty.")
    if subset.conditioning_data_dir is not None and subset.random_crop:
        raise DatasetError(
            f"{where}: `random_crop` cannot be used with `conditioning_data_dir`. A guide image must be "
            "cropped exactly like its image, and guide subsets use the center crop so that image, guide "
            "and cached latents stay aligned (sd-scripts' ControlNet/LLLite datasets refuse it too)."
        )


def check_dataset(dataset: DatasetConfig, where: str) -> None:
    """Range checks for dataset options; bucket sides must stay whole latent pixels (x8)."""
    w, h = dataset.resolution
    if w <= 0 or h <= 0:
        raise DatasetError(f"{where}: `resolution` must be positive, got {dataset.resolution}.")
    if dataset.batch_size < 1:
        raise DatasetError(f"{where}: `batch_size` must be at least 1, got {dataset.batch_size}.")
    if not dataset.subsets:
        raise DatasetError(f"{where}: has no subsets.")
    if dataset.enable_bucket:
        steps = dataset.bucket_reso_steps
        if steps <= 0 or steps % 8:
            raise DatasetError(f"{where}: `bucket_reso_steps` must be a positive multiple of 8 (64, or 32), got {steps}.")
        if dataset.min_bucket_reso > dataset.max_bucket_reso:
            raise DatasetError(f"{where}: `min_bucket_reso` ({dataset.min_bucket_reso}) is larger than `max_bucket_reso` ({dataset.max_bucket_reso}).")
        for key in ("min_bucket_reso", "max_bucket_reso"):
            if getattr(dataset, key) % steps:
                raise DatasetError(f"{where}: `{key}` ({getattr(dataset, key)}) must be divisible by `bucket_reso_steps` ({steps}).")
    elif w % 8 or h % 8:
        raise DatasetError(f"{where}: `resolution` {w}x{h} must be divisible by 8 (the VAE's downscale) when bucketing is off.")
    for i, subset in enumerate(dataset.subsets, 1):
        check_subset(subset, f"{where} subset #{i} ({subset.location})")
