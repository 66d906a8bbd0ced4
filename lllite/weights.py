"""The one reader and writer of kohya-format LLLite safetensors files.

Keys are `lllite_unet_<module path>.<conditioning1|down|mid|up>.<i>.<weight|bias>`; nothing
but the shapes tells cond_emb_dim (E), network_dim (R) and each module's conditioning depth.
"""
import datetime
import os
import time
from collections import defaultdict

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..files.atomic import write_atomic

from .module import LLLiteModule, LLLiteNetwork, unet_path

# What a file that is not an LLLite looks like, told by its keys: (test, description, what to use instead).
_LOOKS_LIKE = (
    (lambda k: k.startswith(("lora_unet_", "lora_te")) or ".lora_up." in k or ".lora_down." in k
     or ".lora_A." in k or ".lora_B." in k,
     "a LoRA", "a LoRA loader such as LoraLoaderModelOnly"),
    (lambda k: any(s in k for s in ("input_hint_block", "controlnet_cond_embedding", "zero_convs", "controlnet_down_blocks")),
     "a full ControlNet", "Load ControlNet Model with Apply ControlNet"),
    (lambda k: k.startswith(("model.diffusion_model.", "first_stage_model.", "conditioner.", "cond_stage_model.")),
     "a Stable Diffusion checkpoint", "Load Checkpoint"),
    (lambda k: k.startswith(("input_blocks.", "middle_block.", "down_blocks.", "mid_block.")),
     "a U-Net (diffusion model) file", "Load Diffusion Model"),
    (lambda k: k.startswith(("adapter.", "body.", "conv_in.")),
     "a T2I-Adapter", "Load ControlNet Model with Apply ControlNet"),
)


def describe_non_lllite(keys: list[str]) -> str:
    """'it looks like a LoRA (keys like ...); use ...' for a file without LLLite keys."""
    for test, what, use in _LOOKS_LIKE:
        hits = [k for k in keys if test(k)]
        if hits:
            return f"it looks like {what} (keys like '{hits[0]}'); load it with {use}"
    sample = ", ".join(f"'{k}'" for k in sorted(keys)[:3]) or "no tensors at all"
    return f"it has no LLLite keys (keys like {sample})"


def _module_depth(tensors: dict) -> int:
    if "conditioning1.4.weight" in tensors:
        return 3
    conv = tensors.get("conditioning1.2.weight")
    return 2 if conv is not None and conv.shape[-1] == 4 else 1


def _build_module(name: str, tensors: dict, file_label: str) -> LLLiteModule:
    try:
        e = tensors["conditioning1.0.weight"].shape[0] * 2
        r, c = tensors["down.0.weight"].shape
    except KeyError as err:
        raise ValueError(f"{file_label}: LLLite module {name} is incomplete or inconsistent: missing {err.args[0]}") from None
    with torch.device("meta"):
        module = LLLiteModule(c, e, r, _module_depth(tensors))
    expected = module.state_dict()
    problems = [f"missing {k}" for k in expected if k not in tensors]
    problems += [f"unexpected {k}" for k in tensors if k not in expected]
    problems += [f"{k} is {tuple(tensors[k].shape)}, expected {tuple(v.shape)}"
                 for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    if problems:
        raise ValueError(f"{file_label}: LLLite module {name} is incomplete or inconsistent: {'; '.join(problems)}")
    module.load_state_dict(tensors, strict=True, assign=True)
    return module


def read_lllite(path: str, name: str | None = None) -> LLLiteNetwork:
    """Load a kohya-format LLLite file (an Anima v2 file gives an AnimaLLLiteNetwork); raises
    ValueError saying what the file is otherwise."""
    label = name or os.path.basename(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"LLLite file not found: {path}")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            keys = list(f.keys())
            tensors = {k: f.get_tensor(k) for k in keys if k.startswith("lllite_unet_")}
    except Exception as err:  # safetensors raises its own error types for every kind of damage
        size = os.path.getsize(path)
        raise ValueError(
            f"{label} ({size} bytes) is not a readable safetensors file: it looks truncated or corrupt "
            f"(or is a pickled .ckpt/.pt): {err}"
        ) from None
    if not tensors and any(k.startswith("lllite_conditioning1.") for k in keys):
        from .anima.weights import read_anima_lllite  # here: anima/weights.py imports this module

        return read_anima_lllite(path, label)
    if not tensors:
        raise ValueError(f"{label} is not a ControlNet-LLLite file: {describe_non_lllite(keys)}.")
    others = [k for k in keys if not k.startswith("lllite_unet_")]
    grouped = defaultdict(dict)
    for key, tensor in tensors.items():
        module_name, _, param = key.partition(".")
        if unet_path(module_name) is None or not param:
            others.append(key)
        grouped[module_name][param] = tensor
    if others:
        raise ValueError(f"{label}: keys that are not kohya LLLite module parameters: {sorted(others)[:5]}")
    modules = {unet_path(n): _build_module(n, t, label) for n, t in grouped.items()}
    return LLLiteNetwork(modules, label)


def modelspec(architecture: str, title: str) -> dict[str, str]:
    """The SAI model-spec 1.0.1 keys of an LLLite file that follow from its layout, as
    sd-scripts' LLLite trainer writes them (sai_model_spec.py): Stability's implementation id
    for an SDXL adapter, "diffusers" otherwise; the family's default resolution and the time
    of writing, which a training run replaces with its own (with its other modelspec keys)."""
    sdxl = architecture.startswith("stable-diffusion-xl")
    return {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": architecture,
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models" if sdxl else "diffusers",
        "modelspec.title": title,
        "modelspec.resolution": "1024x1024" if sdxl else "512x512",
        "modelspec.date": datetime.datetime.fromtimestamp(int(time.time())).isoformat(),
    }


def save_lllite(path: str, network: LLLiteNetwork, architecture: str | None = None,
                dtype: torch.dtype | None = None, metadata: dict | None = None) -> None:
    """Write `network` in kohya's format, atomically; metadata (strings) over modelspec()'s.
    The model-spec architecture follows the network's layout (SDXL or SD1.5) unless given."""
    if architecture is None:
        layout = network.layout()
        if layout is None:
            raise ValueError(f"{network.name}: custom module layout, pass the model-spec architecture to save it")
        architecture = layout.architecture
    meta = {**modelspec(architecture, os.path.splitext(os.path.basename(path))[0]), **(metadata or {})}
    state = {k: (v.to(dtype) if dtype is not None else v).detach().cpu().contiguous() for k, v in network.state_dict().items()}
    write_atomic(path, lambda tmp: save_file(state, str(tmp), metadata=meta), "ControlNet-LLLite file")
