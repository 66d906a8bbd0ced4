"""The one reader/writer of kohya LoRA files (.safetensors).

Layout: `<module>.lora_down.weight`, `<module>.lora_up.weight`, `<module>.alpha` (0-d),
all in the save precision; metadata strings: sd-scripts' ss_* training keys,
sshs_model_hash / sshs_legacy_hash (the hashes sd-webui-additional-networks indexes by),
and SAI modelspec.* keys. Files are written to a temporary file beside the target and
renamed over it, so a failed save leaves the previous file as it was.
"""
import datetime
import hashlib
import json
import os

import safetensors
import safetensors.torch
import torch

from ...files.atomic import write_atomic

SAVE_PRECISIONS = {"float": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")

# Facts only the training loop knows; every file carries all of them (tools show them).
TRAINING_FACTS = (
    "sd_model_name", "resolution", "learning_rate", "unet_lr", "text_encoder_lr", "optimizer",
    "lr_scheduler", "num_train_images", "num_epochs", "steps", "batch_size_per_device",
    "mixed_precision", "seed", "datasets", "bucket_info", "tag_frequency", "training_started_at",
    "training_finished_at", "output_name", "noise_offset", "min_snr_gamma", "prediction_type",
)
_BASE_MODEL = {
    # ss_base_model_version as sd-scripts writes it; modelspec architecture / implementation
    # as sd-scripts' sai_model_spec.py sets them for LoRAs.
    "sdxl": ("sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora", "https://github.com/Stability-AI/generative-models"),
    "sd15": ("sd_v1", "stable-diffusion-v1/lora", "diffusers"),
}


def _text(value) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def training_metadata(facts: dict) -> dict[str, str]:
    """ss_* and modelspec title/date/resolution/prediction strings from the loop's facts.

    facts holds every key of TRAINING_FACTS (None where a value does not apply: written
    as "None" like sd-scripts does); resolution is (width, height) or one int; datasets,
    bucket_info, tag_frequency may be dicts/lists (stored as JSON); training_*_at are
    time.time() values; prediction_type is "epsilon" or "v". Extra keys are kept as ss_<key>."""
    missing = [k for k in TRAINING_FACTS if k not in facts]
    if missing:
        raise ValueError(f"LoRA metadata: training facts missing: {', '.join(missing)}")
    if facts["prediction_type"] not in ("epsilon", "v"):
        raise ValueError(f"LoRA metadata: prediction_type must be 'epsilon' or 'v', got {facts['prediction_type']!r}")
    reso = facts["resolution"]
    width, height = (reso, reso) if isinstance(reso, int) else tuple(reso)
    meta = {f"ss_{k}": _text(v) for k, v in facts.items() if k not in ("resolution", "prediction_type")}
    meta["ss_resolution"] = f"({width}, {height})"
    meta["modelspec.title"] = str(facts["output_name"])
    meta["modelspec.resolution"] = f"{width}x{height}"
    meta["modelspec.prediction_type"] = facts["prediction_type"]
    finished = facts["training_finished_at"]
    if finished is not None:
        meta["modelspec.date"] = datetime.datetime.fromtimestamp(int(float(finished))).isoformat()
    return meta


def base_model_metadata(family: str) -> dict[str, str]:
    version, architecture, implementation = _BASE_MODEL[family]
    return {
        "ss_base_model_version": version,
        "ss_v2": "False",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": architecture,
        "modelspec.implementation": implementation,
    }


def model_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) as sd-scripts computes them: the sha256 of the
    tensor-data section of the file serialized with only the ss_* metadata, and the legacy
    8-hex hash of the 64 KiB at offset 1 MiB of that same serialization."""
    data = safetensors.torch.save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    header = int.from_bytes(data[:8], "little")
    model_hash = hashlib.sha256(data[8 + header:]).hexdigest()
    legacy_hash = hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    return model_hash, legacy_hash


def save_lora(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str], dtype: torch.dtype) -> dict[str, str]:
    """Write a kohya LoRA file atomically in dtype (floating tensors incl. alpha, as
    sd-scripts does); adds the sshs hashes to metadata. Returns the metadata written."""
    bad = [k for k, v in metadata.items() if not isinstance(v, str)]
    if bad:
        raise TypeError(f"LoRA metadata values must be strings: {bad[:5]}")
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in sorted(tensors.items())}
    metadata = dict(metadata)
    metadata["sshs_model_hash"], metadata["sshs_legacy_hash"] = model_hashes(tensors, metadata)
    write_atomic(path, safetensors.torch.save(tensors, metadata), "LoRA file")
    return metadata


def load_lora(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a kohya LoRA file, with errors that name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"LoRA file not found: {path}")
    try:
        tensors = safetensors.torch.load_file(path)
        with safetensors.safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:
        raise ValueError(f"{path} is not a readable .safetensors file: {e}") from e
    split_modules(tensors, path)
    return tensors, metadata


def split_modules(tensors: dict[str, torch.Tensor], source: str) -> dict[str, dict[str, torch.Tensor]]:
    """module name -> {"down", "up", "alpha"?}; rejects keys that are not plain kohya LoRA."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    foreign = []
    for key, value in tensors.items():
        suffix = next((s for s in _SUFFIXES if key.endswith(s)), None)
        if suffix is None or not key.startswith("lora_"):
            foreign.append(key)
            continue
        part = {".lora_down.weight": "down", ".lora_up.weight": "up", ".alpha": "alpha"}[suffix]
        modules.setdefault(key[: -len(suffix)], {})[part] = value
    if foreign:
        raise ValueError(f"{source}: not a kohya LoRA (lora_down/lora_up/alpha keys); other keys found: {foreign[:5]}")
    if not modules:
        raise ValueError(f"{source}: holds no LoRA weights")
    incomplete = [name for name, parts in modules.items() if "down" not in parts or "up" not in parts]
    if incomplete:
        raise ValueError(f"{source}: modules without both lora_down and lora_up weights: {incomplete[:5]}")
    return modules
