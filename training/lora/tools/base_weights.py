"""The base weights a DoRA module's difference depends on (lycoris.difference), read from a
ComfyUI MODEL and CLIP: kohya module name -> the layer's weight as core's LoraLoader sees it
when it applies a LoRA to that MODEL/CLIP, i.e. with the patches already on it (LoRAs applied
before). Names are mapped to layers by core's own LoRA key maps, so every name core's loader
patches is found. Read on demand: only DoRA modules ask, and the models are loaded (patches
applied, as Extract LoRA reads them) at the first ask only.
"""
from collections.abc import Iterator, Mapping

import torch


class ModelWeights(Mapping):
    """kohya module name -> float32 CPU copy of the layer's weight; model and clip may be None
    (then their modules are missing: a DoRA module on them is refused by lycoris.read_modules)."""

    def __init__(self, model=None, clip=None):
        import comfy.lora

        self._patchers = []
        self._keys: dict[str, tuple[object, str]] = {}
        if clip is not None:
            self._add(clip.patcher, comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {}))
        if model is not None:
            self._add(model, comfy.lora.model_lora_keys_unet(model.model, {}))
        self._loaded = False

    def _add(self, patcher, key_map: dict) -> None:
        self._patchers.append(patcher)
        # a few core names map to slices of fused layers (tuples); LoRA/LyCORIS names never do
        self._keys.update({name: (patcher, key) for name, key in key_map.items() if isinstance(key, str)})

    def __getitem__(self, name: str) -> torch.Tensor:
        import comfy.model_management
        import comfy.utils

        patcher, key = self._keys[name]
        if not self._loaded:
            # this MODEL/CLIP's own patches on the shared weights (another clone may hold them)
            comfy.model_management.load_models_gpu(self._patchers, force_full_load=True)
            self._loaded = True
        return comfy.utils.get_attr(patcher.model, key).detach().to("cpu", torch.float32, copy=True)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __bool__(self) -> bool:
        return bool(self._patchers)
