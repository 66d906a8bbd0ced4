"""The one reader/writer of kohya LoRA files (.safetensors).

Layout: `<module>.lora_down.weight`, `<module>.lora_up.weight`, `<module>.alpha` (0-d),
all in the save precision; metadata strings: every ss_* key sd-scripts' train_network.py
writes, sshs_model_hash / sshs_legacy_hash (the hashes sd-webui-additional-networks indexes
by), and the SAI modelspec 1.0.1 keys of sd-scripts' sai_model_spec.py. Files are written to
a temporary file beside the target and renamed over it, so a failed save leaves the previous
file as it was.
"""
import datetime
import functools
import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from ...files.atomic import write_atomic

SAVE_PRECISIONS = {"float": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SAI_MODEL_SPEC = "1.0.1"
_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]

# Facts written as ss_<name> = str(value) (dicts and lists as JSON), in sd-scripts' formats:
# Python's str() of the option's value, so an option that is off reads "None" where
# sd-scripts' default is None and "False" where it is a flag.
_PLAIN_FACTS = (
    # the run (training/engine.py) and its options
    "session_id", "training_started_at", "training_finished_at", "output_name", "sd_model_name",
    "learning_rate", "text_encoder_lr", "unet_lr", "optimizer", "lr_scheduler", "lr_warmup_steps",
    "max_grad_norm", "num_epochs", "max_train_steps", "steps", "epoch", "gradient_checkpointing",
    "gradient_accumulation_steps", "mixed_precision", "full_fp16", "fp8_base", "fp8_base_unet", "clip_skip", "max_token_length",
    "cache_latents", "seed", "noise_offset", "multires_noise_iterations", "multires_noise_discount",
    "adaptive_noise_scale", "zero_terminal_snr", "min_snr_gamma", "loss_type", "huber_schedule", "huber_c",
    "prior_loss_weight", "training_comment", "validate_every_n_steps",
    # the data (training/session.py data_facts)
    "num_train_images", "num_reg_images", "num_batches_per_epoch", "batch_size_per_device", "enable_bucket",
    "bucket_no_upscale", "min_bucket_reso", "max_bucket_reso", "color_aug", "flip_aug", "random_crop",
    "shuffle_caption", "keep_tokens", "caption_dropout_rate", "caption_dropout_every_n_epochs",
    "caption_tag_dropout_rate", "datasets", "tag_frequency", "dataset_dirs", "reg_dataset_dirs", "bucket_info",
)
# Every fact training_metadata needs (None where a value does not apply). Besides the plain ones:
# resolution ((width, height) or one int), prediction_type ("epsilon" | "v"), the modelspec
# options (metadata_*; timestep_range (min, max) or None), and the files the base model and a
# separate VAE were loaded from (None when unknown: the hash keys are then left out, as
# sd-scripts leaves them out when the path is no file).
TRAINING_FACTS = _PLAIN_FACTS + (
    "resolution", "prediction_type", "metadata_title", "metadata_author", "metadata_description",
    "metadata_license", "metadata_tags", "timestep_range", "sd_model_file", "vae_file",
)
# sd-scripts options this trainer does not have (a fact of that name wins): files carry the
# value sd-scripts writes when they are not given (ss_sd_scripts_commit_hash: no sd-scripts
# commit made the file; what did is modelspec.implementation_version).
_ABSENT_OPTIONS = {
    "lowram": False, "face_crop_aug_range": None, "scale_weight_norms": None, "ip_noise_gamma": None,
    "debiased_estimation": False, "noise_offset_random_strength": False, "ip_noise_gamma_random_strength": False,
    "huber_scale": 1.0, "num_validation_images": 0, "validation_seed": None,
    "validation_split": 0.0, "max_validation_steps": None, "validate_every_n_epochs": None,
    "resize_interpolation": None, "sd_scripts_commit_hash": "(unknown)",
}
_BASE_MODEL = {
    # ss_base_model_version as sd-scripts writes it; modelspec architecture / implementation
    # as sd-scripts' sai_model_spec.py sets them for LoRAs.
    "sdxl": ("sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora", "https://github.com/Stability-AI/generative-models"),
    "sd15": ("sd_v1", "stable-diffusion-v1/lora", "diffusers"),
    "sd2": ("sd_v2", "stable-diffusion-v2-512/lora", "diffusers"),  # Textual Inversion and full-model files
    "anima": ("anima", "anima-preview/lora", "https://huggingface.co/circlestone-labs/Anima"),
}


def _text(value) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


@functools.lru_cache(maxsize=1)
def implementation_version() -> str:
    """modelspec.implementation_version: this pack and its version (and git commit when it runs
    from a checkout), as sd-scripts writes "sd-scripts/<commit>"."""
    try:
        text = (_PACKAGE_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        text = ""
    found = {key: re.search(rf'^{key}\s*=\s*"([^"]+)"', text, re.M) for key in ("name", "version")}
    name, version = (m.group(1) if m else "unknown" for m in found.values())
    commit = ""
    if (_PACKAGE_ROOT / ".git").exists():
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_PACKAGE_ROOT, capture_output=True, text=True, timeout=5)
            commit = out.stdout.strip() if out.returncode == 0 else ""
        except (OSError, subprocess.SubprocessError):
            pass
    return f"{name}/{version}" + (f"+{commit}" if commit else "")


@functools.lru_cache(maxsize=8)
def _file_hashes(path: str, size: int, mtime_ns: int) -> tuple[str, str]:
    """(old, new) A1111 model hash of a file, as sd-scripts' train_util.model_hash and
    calculate_sha256: 8 hex of the sha256 of the 64 KiB at 1 MiB, and the sha256 of the whole
    file. Cached per file version: a checkpoint is hashed once per process, not per save."""
    legacy, full = hashlib.sha256(), hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(0x100000)
        legacy.update(f.read(0x10000))
        f.seek(0)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            full.update(chunk)
    return legacy.hexdigest()[:8], full.hexdigest()


def _source_file_metadata(kind: str, path: str | None) -> dict[str, str]:
    """ss_<kind>_hash, ss_new_<kind>_hash, ss_<kind>_name of a model file; nothing when the
    path is no file (sd-scripts then writes no hash)."""
    if not path or not os.path.isfile(path):
        return {}
    st = os.stat(path)
    old, new = _file_hashes(os.path.abspath(path), st.st_size, st.st_mtime_ns)
    return {f"ss_{kind}_hash": old, f"ss_new_{kind}_hash": new, f"ss_{kind}_name": os.path.basename(path)}


def _modelspec(facts: dict, width: int, height: int) -> dict[str, str]:
    """The modelspec keys sd-scripts' get_sai_model_spec writes that follow from the run
    (architecture and implementation come with the adapter)."""
    meta = {
        "modelspec.sai_model_spec": SAI_MODEL_SPEC,
        "modelspec.title": str(facts["metadata_title"] if facts["metadata_title"] is not None else facts["output_name"]),
        "modelspec.resolution": f"{width}x{height}",
        "modelspec.prediction_type": facts["prediction_type"],
        "modelspec.implementation_version": implementation_version(),
    }
    for key in ("author", "description", "license", "tags"):
        if facts[f"metadata_{key}"] is not None:
            meta[f"modelspec.{key}"] = str(facts[f"metadata_{key}"])
    finished = facts["training_finished_at"]
    if finished is not None:
        meta["modelspec.date"] = datetime.datetime.fromtimestamp(int(float(finished))).isoformat()
    if facts["timestep_range"] is not None:
        meta["modelspec.timestep_range"] = "{},{}".format(*facts["timestep_range"])
    if facts["clip_skip"] is not None:
        meta["modelspec.encoder_layer"] = str(facts["clip_skip"])
    return meta


def training_metadata(facts: dict) -> dict[str, str]:
    """Every ss_* string of sd-scripts' train_network.py but the network's own (the adapter
    adds ss_network_*, ss_v2, ss_base_model_version), and the run's modelspec keys.

    facts holds every key of TRAINING_FACTS (and may set an absent option's value); other
    keys are ignored."""
    missing = [k for k in TRAINING_FACTS if k not in facts]
    if missing:
        raise ValueError(f"LoRA metadata: training facts missing: {', '.join(missing)}")
    if facts["prediction_type"] not in ("epsilon", "v"):
        raise ValueError(f"LoRA metadata: prediction_type must be 'epsilon' or 'v', got {facts['prediction_type']!r}")
    reso = facts["resolution"]
    width, height = (reso, reso) if isinstance(reso, int) else tuple(reso)
    meta = {f"ss_{k}": _text(facts.get(k, v)) for k, v in _ABSENT_OPTIONS.items()}
    meta.update({f"ss_{k}": _text(facts[k]) for k in _PLAIN_FACTS})
    meta["ss_resolution"] = str((width, height))
    # sd-scripts: per-device batch x processes x accumulation
    meta["ss_total_batch_size"] = str(facts["batch_size_per_device"] * facts.get("num_processes", 1) * facts["gradient_accumulation_steps"])
    meta.update(_source_file_metadata("sd_model", facts["sd_model_file"]))
    meta.update(_source_file_metadata("vae", facts["vae_file"]))
    meta.update(_modelspec(facts, width, height))
    return meta


def base_model_metadata(family: str) -> dict[str, str]:
    version, architecture, implementation = _BASE_MODEL[family]
    return {
        "ss_base_model_version": version,
        "ss_v2": str(family == "sd2"),
        "modelspec.sai_model_spec": SAI_MODEL_SPEC,
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


def load_lora(path: str, kohya_only: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a kohya LoRA file, with errors that name the file. kohya_only=False:
    any keys (LyCORIS files, which training/lora/tools/lycoris.py reads)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"LoRA file not found: {path}")
    try:
        tensors = safetensors.torch.load_file(path)
        with safetensors.safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:
        raise ValueError(f"{path} is not a readable .safetensors file: {e}") from e
    if kohya_only:
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
