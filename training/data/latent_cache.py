"""Latent cache in memory (shared by every loader in the process, so a second run of a
workflow reuses the first run's latents) and optionally on disk (one safetensors file per
entry, written atomically, reused across processes).

An entry's key covers everything that decides the latents: the image's content hash, the
VAE's identity (`vae_id`, supplied by the engine), the bucket, resize and crop, and the flip.
"""
import hashlib
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ...files.atomic import write_atomic
from .buckets import Placement

# Bump when the pixel preparation (resize filter, crop rule) changes: old entries then miss.
CACHE_FORMAT = "lllite-kit-latents-1"
MEMORY_BUDGET_BYTES = 4 << 30

_memory: "OrderedDict[str, torch.Tensor]" = OrderedDict()
_memory_bytes = 0


def latent_key(content_hash: str, vae_id: str, placement: Placement, flip: bool) -> str:
    parts = (CACHE_FORMAT, content_hash, vae_id, placement.bucket, placement.resized, placement.crop, flip)
    return hashlib.sha256(repr(parts).encode()).hexdigest()


class LatentCache:
    """get/put latents (C, h, w) by key. directory=None keeps them in memory only."""

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory) if directory is not None else None

    def get(self, key: str) -> torch.Tensor | None:
        if key in _memory:
            _memory.move_to_end(key)
            return _memory[key]
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            latents = load_file(str(path))["latents"]
        except (SafetensorError, OSError, KeyError):
            return None  # unreadable entry: treated as a miss and rewritten by put()
        _remember(key, latents)
        return latents

    def put(self, key: str, latents: torch.Tensor, vae_id: str = "") -> None:
        latents = latents.detach().to("cpu").contiguous()
        _remember(key, latents)
        path = self._path(key)
        if path is None:
            return
        write_atomic(path, save({"latents": latents}, metadata={"format": CACHE_FORMAT, "vae_id": vae_id}), "latent cache entry")

    def _path(self, key: str) -> Path | None:
        return self.directory / f"{key}.safetensors" if self.directory is not None else None


def _remember(key: str, latents: torch.Tensor) -> None:
    global _memory_bytes
    if key in _memory:
        return
    _memory[key] = latents
    _memory_bytes += latents.numel() * latents.element_size()
    while _memory_bytes > MEMORY_BUDGET_BYTES and len(_memory) > 1:
        _, old = _memory.popitem(last=False)
        _memory_bytes -= old.numel() * old.element_size()


def clear_memory() -> None:
    """Forget the in-memory entries (disk entries stay)."""
    global _memory_bytes
    _memory.clear()
    _memory_bytes = 0
