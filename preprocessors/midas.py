"""MiDaS depth, from either form users have:
- the original .pt (dpt_hybrid-midas-501f0c75.pt, ControlNet's depth annotator, or
  dpt_large-midas-2f21e586.pt), run by our DPT (midas_dpt.py) at the detect resolution,
  as ControlNet's annotator runs it;
- a transformers folder (Intel/dpt-hybrid-midas: config.json + weights) read with
  local_files_only: DPTForDepthEstimation's parts, run at the detect resolution too (its own
  forward refuses any size but 384x384 for DPT-Hybrid; the parts take any multiple of 32,
  with the position embeddings resized as MiDaS does).
The depth map comes back at the picture's own size."""
import os

import torch
import torch.nn as nn

from .depth import TransformersDepth, load_transformers_folder, normalise_per_image
from .image_ops import resize, to_rgb
from .midas_dpt import MULTIPLE, UNUSED_PREFIXES, MidasDPT
from .models import load_cached, run_in_chunks
from .resolution import detect_size
from .weights import MIDAS_DPT_HYBRID, MIDAS_DPT_HYBRID_ORIGINAL, load_exact, read_state_dict, require_keys

ARCH = MIDAS_DPT_HYBRID.architecture
ORIGINAL_ARCH = MIDAS_DPT_HYBRID_ORIGINAL.architecture
DEFAULT_RESOLUTION = 512  # ControlNet's annotator default


class OriginalMidas(nn.Module):
    """RGB 0..1 in, inverse depth out, any size that is a multiple of 32."""

    def __init__(self, net: MidasDPT):
        super().__init__()
        self.net = net

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.net(rgb * 2.0 - 1.0)  # MiDaS v3 normalises with mean = std = 0.5


def build_original_midas(path: str) -> OriginalMidas:
    sd = {k: v for k, v in read_state_dict(path, ORIGINAL_ARCH).items() if not k.startswith(UNUSED_PREFIXES)}
    require_keys(sd, ["pretrained.model.cls_token", "pretrained.model.patch_embed.proj.weight",
                      "scratch.output_conv.4.weight"], ORIGINAL_ARCH, path)
    hybrid = "pretrained.model.patch_embed.backbone.stem.conv.weight" in sd
    depth = sum(1 for k in sd if k.startswith("pretrained.model.blocks.") and k.endswith(".norm1.weight"))
    with torch.device("meta"):  # the file's tensors replace the parameters: nothing to initialise
        net = MidasDPT(hybrid, sd["pretrained.model.cls_token"].shape[-1], depth, sd["scratch.layer1_rn.weight"].shape[0])
    return OriginalMidas(load_exact(net, sd, ORIGINAL_ARCH, path, assign=True))


class TransformersMidas(TransformersDepth):
    """DPTForDepthEstimation's embeddings, ViT layers, neck and head called in order, so the
    token grid may be any size: RGB 0..1 in, inverse depth out."""

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
        dpt, config = self.net.dpt, self.net.config
        x = (rgb - mean) / std
        # outputs are indexed, not named: transformers 4 returns tuples where 5 returns ModelOutputs
        if config.is_hybrid:  # ResNet maps feed the two finest levels; ViT layers the others
            embedded = dpt.embeddings(x, interpolate_pos_encoding=True)
            maps, taps = list(embedded[1]), config.backbone_out_indices[2:]
        else:
            embedded, maps, taps = dpt.embeddings(x), [], config.backbone_out_indices
        tokens = embedded[0]
        for i, layer in enumerate(dpt.encoder.layer[: max(taps) + 1]):
            tokens = layer(tokens)
            tokens = tokens[0] if isinstance(tokens, tuple) else tokens
            if i in taps:
                maps.append(tokens)
        patch = config.patch_size
        return self.net.head(self.net.neck(maps, x.shape[-2] // patch, x.shape[-1] // patch)).unsqueeze(1)


def build_transformers_midas(path: str) -> TransformersMidas:
    from transformers import DPTForDepthEstimation

    net, processor = load_transformers_folder(path, "dpt", DPTForDepthEstimation, ARCH)
    return TransformersMidas(net, processor.get("image_mean", (0.5, 0.5, 0.5)), processor.get("image_std", (0.5, 0.5, 0.5)))


def build_midas(path: str) -> nn.Module:
    return build_transformers_midas(path) if os.path.isdir(path) else build_original_midas(path)


def load_midas(path: str):
    return load_cached(path, build_midas)


def midas_depth(patcher, images: torch.Tensor, detect_resolution: int = DEFAULT_RESOLUTION) -> torch.Tensor:
    """(B, C, H, W) 0..1 -> (B, 1, H, W) relative depth guide (near = 1) at the images' size,
    detected with its short side at detect_resolution."""
    def detect(net, chunk):
        height, width = chunk.shape[-2:]
        disparity = net(resize(to_rgb(chunk), *detect_size(height, width, detect_resolution, MULTIPLE)))
        return resize(normalise_per_image(disparity), height, width)

    return run_in_chunks(patcher, images, detect)
