"""Which layers get a LoRA module, and their kohya names.

The same layers as sd-scripts' networks/lora.py: in the U-Net every Linear and Conv2d
inside a transformer block (SpatialTransformer here, Transformer2DModel in diffusers), and
with C3Lier also inside res blocks, downsamplers and upsamplers; in each CLIP text encoder
every Linear of the attention and MLP blocks.

Names: SDXL files keep the ldm layout ComfyUI uses (`lora_unet_input_blocks_4_1_...`),
SD1.x files use the diffusers layout (`lora_unet_down_blocks_1_attentions_0_...`), mapped
with ComfyUI's own comfy.utils.unet_to_diffusers so that its loader maps them back to the
same weights. Text encoders: `lora_te1_`/`lora_te2_` (CLIP-L / CLIP-G) on SDXL, `lora_te_`
on SD1.x, followed by the Hugging Face CLIP path `text_model_encoder_layers_0_self_attn_q_proj`.
"""
from dataclasses import dataclass

import torch

import comfy.clip_model
import comfy.utils
from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, ResBlock, Upsample

from ...model_family import model_family
from ..anima.lora_targets import dit_layers, qwen3_layers

TEXT_ENCODER_ROLES = {"sdxl": ("te1", "te2"), "sd15": ("te",), "anima": ("te",)}
_TE_PREFIX = {"te1": "lora_te1_", "te2": "lora_te2_", "te": "lora_te_"}


@dataclass(frozen=True)
class Target:
    name: str  # kohya module name, e.g. lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q
    module: torch.nn.Module  # the Linear or Conv2d that gets the LoRA
    part: str  # "unet", "te1", "te2" or "te"

    @property
    def is_conv3x3(self) -> bool:
        """Only C3Lier trains these; everything else is LierLa (Linear and 1x1 conv)."""
        return isinstance(self.module, torch.nn.Conv2d) and self.module.kernel_size != (1, 1)


def lora_family(model_config) -> str:
    """"sdxl", "sd15" or "anima": the model's family (model_family.py) when LoRA has key names for it."""
    family = model_family(model_config)
    if family not in TEXT_ENCODER_ROLES:
        raise ValueError(f"LoRA training supports SD1.5, SDXL and Anima base models; this model is {type(model_config).__name__}")
    return family


def _layers(root: torch.nn.Module, block_types: tuple) -> dict[str, torch.nn.Module]:
    """path -> Linear/Conv2d for every such layer inside a block of the given types."""
    found = {}
    for name, block in root.named_modules():
        if isinstance(block, block_types):
            for child_name, child in block.named_modules():
                if isinstance(child, (torch.nn.Linear, torch.nn.Conv2d)):
                    found[f"{name}.{child_name}"] = child
    return found


def unet_targets(diffusion_model: torch.nn.Module, family: str, unet_config: dict, with_conv_blocks: bool) -> list[Target]:
    """LoRA targets of a ComfyUI UNetModel. with_conv_blocks adds res blocks and
    down/upsamplers (their 3x3 convs, and their Linear / 1x1 layers, as sd-scripts does)."""
    if family == "anima":  # sd-scripts' lora_anima.py choice (training/anima/lora_targets.py)
        return [Target("lora_unet_" + p.replace(".", "_"), m, "unet") for p, m in dit_layers(diffusion_model).items()]
    block_types = (SpatialTransformer, ResBlock, Downsample, Upsample) if with_conv_blocks else (SpatialTransformer,)
    layers = _layers(diffusion_model, block_types)
    if family == "sd15":
        to_diffusers = {ldm: diff for diff, ldm in comfy.utils.unet_to_diffusers(unet_config).items()}
        missing = [p for p in layers if f"{p}.weight" not in to_diffusers]
        if missing:
            raise ValueError(f"U-Net layers without a diffusers name (is this an SD1.x U-Net?): {missing[:5]}")
        names = {p: to_diffusers[f"{p}.weight"].removesuffix(".weight") for p in layers}
    else:
        names = {p: p for p in layers}
    return [Target("lora_unet_" + names[p].replace(".", "_"), m, "unet") for p, m in layers.items()]


def text_encoder_targets(text_encoders: dict[str, torch.nn.Module], family: str) -> list[Target]:
    """LoRA targets of ComfyUI CLIP text encoders, keyed "te1"/"te2" (SDXL) or "te" (SD1.x).
    Each value is one encoder (SDClipModel or its .transformer)."""
    roles = TEXT_ENCODER_ROLES[family]
    if sorted(text_encoders) != sorted(roles):
        raise ValueError(f"{family} text encoders must be given as {list(roles)}, got {sorted(text_encoders)}")
    if family == "anima":
        return [Target("lora_te_" + p.replace(".", "_"), m, "te") for p, m in qwen3_layers(text_encoders["te"]).items()]
    targets = []
    for role in roles:
        layers = _layers(text_encoders[role], (comfy.clip_model.CLIPAttention, comfy.clip_model.CLIPMLP))
        if not layers:
            raise ValueError(f"text encoder {role!r} ({type(text_encoders[role]).__name__}) has no CLIP attention/MLP layers")
        for path, module in layers.items():
            start = path.find("text_model.")
            if start < 0:
                raise ValueError(f"text encoder {role!r}: layer {path!r} is not under text_model (one CLIP encoder expected per role)")
            targets.append(Target(_TE_PREFIX[role] + path[start:].replace(".", "_"), module, role))
    return targets
