"""Learned preprocessors stay loaded between runs, under ComfyUI's memory management.

Each network is built once per weight file (keyed by path and the file's mtime/size, so a
replaced file is reloaded) and wrapped in a ModelPatcher: ComfyUI moves it to the GPU on
use and offloads it when something else needs the memory. Batches run in chunks on the
load device with a progress bar; the callers' maps come back on the intermediate device.
"""
import atexit
from typing import Callable

import torch

from .weights import file_version

# Images per forward pass: large enough to keep the device busy, small enough that a
# batch of 1024x1024 frames does not need all of its activations at once.
CHUNK = 4
# On the CPU a chunk holds at most this many pixels: several large pictures in one pass are
# slower per picture than one at a time (their activations outgrow the caches), while small
# ones still go together so each layer's fixed cost is shared (measured with
# bench/bench_preprocessors.py against controlnet_aux).
CPU_CHUNK_PIXELS = 256 * 256

_loaded: dict[tuple[str, str], tuple[tuple, object]] = {}
# Release the patchers while ComfyUI's modules still exist: ModelPatcher.__del__ fails
# noisily when it runs during interpreter teardown.
atexit.register(_loaded.clear)


def load_cached(path: str, build: Callable[[str], torch.nn.Module], variant: str = ""):
    """ModelPatcher around build(path), reused while the file is unchanged; `variant` keeps
    apart networks built differently from the same file."""
    import comfy.model_management as mm
    import comfy.model_patcher

    version = file_version(path)
    hit = _loaded.get((path, variant))
    if hit is not None and hit[0] == version:
        return hit[1]
    module = build(path).float().eval().requires_grad_(False)
    patcher = comfy.model_patcher.ModelPatcher(module, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    _loaded[(path, variant)] = (version, patcher)
    return patcher


def run_in_chunks(patcher, images: torch.Tensor, fn: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """fn(network, chunk) over the batch on the model's device; one progress step per image."""
    import comfy.model_management as mm
    import comfy.utils

    mm.load_model_gpu(patcher)
    device = patcher.load_device
    size = chunk_size(images, device)
    bar = comfy.utils.ProgressBar(images.shape[0])
    out = []
    with torch.no_grad():
        for i, chunk in enumerate(images.split(size)):
            mm.throw_exception_if_processing_interrupted()
            out.append(fn(patcher.model, on_device(chunk, device)).to(mm.intermediate_device()))
            bar.update_absolute(min((i + 1) * size, images.shape[0]))
    return torch.cat(out)


def chunk_size(images: torch.Tensor, device: torch.device) -> int:
    """Images per pass: CHUNK, fewer on the CPU when they are large (CPU_CHUNK_PIXELS)."""
    if device.type != "cpu":
        return CHUNK
    return max(1, min(CHUNK, CPU_CHUNK_PIXELS // (images.shape[-2] * images.shape[-1])))


def on_device(chunk: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The chunk on the device; on the CPU also in plain (N, C, H, W) order. ComfyUI's IMAGE
    moved to channels-first is channels-last in memory, and the networks would run in that
    layout, where their CPU convolutions, concatenations and reshapes are slower."""
    chunk = chunk.to(device)
    return chunk.contiguous() if device.type == "cpu" else chunk
