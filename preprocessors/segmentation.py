"""Semantic segmentation drawn in the ADE20K colours ControlNet's seg models were trained
on, through transformers' UperNetForSemanticSegmentation from a local save_pretrained
folder (openmmlab/upernet-convnext-small or any other UperNet ADE20K checkpoint in
models/preprocessors), or OneFormer's (oneformer.py). The picture is normalised as the folder's image processor says,
the class logits are upsampled bilinearly to the picture's size and the best class's
colour is painted - what transformers' post_process_semantic_segmentation and ControlNet's
colouring do together."""
import json
import os

import torch
import torch.nn as nn

from .depth import IMAGENET_MEAN, IMAGENET_STD, load_transformers_folder
from .image_ops import resize, to_rgb
from .models import load_cached, run_in_chunks
from .resolution import detect_size
from .weights import UPERNET_CONVNEXT_SMALL, WrongWeightLayout

ARCH = UPERNET_CONVNEXT_SMALL.architecture
MULTIPLE = 32          # the backbones downsample 32x
ADE20K_CLASSES = 150
_ROWS = 128            # output rows upsampled at a time: 150 logits per pixel add up fast

# ADE20K's 150 class colours in ControlNet's order (controlnet_aux.util.ade_palette,
# ControlNet 1.1's annotator): class i is painted ADE20K_PALETTE[i].
ADE20K_PALETTE = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
    (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
    (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
    (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
    (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
    (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
    (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
    (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
    (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
)


class TransformersSegmenter(nn.Module):
    """Wraps a *ForSemanticSegmentation model with its input normalisation: RGB 0..1 in,
    class logits (B, classes, h, w) out at the model's output resolution."""

    def __init__(self, net: nn.Module, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.net = net
        self.mean, self.std = tuple(mean), tuple(std)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
        return self.net(pixel_values=(rgb - mean) / std).logits


def normalisation(processor: dict) -> tuple[tuple, tuple]:
    """Mean/std on the 0..1 scale from image processor settings (some give them 0..255)."""
    if processor.get("do_normalize", True) is False:
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    mean, std = processor.get("image_mean", IMAGENET_MEAN), processor.get("image_std", IMAGENET_STD)
    if processor.get("do_rescale", True) is False and max(mean) > 1:  # applied to 0..255 pixels
        mean, std = [m / 255 for m in mean], [s / 255 for s in std]
    return tuple(mean), tuple(std)


def _model_type(path: str) -> str | None:
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            return json.load(f).get("model_type")
    except (OSError, ValueError):
        return None  # load_transformers_folder says what is wrong


def build_segmenter(path: str) -> TransformersSegmenter:
    """An UperNet or a OneFormer ADE20K folder, told apart by its config."""
    from transformers import UperNetForSemanticSegmentation

    if not os.path.isdir(path):
        raise WrongWeightLayout(f"{os.path.basename(path)} is a file; {ARCH} is read from a transformers folder "
                                f"(config.json + model.safetensors)")
    if _model_type(path) == "oneformer":
        from .oneformer import build_oneformer

        return build_oneformer(path)
    net, processor = load_transformers_folder(path, "upernet", UperNetForSemanticSegmentation, ARCH)
    if net.config.num_labels != ADE20K_CLASSES:
        raise WrongWeightLayout(f"{os.path.basename(path)} predicts {net.config.num_labels} classes; ControlNet's "
                                f"seg colours are those of ADE20K's {ADE20K_CLASSES} ({ARCH})")
    return TransformersSegmenter(net, *normalisation(processor))


def load_segmenter(path: str):
    return load_cached(path, build_segmenter)


def _bilinear_matrix(out_size: int, in_size: int, device) -> torch.Tensor:
    """(out, in) weights of F.interpolate's bilinear resize along one axis (align_corners=False)."""
    src = ((torch.arange(out_size, device=device, dtype=torch.float64) + 0.5) * (in_size / out_size) - 0.5).clamp(min=0)
    lo = src.floor().long().clamp(max=in_size - 1)
    hi = (lo + 1).clamp(max=in_size - 1)
    frac = (src - lo).float()
    m = torch.zeros(out_size, in_size, device=device)
    m.scatter_add_(1, lo.unsqueeze(1), (1 - frac).unsqueeze(1))
    m.scatter_add_(1, hi.unsqueeze(1), frac.unsqueeze(1))
    return m


def upsampled_labels(logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """argmax over classes of the logits bilinearly upsampled to (height, width), a band of
    rows at a time so a large picture never holds all its upsampled logits at once.
    (B, K, h, w) -> (B, height, width) class indices."""
    rows = _bilinear_matrix(height, logits.shape[-2], logits.device)
    cols = _bilinear_matrix(width, logits.shape[-1], logits.device)
    across = torch.matmul(logits.float(), cols.T)                     # (B, K, h, width)
    return torch.cat([torch.einsum("yh,bkhw->bkyw", rows[r:r + _ROWS], across).argmax(1)
                      for r in range(0, height, _ROWS)], dim=1)


def colourise(labels: torch.Tensor) -> torch.Tensor:
    """(B, H, W) ADE20K class indices -> (B, 3, H, W) palette colours in 0..1."""
    palette = torch.tensor(ADE20K_PALETTE, dtype=torch.float32, device=labels.device) / 255.0
    return palette[labels].permute(0, 3, 1, 2)


def segment(patcher, images: torch.Tensor, detect_resolution: int = 512) -> torch.Tensor:
    """(B, C, H, W) 0..1 -> (B, 3, H, W) ADE20K colour map at the images' own size."""
    def detect(net, chunk):
        height, width = chunk.shape[-2:]
        h, w = detect_size(height, width, detect_resolution, MULTIPLE)
        return colourise(upsampled_labels(net(resize(to_rgb(chunk), h, w)), height, width))

    return run_in_chunks(patcher, images, detect)
