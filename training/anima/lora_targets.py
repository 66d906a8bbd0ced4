"""LoRA targets of an Anima model as sd-scripts' networks/lora_anima.py chooses them.

DiT: every Linear inside the transformer blocks (`blocks.N`: self/cross-attention q/k/v/output
projections, MLP layer1/layer2) minus sd-scripts' default exclusion
`.*(_modulation|_norm|_embedder|final_layer).*` (the adaLN modulation Linears); with
llm_adapter (sd-scripts' train_llm_adapter) also the Linears of the text adapter's blocks.
Qwen3 text encoder: the Linears of every attention and MLP block.

Names are sd-scripts': `lora_unet_` / `lora_te_` + the module path with dots as underscores
(`lora_unet_blocks_0_self_attn_q_proj`, `lora_te_layers_0_mlp_gate_proj`). The DiT's and
Qwen3's module paths in ComfyUI are the ones sd-scripts sees, so ComfyUI's LoraLoader maps
these names directly (no conversion script).
"""
import re

import torch

import comfy.text_encoders.llama

DEFAULT_EXCLUDE = re.compile(r".*(_modulation|_norm|_embedder|final_layer).*")


def _linears(root: torch.nn.Module, prefix: str) -> dict[str, torch.nn.Module]:
    return {f"{prefix}.{name}": m for name, m in root.named_modules() if isinstance(m, torch.nn.Linear)}


def dit_layers(diffusion_model: torch.nn.Module, llm_adapter: bool = False) -> dict[str, torch.nn.Module]:
    """Module path -> Linear for every LoRA target of the DiT."""
    found = {}
    for i, block in enumerate(diffusion_model.blocks):
        found.update(_linears(block, f"blocks.{i}"))
    if llm_adapter:
        for i, block in enumerate(diffusion_model.llm_adapter.blocks):
            found.update(_linears(block, f"llm_adapter.blocks.{i}"))
    return {p: m for p, m in found.items() if not DEFAULT_EXCLUDE.fullmatch(p)}


def qwen3_layers(text_encoder: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Path below the Qwen3 `model.` (layers.N.self_attn.q_proj ...) -> Linear, for an encoder
    given as ComfyUI's CLIP model, its qwen3_06b part or the transformer itself."""
    found = {}
    for name, block in text_encoder.named_modules():
        if isinstance(block, (comfy.text_encoders.llama.Attention, comfy.text_encoders.llama.MLP)):
            start = name.find("layers.")
            if start < 0:
                raise ValueError(f"Qwen3 block {name!r} is not under layers.N")
            found.update(_linears(block, name[start:]))
    if not found:
        raise ValueError(f"text encoder {type(text_encoder).__name__} has no Qwen3 attention/MLP layers")
    return found
